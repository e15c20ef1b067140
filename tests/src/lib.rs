//! Support for CAP's end-to-end tests: locating the real job binary, running it, reading
//! its outputs, and an *independent* batch implementation of the output contract.
//!
//! The batch side deliberately shares no code with the engine, the operators or the
//! decoders: it parses CSV with its own small parser and dates with `chrono`, and computes
//! each table with plain maps, straight from the contract's wording.

pub mod batch_alerts;
pub mod batch_recommendations;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub mod batch_customers;

use anyhow::{bail, ensure, Context, Result};
use chrono::{Datelike, NaiveDateTime};
use serde_json::Value;

pub mod batch_aggregates;
pub mod batch_clusters;
pub mod kafka_read;
pub mod supervise;
pub mod tansu;

/// The `customer-analytics` binary of this build, rebuilt first with the workspace build
/// (a no-op when it is up to date) so a test never runs a stale binary.
pub fn job_binary() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            // target/<profile>/deps/<test-exe> -> target/<profile>/customer-analytics
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .ok_or("cannot locate the target directory")?
                .to_owned();
            let bin = profile_dir.join("customer-analytics");
            // tests/run-all.sh sets CAP_TESTS_PREBUILT after its own workspace build: cargo
            // would otherwise re-check (and, with nextest's differing environment, sometimes
            // recompile) the job crate from inside every test binary.
            if std::env::var_os("CAP_TESTS_PREBUILT").is_some() && bin.exists() {
                return Ok(bin);
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = Command::new(cargo);
            // Exactly the build tests/run-all.sh does first, so this is a no-op there. A
            // narrower build (`-p customer-analytics`) would unify features differently and
            // compile a second copy of the dependency graph (time and disk).
            cmd.args([
                "build",
                "--quiet",
                "--workspace",
                "--all-targets",
                "--locked",
            ]);
            if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
                cmd.arg("--release");
            }
            let status = cmd
                .status()
                .map_err(|e| format!("cannot run cargo build: {e}"))?;
            if !status.success() || !bin.exists() {
                return Err(format!(
                    "cargo build of customer-analytics failed; expected {}",
                    bin.display()
                ));
            }
            Ok(bin)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Runs the job binary with `args`, failing with its stderr when it exits non-zero.
pub fn run_job(args: &[&str]) -> Result<std::process::Output> {
    let bin = job_binary()?;
    let out = Command::new(&bin)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed with {}:\n{}",
            bin.display(),
            args,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The tables the file sink wrote into `out` (snapshot files, not changelogs).
pub fn snapshot_tables(out: &Path) -> Result<BTreeSet<String>> {
    let mut tables = BTreeSet::new();
    for entry in std::fs::read_dir(out)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(t) = name.strip_suffix(".jsonl") {
            if !t.ends_with(".changelog") {
                tables.insert(t.to_owned());
            }
        }
    }
    Ok(tables)
}

/// Reads a JSON-lines file into values.
pub fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("bad JSON line in {}: {l}", path.display()))
        })
        .collect()
}

/// Folds a `<table>.changelog.jsonl` into the current rows by key, checking that epochs
/// never go backwards.
pub fn fold_changelog(path: &Path) -> Result<BTreeMap<String, Value>> {
    let mut current = BTreeMap::new();
    let mut last_epoch = 0u64;
    for line in read_jsonl(path)? {
        let epoch = line["epoch"]
            .as_u64()
            .context("changelog line without epoch")?;
        if epoch < last_epoch {
            bail!("{}: epoch {epoch} after {last_epoch}", path.display());
        }
        last_epoch = epoch;
        let key = line["key"].to_string();
        match &line["row"] {
            Value::Null => {
                current.remove(&key);
            }
            row => {
                current.insert(key, row.clone());
            }
        }
    }
    Ok(current)
}

/// Runs the job as a cluster of two processes of one worker each over loopback (a
/// hostfile with two free ports in `dir`), each with `run -w 1 -n 2 -p I --hostfile F`
/// followed by `args`, and waits for both; fails with the stderr of a process that fails.
pub fn run_two_processes(dir: &Path, args: &[&str]) -> Result<()> {
    let port = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let hostfile = dir.join("hosts.txt");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", port()?, port()?),
    )?;
    let bin = job_binary()?;
    let mut children = Vec::new();
    for p in ["0", "1"] {
        let child = Command::new(&bin)
            .args(["run", "-w", "1", "-n", "2", "-p", p, "--hostfile"])
            .arg(&hostfile)
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting process {p} of {}", bin.display()))?;
        children.push(child);
    }
    for child in children {
        let done = child.wait_with_output()?;
        ensure!(
            done.status.success(),
            "a process failed: {}",
            String::from_utf8_lossy(&done.stderr)
        );
    }
    Ok(())
}

