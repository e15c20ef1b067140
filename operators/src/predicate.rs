//! A small predicate language over per-key traits, a watermark day and quantiles.
//!
//! A rule is one boolean expression, for example
//!
//! ```text
//! purchases >= 1 and days_since_last_seen <= 7
//! purchases >= 1 and revenue >= quantile(revenue, 0.9 among purchases >= 1)
//! distinct_products > 500 or views / sessions > 300
//! ```
//!
//! # Grammar
//!
//! ```text
//! rule       := or
//! or         := and ( "or" and )*
//! and        := not ( "and" not )*
//! not        := "not" not | comparison
//! comparison := sum ( ( "<" | "<=" | ">" | ">=" | "==" | "!=" ) sum )?
//! sum        := product ( ( "+" | "-" ) product )*
//! product    := unary ( ( "*" | "/" ) unary )*
//! unary      := "-" unary | primary
//! primary    := NUMBER | TRAIT | "true" | "false" | "(" or ")"
//!             | "quantile" "(" sum "," NUMBER ( "among" or )? ")"
//! NUMBER     := digits ( "." digits )?          e.g. 3, 0.9, 49.99
//! TRAIT      := a trait of the schema, or days_since_<time trait>
//! ```
//!
//! Keywords and trait names are case-sensitive; whitespace is free. Expressions are typed:
//! comparisons take numbers and give booleans, `and`/`or`/`not` take booleans, arithmetic
//! takes numbers, and a rule must be a boolean. Comparisons do not chain (`1 < a < 3` is an
//! error; write `1 < a and a < 3`).
//!
//! # Values
//!
//! Every number is an exact rational: no floating point anywhere, so a rule gives the same
//! answer on every machine and in the batch oracle. A `Count` trait is an integer, a
//! `Money` trait is its cents / 100 (so `revenue >= 49.99` compares exactly in cents).
//! A `Time` trait (milliseconds) cannot be used directly; `days_since_<name>` is the number
//! of whole UTC days from the trait's day to the watermark's day
//! (`watermark_day - day(value)`, 0 on the watermark's own day).
//! `x / 0` is 0 (as ratios are in the output contract). An expression whose arithmetic
//! overflows 128 bits has no value, and a comparison with a side without a value is false.
//!
//! # Quantiles
//!
//! `quantile(x, p)` is the nearest-rank `p`-quantile of `x` over all keys, and
//! `quantile(x, p among c)` over the keys satisfying `c`: with the `N` values sorted
//! ascending, the value of rank `max(1, ceil(p * N))`. Ties are included: `x >= quantile(x,
//! 0.9)` admits every key whose value equals the threshold. With 10 keys, nearest-rank
//! P90 is the 9th smallest value, so `>=` admits at least 2 of them. Over an empty
//! population a quantile has no value (comparisons with it are false). `p` must be a
//! number literal in `[0, 1]`; `x` and `c` may use traits and arithmetic but neither the
//! watermark (`days_since_*`) nor another quantile.
//!
//! # Errors
//!
//! [`RuleError`] names the rule, the 1-based column and the token where the problem was
//! found, and why: `rule `high_value`, column 12 at `revnue`: unknown trait `revnue`;
//! known: ...`.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Milliseconds in one UTC day.
const MS_PER_DAY: i64 = 86_400_000;

/// An exact rational number with a 128-bit numerator and a positive denominator, in lowest
/// terms (so equal numbers are equal values and `Hash`/`Eq` agree with `Ord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    // on magnitudes; callers guarantee no i128::MIN
    a = a.abs();
    b = b.abs();
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl Rational {
    /// Zero.
    pub const ZERO: Rational = Rational { num: 0, den: 1 };

    /// `num / den` in lowest terms; `None` when `den` is 0 or a part is `i128::MIN`.
    pub fn new(num: i128, den: i128) -> Option<Rational> {
        if den == 0 || num == i128::MIN || den == i128::MIN {
            return None;
        }
        let (num, den) = if den < 0 { (-num, -den) } else { (num, den) };
        let g = gcd(num, den).max(1);
        Some(Rational {
            num: num / g,
            den: den / g,
        })
    }

    /// The integer `n`.
    pub fn integer(n: i64) -> Rational {
        Rational {
            num: i128::from(n),
            den: 1,
        }
    }

    /// `cents / 100`.
    pub fn from_cents(cents: i64) -> Rational {
        Rational::new(i128::from(cents), 100).unwrap_or(Rational::ZERO)
    }

    /// Numerator (lowest terms, carries the sign).
    pub fn numer(self) -> i128 {
        self.num
    }

    /// Denominator (lowest terms, positive).
    pub fn denom(self) -> i128 {
        self.den
    }

    fn checked_add(self, o: Rational) -> Option<Rational> {
        let num = self
            .num
            .checked_mul(o.den)?
            .checked_add(o.num.checked_mul(self.den)?)?;
        Rational::new(num, self.den.checked_mul(o.den)?)
    }

    fn checked_neg(self) -> Option<Rational> {
        Some(Rational {
            num: self.num.checked_neg()?,
            den: self.den,
        })
    }

    fn checked_mul(self, o: Rational) -> Option<Rational> {
        Rational::new(self.num.checked_mul(o.num)?, self.den.checked_mul(o.den)?)
    }

    /// `self / o`, 0 when `o` is 0.
    fn checked_div(self, o: Rational) -> Option<Rational> {
        if o.num == 0 {
            return Some(Rational::ZERO);
        }
        Rational::new(self.num.checked_mul(o.den)?, self.den.checked_mul(o.num)?)
    }
}

