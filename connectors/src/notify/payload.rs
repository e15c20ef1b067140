//! The bodies a webhook posts, one per `format`, for an alert and for a rate-limit summary.
//!
//! | format | alert | summary |
//! |---|---|---|
//! | `json` | `{"alert_id", "alert": <the row>, "table"}` | `{"alert_id": "summary-<first>-<n>", "table", "suppressed", "kinds", "first_alert_id", "last_alert_id", "text"}` |
//! | `slack` | `{"text": <one line>}` | `{"text": <one line>}` |
//! | `teams` | a MessageCard: `summary`, `title`, `text`, one fact per column | a MessageCard |
//!
//! Every body carries the alert id (a field, or in the text and the facts); the request
//! carries it too, as `Idempotency-Key`. The one-line summary reads
//! `critical bot alert on user:42, 2019-11-01T13:05:00Z to 2019-11-01T13:33:00Z: observed
//! 812 vs threshold 300 (user_rate); alert_id 1f0c..`, from whichever of those columns the
//! row has.

use std::collections::BTreeMap;

use cap_engine::config::NotifyFormat;
use serde_json::{json, Value};

/// One row handed to a channel: its id, its kind (for summaries) and the row itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The row's `alert_id`, or its primary key's JSON in a table without one.
    pub alert_id: String,
    /// The row's `kind`, or the table's name in a table without one.
    pub kind: String,
    /// The row, a JSON object.
    pub row: Value,
}

/// Alerts folded into one summary notification: how many, of which kinds, first and last.
#[derive(Debug, Clone, PartialEq)]
pub struct Suppressed {
    /// Alerts folded in.
    pub count: u64,
    /// Alerts folded in, by kind.
    pub kinds: BTreeMap<String, u64>,
    /// The first alert folded in.
    pub first: String,
    /// The last alert folded in.
    pub last: String,
}

impl Suppressed {
    /// A summary of `notice` alone.
    pub fn of(notice: &Notice) -> Suppressed {
        Suppressed {
            count: 1,
            kinds: BTreeMap::from([(notice.kind.clone(), 1)]),
            first: notice.alert_id.clone(),
            last: notice.alert_id.clone(),
        }
    }

    /// Folds `notice` in.
    pub fn add(&mut self, notice: &Notice) {
        self.count += 1;
        *self.kinds.entry(notice.kind.clone()).or_default() += 1;
        self.last.clone_from(&notice.alert_id);
    }

    /// The summary's own id (its body's `alert_id` and its `Idempotency-Key`): the same on
    /// every retry, different for every summary.
    pub fn id(&self) -> String {
        format!("summary-{}-{}", self.first, self.count)
    }

    /// "N more alerts suppressed by the rate limit: kinds bot (5), ddos (2), first alert_id
    /// .., last .."
    pub fn line(&self) -> String {
        let kinds = self
            .kinds
            .iter()
            .map(|(k, n)| format!("{k} ({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        let noun = if self.count == 1 { "alert" } else { "alerts" };
        format!(
            "{} more {noun} suppressed by the rate limit: kinds {kinds}, first alert_id {}, last {}",
            self.count, self.first, self.last
        )
    }
}

/// The body of `notice` from `table` in `format`.
pub fn alert_body(format: NotifyFormat, table: &str, notice: &Notice) -> String {
    let line = alert_line(notice);
    let body = match format {
        NotifyFormat::Json => json!({
            "alert_id": notice.alert_id,
            "alert": notice.row,
            "table": table,
        }),
        NotifyFormat::Slack => json!({ "text": slack_escape(&line) }),
        NotifyFormat::Teams => {
            let severity = text_field(&notice.row, "severity");
            let mut facts = vec![json!({"name": "alert_id", "value": notice.alert_id})];
            if let Value::Object(columns) = &notice.row {
                for (name, value) in columns {
                    if name != "alert_id" {
                        facts.push(json!({"name": name, "value": plain(value)}));
                    }
                }
            }
            let subject = text_field(&notice.row, "subject");
            let title = match (severity.as_deref(), subject.as_deref()) {
                (Some(s), Some(on)) => format!("CAP {table}: {s} {} on {on}", notice.kind),
                _ => format!("CAP {table}: {}", notice.kind),
            };
            json!({
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "summary": line,
                "themeColor": theme(severity.as_deref()),
                "title": title,
                "text": line,
                "sections": [{"facts": facts}],
            })
        }
    };
    body.to_string()
}

/// The body of the summary `s` of alerts from `table` in `format`.
pub fn summary_body(format: NotifyFormat, table: &str, s: &Suppressed) -> String {
    let line = s.line();
    let body = match format {
        NotifyFormat::Json => json!({
            "alert_id": s.id(),
            "table": table,
            "suppressed": s.count,
            "kinds": s.kinds,
            "first_alert_id": s.first,
            "last_alert_id": s.last,
            "text": line,
        }),
        NotifyFormat::Slack => json!({ "text": slack_escape(&line) }),
        NotifyFormat::Teams => json!({
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": line,
            "themeColor": theme(None),
            "title": format!("CAP {table}: {} suppressed by the rate limit", s.count),
            "text": line,
            "sections": [{"facts": [
                {"name": "alert_id", "value": s.id()},
                {"name": "first_alert_id", "value": s.first},
                {"name": "last_alert_id", "value": s.last},
            ]}],
        }),
    };
    body.to_string()
}

/// One line on an alert, from whichever of its columns the row has (see the module docs).
pub fn alert_line(notice: &Notice) -> String {
    let row = &notice.row;
    let field = |name: &str| text_field(row, name);
    let mut line = String::new();
    if let Some(s) = field("severity") {
        line.push_str(&s);
        line.push(' ');
    }
    line.push_str(&notice.kind);
    line.push_str(" alert");
    if let Some(s) = field("subject") {
        line.push_str(" on ");
        line.push_str(&s);
    }
    if let (Some(from), Some(to)) = (field("window_start"), field("window_end")) {
        line.push_str(&format!(", {from} to {to}"));
    }
    if let (Some(o), Some(t)) = (field("observed"), field("threshold")) {
        line.push_str(&format!(": observed {o} vs threshold {t}"));
        if let Some(rule) = field("rule") {
            line.push_str(&format!(" ({rule})"));
        }
    }
    line.push_str("; alert_id ");
    line.push_str(&notice.alert_id);
    line
}

/// A column as text: strings as they are, numbers and the rest as JSON.
fn text_field(row: &Value, name: &str) -> Option<String> {
    row.get(name).filter(|v| !v.is_null()).map(plain)
}

fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Slack's text escapes: `&`, `<` and `>` (the rest of the text is shown as it is).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A card's colour: red for critical, amber otherwise.
fn theme(severity: Option<&str>) -> &'static str {
    match severity {
        Some("critical") => "D7263D",
        _ => "F2A900",
    }
}