/// Writes `events.csv` in `dir` with the job's `generate` command: `events` events from
/// `seed`, 5% of them delivered out of order and 1% written twice (the noise every
/// end-to-end test runs with), no progress bar, and the test's own generator flags `extra`
/// (e.g. `["--users", "4000", "--set", "products=3000"]`).
pub fn generate_csv(dir: &Path, events: u64, seed: u64, extra: &[&str]) -> Result<PathBuf> {
    let csv = dir.join("events.csv");
    let (events, seed) = (events.to_string(), seed.to_string());
    let mut args = vec![
        "generate",
        "-o",
        csv.to_str().context("path")?,
        "--events",
        &events,
        "--seed",
        &seed,
        "--out-of-order",
        "0.05",
        "--duplicates",
        "0.01",
        "--no-progress",
    ];
    args.extend_from_slice(extra);
    run_job(&args)?;
    Ok(csv)
}

/// Appends `rows`, one a line, to the file at `path` (hand-written rows after generated ones).
pub fn append_lines(path: &Path, rows: &[&str]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    for row in rows {
        writeln!(f, "{row}")?;
    }
    Ok(())
}

/// Runs the job over the file `csv` into the directory `out` with `workers` workers and an
/// epoch every `epoch_records` records, without the live console; `extra` are further `run`
/// arguments, as given (e.g. `["--set", "job.clusters.k=4"]`).
pub fn run_on_csv(
    csv: &Path,
    out: &Path,
    workers: &str,
    epoch_records: &str,
    extra: &[&str],
) -> Result<()> {
    let mut args = vec![
        "run",
        "--input",
        csv.to_str().context("path")?,
        "--output",
        out.to_str().context("path")?,
        "--workers",
        workers,
        "--epoch-records",
        epoch_records,
        "--no-console",
    ];
    args.extend_from_slice(extra);
    run_job(&args)?;
    Ok(())
}

/// The rows `<table>.changelog.jsonl` in `out` folds to, in the fold's order (keys by their
/// JSON text), and the rows of the snapshot `<table>.jsonl`, in file order.
pub fn folded_and_snapshot(out: &Path, table: &str) -> Result<(Vec<Value>, Vec<Value>)> {
    let folded = fold_changelog(&out.join(format!("{table}.changelog.jsonl")))?
        .into_values()
        .collect();
    let snapshot = read_jsonl(&out.join(format!("{table}.jsonl")))?;
    Ok((folded, snapshot))
}

/// Fails unless `table`'s changelog in `out` folds to exactly the rows of its snapshot,
/// compared as sorted row texts: the fold orders keys by their re-serialized JSON (fields
/// sorted by name), the snapshot by the typed key, and these orders may differ.
pub fn ensure_changelog_folds_to_snapshot(out: &Path, table: &str) -> Result<()> {
    let (folded, snapshot) = folded_and_snapshot(out, table)?;
    let sorted_texts = |rows: Vec<Value>| {
        let mut texts: Vec<String> = rows.iter().map(Value::to_string).collect();
        texts.sort();
        texts
    };
    ensure!(
        sorted_texts(folded) == sorted_texts(snapshot),
        "{table}: the changelog does not fold to the snapshot"
    );
    Ok(())
}

/// Fails unless `table`'s changelog in `out` folds to exactly the rows of its snapshot, in
/// the same order: for tables whose typed key order is the order of the keys' JSON texts.
pub fn ensure_changelog_folds_to_snapshot_in_order(out: &Path, table: &str) -> Result<()> {
    let (folded, snapshot) = folded_and_snapshot(out, table)?;
    ensure!(
        folded == snapshot,
        "{table}: the changelog does not fold to the snapshot"
    );
    Ok(())
}

/// Fails unless the stream's rows `actual` of `table` equal the batch's `expected`, key for
/// key, naming how many keys differ and the first few of them.
pub fn ensure_same_rows<K: Ord + Debug, V: PartialEq + Debug>(
    table: &str,
    actual: &BTreeMap<K, V>,
    expected: &BTreeMap<K, V>,
) -> Result<()> {
    let mut diffs = Vec::new();
    for (k, v) in expected {
        if actual.get(k) != Some(v) {
            diffs.push(format!("{k:?}: stream {:?}, batch {v:?}", actual.get(k)));
        }
    }
    for (k, v) in actual {
        if !expected.contains_key(k) {
            diffs.push(format!("{k:?}: stream {v:?}, batch absent"));
        }
    }
    ensure!(
        diffs.is_empty(),
        "{table} differs from the batch computation in {} keys (of {} expected), e.g.:\n{}",
        diffs.len(),
        expected.len(),
        diffs[..diffs.len().min(10)].join("\n")
    );
    Ok(())
}