/// Compares `an/ad` with `bn/bd` (denominators positive) without overflow: directly when
/// the cross products fit, else by continued fractions.
fn cmp_fractions(an: i128, ad: i128, bn: i128, bd: i128) -> Ordering {
    if let (Some(l), Some(r)) = (an.checked_mul(bd), bn.checked_mul(ad)) {
        return l.cmp(&r);
    }
    let (aq, ar) = (an.div_euclid(ad), an.rem_euclid(ad));
    let (bq, br) = (bn.div_euclid(bd), bn.rem_euclid(bd));
    if aq != bq {
        return aq.cmp(&bq);
    }
    match (ar == 0, br == 0) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        // ar/ad vs br/bd, both in (0, 1): compare the inverses, reversed.
        (false, false) => cmp_fractions(bd, br, ad, ar),
    }
}

impl Ord for Rational {
    fn cmp(&self, other: &Self) -> Ordering {
        cmp_fractions(self.num, self.den, other.num, other.den)
    }
}

impl PartialOrd for Rational {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            write!(f, "{}", self.num)
        } else {
            write!(f, "{}/{}", self.num, self.den)
        }
    }
}

/// What a trait's `i64` value means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraitKind {
    /// An integer count.
    Count,
    /// Money in integer cents; rules see it in currency units (cents / 100).
    Money,
    /// An instant in UTC milliseconds; rules see it only as `days_since_<name>`.
    Time,
}

/// The traits a rule may name, in the order of [`TraitValues::trait_value`]'s indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schema {
    traits: Vec<(String, TraitKind)>,
}

impl Schema {
    /// A schema of `(name, kind)` traits; trait `i` is `TraitValues::trait_value(i)`.
    pub fn new(traits: &[(&str, TraitKind)]) -> Schema {
        Schema {
            traits: traits.iter().map(|(n, k)| ((*n).to_owned(), *k)).collect(),
        }
    }

    fn lookup(&self, name: &str) -> Option<(usize, TraitKind)> {
        self.traits
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| (i, self.traits[i].1))
    }

    /// Every name a rule may use: numeric traits and `days_since_<time trait>`.
    pub fn vocabulary(&self) -> Vec<String> {
        self.traits
            .iter()
            .map(|(n, k)| match k {
                TraitKind::Time => format!("days_since_{n}"),
                _ => n.clone(),
            })
            .collect()
    }
}

/// Read access to one key's traits, by schema index.
pub trait TraitValues {
    /// The value of trait `index` (see [`TraitKind`] for units).
    fn trait_value(&self, index: usize) -> i64;
}

/// The values shared by all keys when rules are evaluated.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Globals {
    /// The watermark's UTC day (days since 1970-01-01), if any event was seen.
    pub watermark_day: Option<i64>,
    /// Per quantile (by [`Quantile`] index), its current value; `None` over an empty
    /// population.
    pub thresholds: Vec<Option<Rational>>,
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl CmpOp {
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
        }
    }
}

/// A typed numeric expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// A number literal.
    Const(Rational),
    /// A `Count` or `Money` trait, by schema index.
    Trait(usize, TraitKind),
    /// `days_since_<time trait>`, by schema index.
    DaysSince(usize),
    /// A quantile, by index into the rule set's quantiles.
    Quantile(usize),
    /// `-x`
    Neg(Box<Expr>),
    /// `a + b`
    Add(Box<Expr>, Box<Expr>),
    /// `a - b`
    Sub(Box<Expr>, Box<Expr>),
    /// `a * b`
    Mul(Box<Expr>, Box<Expr>),
    /// `a / b` (0 when `b` is 0)
    Div(Box<Expr>, Box<Expr>),
}

impl Expr {
    /// The value for one key, or `None` when it has none (overflow, no watermark, empty
    /// quantile population).
    pub fn eval<V: TraitValues + ?Sized>(&self, v: &V, g: &Globals) -> Option<Rational> {
        match self {
            Expr::Const(r) => Some(*r),
            Expr::Trait(i, TraitKind::Money) => Some(Rational::from_cents(v.trait_value(*i))),
            Expr::Trait(i, _) => Some(Rational::integer(v.trait_value(*i))),
            Expr::DaysSince(i) => {
                let day = v.trait_value(*i).div_euclid(MS_PER_DAY);
                let w = g.watermark_day?;
                Some(Rational::integer(w.checked_sub(day)?))
            }
            Expr::Quantile(q) => g.thresholds.get(*q).copied().flatten(),
            Expr::Neg(a) => a.eval(v, g)?.checked_neg(),
            Expr::Add(a, b) => a.eval(v, g)?.checked_add(b.eval(v, g)?),
            Expr::Sub(a, b) => a.eval(v, g)?.checked_add(b.eval(v, g)?.checked_neg()?),
            Expr::Mul(a, b) => a.eval(v, g)?.checked_mul(b.eval(v, g)?),
            Expr::Div(a, b) => a.eval(v, g)?.checked_div(b.eval(v, g)?),
        }
    }

    fn uses(&self, watermark: &mut bool, quantile: &mut bool) {
        match self {
            Expr::Const(_) | Expr::Trait(..) => {}
            Expr::DaysSince(_) => *watermark = true,
            Expr::Quantile(_) => *quantile = true,
            Expr::Neg(a) => a.uses(watermark, quantile),
            Expr::Add(a, b) | Expr::Sub(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) => {
                a.uses(watermark, quantile);
                b.uses(watermark, quantile);
            }
        }
    }
}

/// A typed boolean expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pred {
    /// `true` / `false`
    Const(bool),
    /// A comparison; false when a side has no value.
    Cmp(CmpOp, Expr, Expr),
    /// `not p`
    Not(Box<Pred>),
    /// `a and b`
    And(Box<Pred>, Box<Pred>),
    /// `a or b`
    Or(Box<Pred>, Box<Pred>),
}

impl Pred {
    /// Whether the predicate holds for one key.
    pub fn eval<V: TraitValues + ?Sized>(&self, v: &V, g: &Globals) -> bool {
        match self {
            Pred::Const(b) => *b,
            Pred::Cmp(op, a, b) => match (a.eval(v, g), b.eval(v, g)) {
                (Some(a), Some(b)) => op.holds(a.cmp(&b)),
                _ => false,
            },
            Pred::Not(p) => !p.eval(v, g),
            Pred::And(a, b) => a.eval(v, g) && b.eval(v, g),
            Pred::Or(a, b) => a.eval(v, g) || b.eval(v, g),
        }
    }

    /// Whether the predicate reads the watermark, and whether it reads a quantile.
    pub fn dependencies(&self) -> (bool, bool) {
        let (mut w, mut q) = (false, false);
        self.uses(&mut w, &mut q);
        (w, q)
    }

    fn uses(&self, watermark: &mut bool, quantile: &mut bool) {
        match self {
            Pred::Const(_) => {}
            Pred::Cmp(_, a, b) => {
                a.uses(watermark, quantile);
                b.uses(watermark, quantile);
            }
            Pred::Not(p) => p.uses(watermark, quantile),
            Pred::And(a, b) | Pred::Or(a, b) => {
                a.uses(watermark, quantile);
                b.uses(watermark, quantile);
            }
        }
    }

    /// The conjunction of this predicate's top-level `and` terms that depend on the key's
    /// traits alone (no watermark, no quantile): a necessary condition that can be checked
    /// before any global value is known. `true` when there is none.
    pub fn trait_only_guard(&self) -> Pred {
        let mut terms = Vec::new();
        self.conjuncts(&mut terms);
        terms
            .into_iter()
            .filter(|t| t.dependencies() == (false, false))
            .cloned()
            .reduce(|a, b| Pred::And(Box::new(a), Box::new(b)))
            .unwrap_or(Pred::Const(true))
    }

    fn conjuncts<'a>(&'a self, out: &mut Vec<&'a Pred>) {
        match self {
            Pred::And(a, b) => {
                a.conjuncts(out);
                b.conjuncts(out);
            }
            p => out.push(p),
        }
    }
}

/// A quantile a rule refers to: the nearest-rank `p`-quantile of `value` over the keys
/// satisfying `among` (all keys when `None`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quantile {
    /// The value whose quantile is taken.
    pub value: Expr,
    /// The quantile, in `[0, 1]`.
    pub p: Rational,
    /// The population.
    pub among: Option<Pred>,
}

impl Quantile {
    /// This key's contribution to the population: its value, when it belongs to the
    /// population and its value is defined. Quantiles never read globals.
    pub fn member_value<V: TraitValues + ?Sized>(&self, v: &V) -> Option<Rational> {
        let g = Globals::default();
        if let Some(c) = &self.among {
            if !c.eval(v, &g) {
                return None;
            }
        }
        self.value.eval(v, &g)
    }

    /// The nearest-rank quantile of a population given as `(value, multiplicity)` sorted
    /// by value ascending (multiplicities > 0): the value of rank `max(1, ceil(p * N))`.
    /// `None` when the population is empty.
    pub fn nearest_rank(
        &self,
        sorted: impl IntoIterator<Item = (Rational, u64)> + Clone,
    ) -> Option<Rational> {
        let n: u128 = sorted.clone().into_iter().map(|(_, m)| u128::from(m)).sum();
        if n == 0 {
            return None;
        }
        // p = a/b with 0 <= a <= b: ceil(a * n / b), at least 1.
        let (a, b) = (self.p.num as u128, self.p.den as u128);
        let rank = (a * n).div_ceil(b).max(1);
        let mut seen: u128 = 0;
        for (value, m) in sorted {
            seen += u128::from(m);
            if seen >= rank {
                return Some(value);
            }
        }
        None
    }
}