/// The text field `field` of the row `v`, failing with the row when it is absent or not text.
pub fn field_text(v: &Value, field: &str) -> Result<String> {
    Ok(v[field]
        .as_str()
        .with_context(|| format!("{field} in {v}"))?
        .to_owned())
}

/// The integer field `field` of the row `v`, failing with the row when absent or not an i64.
pub fn field_i64(v: &Value, field: &str) -> Result<i64> {
    v[field].as_i64().with_context(|| format!("{field} in {v}"))
}

/// The integer field `field` of the row `v`, failing with the row when absent or not a u64.
pub fn field_u64(v: &Value, field: &str) -> Result<u64> {
    v[field].as_u64().with_context(|| format!("{field} in {v}"))
}

/// The number field `field` of the row `v`, failing with the row when absent or not a number.
pub fn field_f64(v: &Value, field: &str) -> Result<f64> {
    v[field].as_f64().with_context(|| format!("{field} in {v}"))
}

/// One event as the batch side reads it.
#[derive(Debug, Clone)]
pub struct BatchEvent {
    /// Event time, ms.
    pub time_ms: i64,
    /// `view`, `cart`, `remove_from_cart`, `purchase`.
    pub event_type: String,
    /// Product.
    pub product_id: u64,
    /// Category id.
    pub category_id: u64,
    /// Category code, if any.
    pub category_code: Option<String>,
    /// Brand, if any.
    pub brand: Option<String>,
    /// Price in cents (rounded half away from zero from the text).
    pub price_cents: i64,
    /// User.
    pub user_id: u64,
    /// Session, if any.
    pub session: Option<String>,
    /// Client ip, if the file has the column and the row a value.
    pub ip: Option<String>,
    /// Channel, if any.
    pub channel: Option<String>,
}

impl BatchEvent {
    /// The category key of the contract: category_code, else the category id as text.
    pub fn category_key(&self) -> String {
        self.category_code
            .clone()
            .unwrap_or_else(|| self.category_id.to_string())
    }
}

/// Cents of a decimal price text, rounded half away from zero, computed independently of
/// the engine (via exact decimal string handling).
pub fn price_to_cents(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let int: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut f: Vec<u32> = frac
        .chars()
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()?;
    f.resize(3, 0);
    let mut cents = int * 100 + i64::from(f[0]) * 10 + i64::from(f[1]);
    if f[2] >= 5 {
        cents += 1;
    }
    Some(if neg { -cents } else { cents })
}

/// Splits a CSV line (RFC 4180 quotes) into fields.
pub fn split_csv(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', true) => in_quotes = false,
            ('"', false) if cur.is_empty() => in_quotes = true,
            (',', false) => fields.push(std::mem::take(&mut cur)),
            (c, _) => cur.push(c),
        }
    }
    fields.push(cur);
    fields
}

/// Reads a REES46 CSV: the valid events and the line numbers of rows it rejects.
/// A row is valid when it has the header's field count, a parseable time in 2000-2099, a
/// known event type, numeric ids and a finite price.
pub fn read_csv_batch(path: &Path) -> Result<(Vec<BatchEvent>, BTreeSet<u64>)> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().context("empty CSV")?;
    let cols: Vec<String> = split_csv(header);
    let idx = |name: &str| {
        cols.iter()
            .position(|c| c == name)
            .with_context(|| format!("no column {name}"))
    };
    let (i_time, i_type, i_product, i_category, i_price, i_user, i_session) = (
        idx("event_time")?,
        idx("event_type")?,
        idx("product_id")?,
        idx("category_id")?,
        idx("price")?,
        idx("user_id")?,
        idx("user_session")?,
    );
    let (i_code, i_brand) = (idx("category_code")?, idx("brand")?);
    let (i_ip, i_channel) = (
        cols.iter().position(|c| c == "ip"),
        cols.iter().position(|c| c == "channel"),
    );
    let opt = |f: &Vec<String>, i: Option<usize>| {
        i.and_then(|i| Some(f[i].clone()).filter(|s| !s.is_empty()))
    };
    let mut events = Vec::new();
    let mut bad = BTreeSet::new();
    for (i, line) in lines {
        let lineno = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f = split_csv(line);
        let ok = (|| -> Option<BatchEvent> {
            if f.len() != cols.len() {
                return None;
            }
            let t = NaiveDateTime::parse_from_str(
                f[i_time].trim_end_matches(" UTC"),
                "%Y-%m-%d %H:%M:%S",
            )
            .ok()?;
            if !(2000..=2099).contains(&t.year()) {
                return None;
            }
            if !["view", "cart", "remove_from_cart", "purchase"].contains(&f[i_type].as_str()) {
                return None;
            }
            if !f[i_price].parse::<f64>().ok()?.is_finite() {
                return None;
            }
            Some(BatchEvent {
                time_ms: t.and_utc().timestamp_millis(),
                event_type: f[i_type].clone(),
                product_id: f[i_product].parse().ok()?,
                category_id: f[i_category].parse().ok()?,
                category_code: opt(&f, Some(i_code)),
                brand: opt(&f, Some(i_brand)),
                price_cents: price_to_cents(&f[i_price])?,
                user_id: f[i_user].parse().ok()?,
                session: opt(&f, Some(i_session)),
                ip: opt(&f, i_ip),
                channel: opt(&f, i_channel),
            })
        })();
        match ok {
            Some(e) => events.push(e),
            None => {
                bad.insert(lineno);
            }
        }
    }
    Ok((events, bad))
}