/// A rule that cannot be compiled: which rule, where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    /// The rule's name.
    pub rule: String,
    /// 1-based column (in characters) of the offending token, if the problem has one.
    pub column: Option<usize>,
    /// The offending token's text (`end of rule` at the end).
    pub token: Option<String>,
    /// What was expected and what was found.
    pub reason: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule `{}`", self.rule)?;
        if let Some(c) = self.column {
            write!(f, ", column {c}")?;
        }
        if let Some(t) = &self.token {
            write!(f, " at `{t}`")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for RuleError {}

// ---------------------------------------------------------------------------------------
// Lexer

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(Rational),
    Ident(String),
    Sym(&'static str),
    End,
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    /// byte offset in the rule text
    at: usize,
    text: String,
}

/// A problem at a byte offset, turned into a [`RuleError`] by [`compile_rule`].
struct Problem {
    at: usize,
    token: String,
    reason: String,
}

fn problem(t: &Token, reason: impl Into<String>) -> Problem {
    Problem {
        at: t.at,
        token: t.text.clone(),
        reason: reason.into(),
    }
}

const SYMBOLS: [&str; 13] = [
    "<=", ">=", "==", "!=", "<", ">", "(", ")", ",", "+", "-", "*", "/",
];

fn lex(text: &str) -> Result<Vec<Token>, Problem> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            let num = parse_number(word).ok_or_else(|| Problem {
                at: start,
                token: word.to_owned(),
                reason: "is not a number: expected digits with an optional `.` and fraction \
                         (e.g. `3`, `0.9`, `49.99`) of at most 30 digits"
                    .into(),
            })?;
            out.push(Token {
                tok: Tok::Num(num),
                at: start,
                text: word.to_owned(),
            });
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let word = &text[start..i];
            out.push(Token {
                tok: Tok::Ident(word.to_owned()),
                at: start,
                text: word.to_owned(),
            });
            continue;
        }
        if let Some(sym) = SYMBOLS.iter().find(|s| b[i..].starts_with(s.as_bytes())) {
            i += sym.len();
            out.push(Token {
                tok: Tok::Sym(sym),
                at: start,
                text: (*sym).to_owned(),
            });
            continue;
        }
        let ch = text[start..].chars().next().unwrap_or('?');
        let hint = match ch {
            '=' => "`=` is not an operator: compare with `==`",
            '!' => "`!` is not an operator: use `not` or `!=`",
            '&' => "use `and`",
            '|' => "use `or`",
            '%' => "percentages are written as fractions: 0.9, not 90%",
            _ => "unexpected character",
        };
        return Err(Problem {
            at: start,
            token: ch.to_string(),
            reason: hint.into(),
        });
    }
    out.push(Token {
        tok: Tok::End,
        at: text.len(),
        text: "end of rule".into(),
    });
    Ok(out)
}

fn parse_number(word: &str) -> Option<Rational> {
    let (int, frac) = word.split_once('.').unwrap_or((word, ""));
    if !int.bytes().all(|c| c.is_ascii_digit()) || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if int.is_empty() && frac.is_empty() || int.len() + frac.len() > 30 {
        return None;
    }
    if word.ends_with('.') {
        return None;
    }
    let digits = format!("{int}{frac}");
    let num: i128 = digits.parse().ok()?;
    let den = 10i128.checked_pow(frac.len() as u32)?;
    Rational::new(num, den)
}

// ---------------------------------------------------------------------------------------
// Parser: tokens -> untyped tree

#[derive(Clone, Debug)]
enum Ast {
    Num(Rational),
    Ident(String),
    Bool(bool),
    Not(Box<Node>),
    Neg(Box<Node>),
    Binary(&'static str, Box<Node>, Box<Node>),
    Quantile {
        value: Box<Node>,
        p: Box<Node>,
        among: Option<Box<Node>>,
    },
}

#[derive(Clone, Debug)]
struct Node {
    ast: Ast,
    /// The token that names this node (the operator of a binary node).
    token: Token,
}

const KEYWORDS: [&str; 7] = ["and", "or", "not", "true", "false", "quantile", "among"];

struct Parser {
    toks: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Token {
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(&self.peek().tok, Tok::Ident(s) if s == w)
    }

    fn is_sym(&self, s: &str) -> bool {
        matches!(&self.peek().tok, Tok::Sym(x) if *x == s)
    }

    fn expect_sym(&mut self, s: &str, context: &str) -> Result<Token, Problem> {
        if self.is_sym(s) {
            Ok(self.next())
        } else {
            Err(problem(self.peek(), format!("expected `{s}` {context}")))
        }
    }