fn day_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

/// `daily_visitors` as a batch query: day -> (visitors, sessions, events).
pub fn batch_daily_visitors(events: &[BatchEvent]) -> BTreeMap<String, (u64, u64, u64)> {
    let mut users: HashMap<String, BTreeSet<u64>> = HashMap::new();
    let mut sessions: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for e in events {
        let day = day_text(e.time_ms);
        users.entry(day.clone()).or_default().insert(e.user_id);
        if let Some(s) = &e.session {
            sessions.entry(day.clone()).or_default().insert(s.clone());
        }
        *counts.entry(day).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(day, n)| {
            let v = users.get(&day).map(|s| s.len() as u64).unwrap_or(0);
            let s = sessions.get(&day).map(|s| s.len() as u64).unwrap_or(0);
            (day, (v, s, n))
        })
        .collect()
}

/// `session_funnel_daily` as a batch query: (day, step) -> sessions reaching >= step.
pub fn batch_funnel(events: &[BatchEvent]) -> BTreeMap<(String, u64), u64> {
    let mut by_session: HashMap<&str, Vec<&BatchEvent>> = HashMap::new();
    for e in events {
        if let Some(s) = &e.session {
            by_session.entry(s.as_str()).or_default().push(e);
        }
    }
    let mut out: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for evs in by_session.values() {
        let first = evs.iter().map(|e| e.time_ms).min().unwrap_or(0);
        // Largest k with view <= cart <= purchase times, by exhaustive search over pairs.
        let times = |t: &str| -> Vec<i64> {
            evs.iter()
                .filter(|e| e.event_type == t)
                .map(|e| e.time_ms)
                .collect()
        };
        let (views, carts, buys) = (times("view"), times("cart"), times("purchase"));
        let mut reached = 0;
        if !views.is_empty() {
            reached = 1;
            if carts.iter().any(|c| views.iter().any(|v| v <= c)) {
                reached = 2;
                if buys
                    .iter()
                    .any(|p| carts.iter().any(|c| c <= p && views.iter().any(|v| v <= c)))
                {
                    reached = 3;
                }
            }
        }
        for step in 1..=reached {
            *out.entry((day_text(first), step)).or_default() += 1;
        }
    }
    out
}

/// A webhook receiver on a free loopback port, for the notification tests: it answers every
/// POST `200` and keeps each request's `Idempotency-Key` header and JSON body.
pub struct WebhookReceiver {
    /// `http://127.0.0.1:<port>/hook`.
    pub url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
}

impl WebhookReceiver {
    /// Starts serving from a background thread (one thread per connection).
    pub fn start() -> Result<WebhookReceiver> {
        use std::io::{BufRead, BufReader, Read};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let requests: std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>> = Default::default();
        let log = std::sync::Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = std::sync::Arc::clone(&log);
                std::thread::spawn(move || -> Result<()> {
                    let mut reader = BufReader::new(&stream);
                    let (mut line, mut key, mut len) = (String::new(), String::new(), 0usize);
                    reader.read_line(&mut line)?; // request line
                    loop {
                        line.clear();
                        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            match k.trim().to_ascii_lowercase().as_str() {
                                "content-length" => len = v.trim().parse()?,
                                "idempotency-key" => key = v.trim().to_owned(),
                                _ => {}
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body)?;
                    let body: Value = serde_json::from_slice(&body)?;
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((key, body));
                    (&stream).write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )?;
                    Ok(())
                });
            }
        });
        Ok(WebhookReceiver { url, requests })
    }

    /// The requests received so far: (`Idempotency-Key`, body), in arrival order.
    pub fn requests(&self) -> Vec<(String, Value)> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