    fn or(&mut self) -> Result<Node, Problem> {
        let mut left = self.and()?;
        while self.is_word("or") {
            let token = self.next();
            let right = self.and()?;
            left = Node {
                ast: Ast::Binary("or", Box::new(left), Box::new(right)),
                token,
            };
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, Problem> {
        let mut left = self.not()?;
        while self.is_word("and") {
            let token = self.next();
            let right = self.not()?;
            left = Node {
                ast: Ast::Binary("and", Box::new(left), Box::new(right)),
                token,
            };
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Node, Problem> {
        if self.is_word("not") {
            let token = self.next();
            let inner = self.not()?;
            return Ok(Node {
                ast: Ast::Not(Box::new(inner)),
                token,
            });
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, Problem> {
        let left = self.sum()?;
        const CMPS: [&str; 6] = ["<", "<=", ">", ">=", "==", "!="];
        let Some(op) = CMPS.iter().find(|s| self.is_sym(s)) else {
            return Ok(left);
        };
        let token = self.next();
        let right = self.sum()?;
        if CMPS.iter().any(|s| self.is_sym(s)) {
            return Err(problem(
                self.peek(),
                "comparisons do not chain: write `a < b and b < c`",
            ));
        }
        Ok(Node {
            ast: Ast::Binary(op, Box::new(left), Box::new(right)),
            token,
        })
    }

    fn sum(&mut self) -> Result<Node, Problem> {
        let mut left = self.product()?;
        while let Some(op) = ["+", "-"].into_iter().find(|s| self.is_sym(s)) {
            let token = self.next();
            let right = self.product()?;
            left = Node {
                ast: Ast::Binary(op, Box::new(left), Box::new(right)),
                token,
            };
        }
        Ok(left)
    }

    fn product(&mut self) -> Result<Node, Problem> {
        let mut left = self.unary()?;
        while let Some(op) = ["*", "/"].into_iter().find(|s| self.is_sym(s)) {
            let token = self.next();
            let right = self.unary()?;
            left = Node {
                ast: Ast::Binary(op, Box::new(left), Box::new(right)),
                token,
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, Problem> {
        if self.is_sym("-") {
            let token = self.next();
            let inner = self.unary()?;
            return Ok(Node {
                ast: Ast::Neg(Box::new(inner)),
                token,
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Node, Problem> {
        let token = self.next();
        let ast = match &token.tok {
            Tok::Num(r) => Ast::Num(*r),
            Tok::Sym("(") => {
                let inner = self.or()?;
                self.expect_sym(")", &format!("to close the `(` at column {}", token.at + 1))?;
                return Ok(inner);
            }
            Tok::Ident(w) if w == "true" => Ast::Bool(true),
            Tok::Ident(w) if w == "false" => Ast::Bool(false),
            Tok::Ident(w) if w == "quantile" => {
                self.expect_sym("(", "after `quantile`")?;
                let value = self.sum()?;
                self.expect_sym(
                    ",",
                    "between the value and the quantile in `quantile(x, p)`",
                )?;
                let p = self.unary()?;
                let among = if self.is_word("among") {
                    self.next();
                    Some(Box::new(self.or()?))
                } else {
                    None
                };
                self.expect_sym(")", "to close `quantile(`")?;
                Ast::Quantile {
                    value: Box::new(value),
                    p: Box::new(p),
                    among,
                }
            }
            Tok::Ident(w) if KEYWORDS.contains(&w.as_str()) => {
                return Err(problem(
                    &token,
                    format!("expected a number, a trait or `(`, found the keyword `{w}`"),
                ))
            }
            Tok::Ident(w) => Ast::Ident(w.clone()),
            Tok::End => {
                return Err(problem(
                    &token,
                    "the rule ends early: expected a number, a trait or `(`",
                ))
            }
            Tok::Sym(s) => {
                return Err(problem(
                    &token,
                    format!("expected a number, a trait or `(`, found `{s}`"),
                ))
            }
        };
        Ok(Node { ast, token })
    }
}

// ---------------------------------------------------------------------------------------
// Type checking: untyped tree -> Pred / Expr

struct Checker<'a> {
    schema: &'a Schema,
    quantiles: &'a mut Vec<Quantile>,
    /// Inside a quantile's value or population (no watermark, no nested quantile).
    in_quantile: bool,
}

enum Typed {
    Bool(Pred),
    Num(Expr),
}

impl Checker<'_> {
    fn num(&mut self, n: &Node, what: &str) -> Result<Expr, Problem> {
        match self.check(n)? {
            Typed::Num(e) => Ok(e),
            Typed::Bool(_) => Err(problem(
                &n.token,
                format!("{what} must be a number, but this is a condition"),
            )),
        }
    }

    fn pred(&mut self, n: &Node, what: &str) -> Result<Pred, Problem> {
        match self.check(n)? {
            Typed::Bool(p) => Ok(p),
            Typed::Num(_) => Err(problem(
                &n.token,
                format!("{what} must be a condition (e.g. `views >= 10`), but this is a number"),
            )),
        }
    }

    fn check(&mut self, n: &Node) -> Result<Typed, Problem> {
        Ok(match &n.ast {
            Ast::Num(r) => Typed::Num(Expr::Const(*r)),
            Ast::Bool(b) => Typed::Bool(Pred::Const(*b)),
            Ast::Ident(name) => Typed::Num(self.name(n, name)?),
            Ast::Not(inner) => Typed::Bool(Pred::Not(Box::new(
                self.pred(inner, "the operand of `not`")?,
            ))),
            Ast::Neg(inner) => {
                Typed::Num(Expr::Neg(Box::new(self.num(inner, "the operand of `-`")?)))
            }
            Ast::Binary(op @ ("and" | "or"), a, b) => {
                let what = format!("each side of `{op}`");
                let (a, b) = (
                    Box::new(self.pred(a, &what)?),
                    Box::new(self.pred(b, &what)?),
                );
                Typed::Bool(if *op == "and" {
                    Pred::And(a, b)
                } else {
                    Pred::Or(a, b)
                })
            }
            Ast::Binary(op @ ("+" | "-" | "*" | "/"), a, b) => {
                let what = format!("each side of `{op}`");
                let (a, b) = (Box::new(self.num(a, &what)?), Box::new(self.num(b, &what)?));
                Typed::Num(match *op {
                    "+" => Expr::Add(a, b),
                    "-" => Expr::Sub(a, b),
                    "*" => Expr::Mul(a, b),
                    _ => Expr::Div(a, b),
                })
            }
            Ast::Binary(op, a, b) => {
                let cmp = match *op {
                    "<" => CmpOp::Lt,
                    "<=" => CmpOp::Le,
                    ">" => CmpOp::Gt,
                    ">=" => CmpOp::Ge,
                    "==" => CmpOp::Eq,
                    _ => CmpOp::Ne,
                };
                let what = format!("each side of `{op}`");
                Typed::Bool(Pred::Cmp(cmp, self.num(a, &what)?, self.num(b, &what)?))
            }
            Ast::Quantile { value, p, among } => {
                if self.in_quantile {
                    return Err(problem(
                        &n.token,
                        "a quantile cannot contain another quantile",
                    ));
                }
                let Ast::Num(p_value) = p.ast else {
                    return Err(problem(
                        &p.token,
                        "the quantile `p` must be a number literal in [0, 1], e.g. 0.9",
                    ));
                };
                if p_value < Rational::ZERO || p_value > Rational::integer(1) {
                    return Err(problem(
                        &p.token,
                        format!("the quantile `p` must be in [0, 1], found {}", p.token.text),
                    ));
                }
                self.in_quantile = true;
                let value = self.num(value, "the value of a quantile");
                let among = among
                    .as_ref()
                    .map(|c| self.pred(c, "the population after `among`"))
                    .transpose();
                self.in_quantile = false;
                let q = Quantile {
                    value: value?,
                    p: p_value,
                    among: among?,
                };
                let index = match self.quantiles.iter().position(|x| *x == q) {
                    Some(i) => i,
                    None => {
                        self.quantiles.push(q);
                        self.quantiles.len() - 1
                    }
                };
                Typed::Num(Expr::Quantile(index))
            }
        })
    }

    fn name(&self, n: &Node, name: &str) -> Result<Expr, Problem> {
        if let Some((i, kind)) = self.schema.lookup(name) {
            if kind == TraitKind::Time {
                return Err(problem(
                    &n.token,
                    format!("`{name}` is a time: use `days_since_{name}` (whole UTC days to the watermark)"),
                ));
            }
            return Ok(Expr::Trait(i, kind));
        }
        if let Some(base) = name.strip_prefix("days_since_") {
            if let Some((i, TraitKind::Time)) = self.schema.lookup(base) {
                if self.in_quantile {
                    return Err(problem(
                        &n.token,
                        "a quantile's value and population cannot depend on the watermark",
                    ));
                }
                return Ok(Expr::DaysSince(i));
            }
        }
        Err(problem(
            &n.token,
            format!(
                "unknown trait `{name}`; known: {}",
                self.schema.vocabulary().join(", ")
            ),
        ))
    }
}

/// Parses and type-checks rule `name`'s `text` against `schema`. Quantiles the rule uses
/// are added to `quantiles` (an identical quantile already there is shared) and referred
/// to by index.
pub fn compile_rule(
    name: &str,
    text: &str,
    schema: &Schema,
    quantiles: &mut Vec<Quantile>,
) -> Result<Pred, RuleError> {
    let located = |p: Problem| RuleError {
        rule: name.to_owned(),
        column: Some(text[..p.at.min(text.len())].chars().count() + 1),
        token: Some(p.token),
        reason: p.reason,
    };
    let toks = lex(text).map_err(located)?;
    let mut parser = Parser { toks, pos: 0 };
    let tree = parser.or().map_err(located)?;
    let rest = parser.peek().clone();
    if rest.tok != Tok::End {
        return Err(located(problem(
            &rest,
            "unexpected text after a complete rule (missing `and`/`or`, or an extra `)`?)",
        )));
    }
    // Quantiles are only committed when the whole rule compiles.
    let mut local = quantiles.clone();
    let mut checker = Checker {
        schema,
        quantiles: &mut local,
        in_quantile: false,
    };
    let pred = checker.pred(&tree, "a rule").map_err(located)?;
    *quantiles = local;
    Ok(pred)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::new(&[
            ("views", TraitKind::Count),
            ("purchases", TraitKind::Count),
            ("revenue", TraitKind::Money),
            ("last_seen", TraitKind::Time),
            ("sessions", TraitKind::Count),
        ])
    }

    struct Vals([i64; 5]);
    impl TraitValues for Vals {
        fn trait_value(&self, i: usize) -> i64 {
            self.0[i]
        }
    }

    fn eval(text: &str, v: [i64; 5], g: &Globals) -> bool {
        let mut qs = Vec::new();
        match compile_rule("t", text, &schema(), &mut qs) {
            Ok(p) => p.eval(&Vals(v), g),
            Err(e) => panic!("{e}"),
        }
    }

    fn err(text: &str) -> RuleError {
        let mut qs = Vec::new();
        match compile_rule("r", text, &schema(), &mut qs) {
            Ok(p) => panic!("`{text}` should not compile, got {p:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn evaluates_exactly_in_cents_and_whole_days() {
        let day = 18_000i64;
        let g = Globals {
            watermark_day: Some(day),
            thresholds: vec![],
        };
        let noon = day * MS_PER_DAY + MS_PER_DAY / 2;
        // revenue 49.99 exactly
        let v = [12, 2, 4999, noon - 7 * MS_PER_DAY, 3];
        assert!(eval("revenue >= 49.99 and revenue < 50", v, &g));
        assert!(!eval("revenue > 49.99", v, &g));
        assert!(eval("days_since_last_seen == 7", v, &g));
        assert!(eval(
            "days_since_last_seen <= 7 and not days_since_last_seen < 7",
            v,
            &g
        ));
        assert!(eval("views / sessions == 4", v, &g));
        assert!(eval("views / 0 == 0", v, &g));
        assert!(eval("revenue / purchases == 24.995", v, &g));
        assert!(eval("-views + 2 * 6 == 0 or false", v, &g));
        assert!(eval("(views > 100 or purchases >= 2) and true", v, &g));
        assert!(eval("1 - 2 - 3 == -4 and 12 / 2 / 3 == 2", v, &g));
        assert!(eval("not not (views == 12)", v, &g));
        // a comparison with no watermark is false (and its negation true)
        let none = Globals::default();
        assert!(!eval("days_since_last_seen >= 0", v, &none));
        assert!(eval("not days_since_last_seen >= 0", v, &none));
    }

    #[test]
    fn overflow_makes_a_comparison_false() {
        let g = Globals::default();
        let big = i64::MAX;
        let v = [big, big, big, 0, 1];
        assert!(!eval("views * views * views > 0", v, &g));
        assert!(eval("views * views > 0", v, &g));
    }

    #[test]
    fn rationals_compare_without_overflow() {
        let a = Rational::new(i128::MAX - 1, i128::MAX - 2);
        let b = Rational::new(i128::MAX - 2, i128::MAX - 3);
        let (Some(a), Some(b)) = (a, b) else {
            panic!("valid rationals")
        };
        // (n-1)/(n-2) < (n-2)/(n-3) for large n
        assert!(a < b);
        assert_eq!(Rational::new(2, 4), Rational::new(-1, -2));
        assert!(Rational::new(-1, 3) < Rational::new(0, 1));
        assert!(Rational::new(7, 3) > Rational::new(2, 1));
    }

    #[test]
    fn quantiles_use_nearest_rank_with_ties() {
        let mut qs = Vec::new();
        let p = compile_rule(
            "hv",
            "revenue >= quantile(revenue, 0.9 among purchases >= 1)",
            &schema(),
            &mut qs,
        );
        assert!(p.is_ok());
        assert_eq!(qs.len(), 1);
        let q = &qs[0];
        let pop = |vals: &[i64]| -> Vec<(Rational, u64)> {
            let mut m: std::collections::BTreeMap<Rational, u64> = Default::default();
            for v in vals {
                *m.entry(Rational::integer(*v)).or_default() += 1;
            }
            m.into_iter().collect()
        };
        // 10 values 1..=10: rank ceil(9) = 9 -> 9
        let v: Vec<i64> = (1..=10).collect();
        assert_eq!(q.nearest_rank(pop(&v)), Some(Rational::integer(9)));
        // 15 values: ceil(13.5) = 14
        let v: Vec<i64> = (1..=15).collect();
        assert_eq!(q.nearest_rank(pop(&v)), Some(Rational::integer(14)));
        // ties: [1, 5, 5, 5] -> rank ceil(3.6) = 4 -> 5
        assert_eq!(
            q.nearest_rank(pop(&[1, 5, 5, 5])),
            Some(Rational::integer(5))
        );
        assert_eq!(q.nearest_rank(pop(&[])), None);
        // p = 0 is the minimum
        let mut qs = Vec::new();
        let _ = compile_rule("lo", "views >= quantile(views, 0)", &schema(), &mut qs);
        assert_eq!(qs[0].nearest_rank(pop(&[3, 4])), Some(Rational::integer(3)));
        // identical quantiles are shared, different ones are not
        let mut qs = Vec::new();
        let s = schema();
        assert!(compile_rule("a", "views > quantile(views, 0.5)", &s, &mut qs).is_ok());
        assert!(compile_rule("b", "views < quantile(views, 0.5)", &s, &mut qs).is_ok());
        assert!(compile_rule("c", "views < quantile(views, 0.25)", &s, &mut qs).is_ok());
        assert_eq!(qs.len(), 2);
        // member values: population filter
        let v = Vals([1, 0, 500, 0, 0]);
        let mut qs = Vec::new();
        let _ = compile_rule(
            "m",
            "revenue > quantile(revenue, 0.5 among purchases > 0)",
            &s,
            &mut qs,
        );
        assert_eq!(qs[0].member_value(&v), None);
        let v = Vals([1, 2, 500, 0, 0]);
        assert_eq!(qs[0].member_value(&v), Some(Rational::integer(5)));
    }

    #[test]
    fn guards_are_the_trait_only_conjuncts() {
        let mut qs = Vec::new();
        let s = schema();
        let p = compile_rule(
            "g",
            "purchases >= 1 and revenue >= quantile(revenue, 0.9) and views > 2",
            &s,
            &mut qs,
        );
        let Ok(p) = p else { panic!("compiles") };
        assert_eq!(p.dependencies(), (false, true));
        let guard = p.trait_only_guard();
        assert_eq!(guard.dependencies(), (false, false));
        let g = Globals::default();
        assert!(guard.eval(&Vals([3, 1, 0, 0, 0]), &g));
        assert!(!guard.eval(&Vals([3, 0, 0, 0, 0]), &g));
        let Ok(p) = compile_rule("w", "days_since_last_seen <= 7 or views > 1", &s, &mut qs) else {
            panic!("compiles")
        };
        assert_eq!(p.dependencies(), (true, false));
        assert_eq!(p.trait_only_guard(), Pred::Const(true));
    }

    #[test]
    fn errors_name_the_rule_the_column_the_token_and_why() {
        let e = err("purchases >= 1 and revnue > 3");
        assert_eq!(e.rule, "r");
        assert_eq!(e.column, Some(20));
        assert_eq!(e.token.as_deref(), Some("revnue"));
        assert!(e.reason.contains("unknown trait `revnue`"), "{e}");
        assert!(e.reason.contains("days_since_last_seen"), "{e}");
        assert_eq!(
            e.to_string(),
            format!("rule `r`, column 20 at `revnue`: {}", e.reason)
        );

        let cases: [(&str, usize, &str, &str); 17] = [
            ("views = 3", 7, "=", "compare with `==`"),
            ("views >= ", 10, "end of rule", "ends early"),
            ("views >= 3 purchases", 12, "purchases", "unexpected text"),
            (
                "(views >= 3",
                12,
                "end of rule",
                "to close the `(` at column 1",
            ),
            ("views", 1, "views", "must be a condition"),
            ("views + (purchases > 1) > 2", 20, ">", "must be a number"),
            ("views and purchases > 1", 1, "views", "must be a condition"),
            ("1 < views < 3", 11, "<", "do not chain"),
            (
                "last_seen > 3",
                1,
                "last_seen",
                "use `days_since_last_seen`",
            ),
            ("views > 1.2.3", 9, "1.2.3", "is not a number"),
            ("views > 90%", 11, "%", "fractions"),
            ("views > quantile(views, 1.5)", 25, "1.5", "in [0, 1]"),
            (
                "views > quantile(views, purchases)",
                25,
                "purchases",
                "number literal",
            ),
            (
                "views > quantile(days_since_last_seen, 0.5)",
                18,
                "days_since_last_seen",
                "cannot depend on the watermark",
            ),
            (
                "views > quantile(views, 0.5 among views > quantile(views, 0.1))",
                43,
                "quantile",
                "another quantile",
            ),
            ("views > and", 9, "and", "found the keyword `and`"),
            ("views ≥ 3", 7, "≥", "unexpected character"),
        ];
        let mut wrong = Vec::new();
        for (text, column, token, why) in cases {
            let e = err(text);
            if (e.column, e.token.as_deref()) != (Some(column), Some(token))
                || !e.reason.contains(why)
            {
                wrong.push(format!("`{text}`: {e}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn a_failed_rule_does_not_register_its_quantiles() {
        let mut qs = Vec::new();
        let r = compile_rule(
            "x",
            "views > quantile(views, 0.5) and nope > 1",
            &schema(),
            &mut qs,
        );
        assert!(r.is_err());
        assert!(qs.is_empty());
    }
}
