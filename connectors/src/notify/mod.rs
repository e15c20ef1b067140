//! Notifications: the rows of a table (by default `alerts`) are also delivered to the
//! channels `[[sinks.notify]]` configures; today those are webhooks.
//!
//! ```text
//!  Sink(alerts) on its writer worker
//!    └─ NotifyingWriter::write_epoch(e, changes sorted by key)
//!         ├─ the table's own writer (file, Kafka, ...) writes e first
//!         └─ per channel, per change: new key, or its severity rose?
//!              └─ yes: WebhookChannel::offer ──▶ bounded queue ──▶ channel thread
//!                          (never waits)            (full: folded     token bucket, POST
//!                                                    into a summary)  json | slack | teams,
//!                                                                     retries with backoff
//! ```
//!
//! When a channel notifies: the first time a key's row passes the channel's
//! `min_severity`, and again only when its `severity` rises above the one last notified.
//! An alert's `observed` (and its window) grows as events arrive; that is not news to
//! whoever was already told, and re-sending on every change would flood the channel, so
//! those changes reach the table and not the channel. A key that leaves the table (a
//! tombstone) is not notified, and one that comes back is notified only if its severity
//! is above the one already sent. Rows without a known `severity` rank below `warning`.
//!
//! Guarantees: a channel hears of a row only after the table's own writer wrote its epoch,
//! so the alert is in the table when the receiver looks. Delivery is at least once, keyed
//! by `alert_id`: every body carries it, every request has `Idempotency-Key: <alert_id>`,
//! and a retry repeats both, so a receiver deduplicates by it. The worker thread never
//! waits on the network (it pushes into a bounded queue; a background thread per channel
//! posts). Alerts over the rate limit wait in the queue; when it is full they are folded
//! into one summary notification, sent when the rate limit allows, and counted.
//!
//! Non-guarantees: a notification given up on (a 4xx other than 429, retries exhausted, the
//! end-of-run drain over) is lost, logged at ERROR and counted in
//! `cap_notify_failed_total`. Suppressed alerts reach the receiver only as a count, their
//! kinds and their first and last ids (the table has them all). Which keys were notified
//! is kept in memory, so a rerun notifies again (the receiver deduplicates). Channels are
//! meant for small tables: each notified table's rows are parsed once per change.
//!
//! Metrics, per channel (the url's host) and table: `cap_notify_sent_total`,
//! `cap_notify_retries_total`, `cap_notify_failed_total`, `cap_notify_suppressed_total`.

use std::collections::HashMap;

use cap_engine::config::{NotifyConfig, NotifyKind, ALERT_SEVERITIES};
use cap_engine::metrics::{Counter, Registry};
use cap_engine::sink::{Change, SinkError, TableWriter};
use serde_json::Value;

pub mod payload;
mod webhook;

#[cfg(test)]
mod tests;

pub use payload::{Notice, Suppressed};
pub use webhook::WebhookChannel;

/// Counters of one notification channel.
#[derive(Clone)]
pub struct NotifyMetrics {
    /// Notifications delivered (a 2xx answer), alerts and summaries alike.
    pub sent: Counter,
    /// Attempts that failed and were tried again.
    pub retries: Counter,
    /// Notifications given up on.
    pub failed: Counter,
    /// Alerts folded into a summary instead of sent on their own.
    pub suppressed: Counter,
}

impl NotifyMetrics {
    /// Registers the series of `channel` (the url's host) for `table`. Two channels to the
    /// same host for the same table share their series.
    pub fn new(registry: &Registry, channel: &str, table: &str) -> NotifyMetrics {
        let labels = || vec![("channel", channel.to_owned()), ("table", table.to_owned())];
        NotifyMetrics {
            sent: registry.counter(
                "cap_notify_sent_total",
                "Notifications delivered (alerts and rate-limit summaries).",
                labels(),
            ),
            retries: registry.counter(
                "cap_notify_retries_total",
                "Notification attempts that failed and were retried.",
                labels(),
            ),
            failed: registry.counter(
                "cap_notify_failed_total",
                "Notifications given up on (refused, retries exhausted, or the end-of-run drain over).",
                labels(),
            ),
            suppressed: registry.counter(
                "cap_notify_suppressed_total",
                "Alerts folded into a rate-limit summary instead of sent on their own.",
                labels(),
            ),
        }
    }
}

/// Which changes of a table a channel notifies (see the module docs): remembers, per key,
/// the highest severity notified.
#[derive(Debug, Default)]
pub struct NotifyFilter {
    /// Rank in [`ALERT_SEVERITIES`] a row needs; none: every row.
    min: Option<usize>,
    /// Per key, the rank last notified (`None`: a row without a known severity).
    notified: HashMap<String, Option<usize>>,
}

impl NotifyFilter {
    /// A filter passing rows at or above `min_severity` (one of [`ALERT_SEVERITIES`]; an
    /// unknown one passes nothing below the highest).
    pub fn new(min_severity: Option<&str>) -> NotifyFilter {
        NotifyFilter {
            min: min_severity.map(|m| rank(Some(m)).unwrap_or(ALERT_SEVERITIES.len())),
            notified: HashMap::new(),
        }
    }

    /// Whether `key`, whose row now has `severity`, is to be notified; remembers it if so.
    pub fn admit(&mut self, key: &str, severity: Option<&str>) -> bool {
        let r = rank(severity);
        if self.min.is_some_and(|min| r.is_none_or(|r| r < min)) {
            return false;
        }
        match self.notified.get_mut(key) {
            Some(last) if r <= *last => false,
            Some(last) => {
                *last = r;
                true
            }
            None => {
                self.notified.insert(key.to_owned(), r);
                true
            }
        }
    }
}

/// A severity's rank in [`ALERT_SEVERITIES`] (higher is more severe).
fn rank(severity: Option<&str>) -> Option<usize> {
    severity.and_then(|s| ALERT_SEVERITIES.iter().position(|k| *k == s))
}

/// One channel of a [`NotifyingWriter`].
struct Subscription {
    filter: NotifyFilter,
    channel: WebhookChannel,
}

/// A table writer that also notifies (see the module docs): wraps the table's own writer.
pub struct NotifyingWriter {
    table: String,
    inner: Box<dyn TableWriter>,
    channels: Vec<Subscription>,
}

impl NotifyingWriter {
    /// Wraps `inner`, the writer of `table`, with the channels `notify` (each starts its
    /// thread now). Metrics go to `registry`.
    pub fn open(
        table: &str,
        inner: Box<dyn TableWriter>,
        notify: &[NotifyConfig],
        registry: &Registry,
    ) -> Result<NotifyingWriter, SinkError> {
        let mut channels = Vec::with_capacity(notify.len());
        for cfg in notify {
            match cfg.kind {
                NotifyKind::Webhook => {
                    let metrics = NotifyMetrics::new(registry, &webhook::host(&cfg.url), table);
                    channels.push(Subscription {
                        filter: NotifyFilter::new(cfg.min_severity.as_deref()),
                        channel: WebhookChannel::start(table, cfg, metrics)?,
                    });
                }
            }
        }
        Ok(NotifyingWriter {
            table: table.to_owned(),
            inner,
            channels,
        })
    }
}

impl TableWriter for NotifyingWriter {
    fn wants_rows(&self) -> bool {
        true // the channels read rows even when the table's own writer does not
    }

    fn wants_packed(&self) -> bool {
        self.inner.wants_packed()
    }

    /// The table's writer resumes; the channels do not: a replayed epoch notifies again
    /// (notifications are at least once, keyed by the row's key).
    fn begin(&mut self, resume: bool) -> Result<(), SinkError> {
        self.inner.begin(resume)
    }

    fn write_epoch(&mut self, epoch: u64, changes: &[Change]) -> Result<(), SinkError> {
        // First the table: a receiver told of an alert finds it there.
        self.inner.write_epoch(epoch, changes)?;
        for change in changes {
            let Some(text) = &change.row else { continue };
            let row: Value = match serde_json::from_str(text) {
                Ok(row) => row,
                Err(e) => {
                    tracing::error!(table = %self.table, epoch, key = %change.key, error = %e, "a row is not JSON; it is not notified");
                    continue;
                }
            };
            let severity = row.get("severity").and_then(Value::as_str);
            let mut notice: Option<Notice> = None;
            for sub in &mut self.channels {
                if sub.filter.admit(&change.key, severity) {
                    let n = notice.get_or_insert_with(|| self::notice(&self.table, change, &row));
                    sub.channel.offer(n.clone());
                }
            }
        }
        Ok(())
    }

    fn unpublished(&mut self) -> Option<u64> {
        self.inner.unpublished()
    }

    fn close(&mut self) -> Result<(), SinkError> {
        let closed = self.inner.close();
        // Every channel drains at once; then each is waited for.
        for sub in &self.channels {
            sub.channel.begin_close();
        }
        for sub in &mut self.channels {
            sub.channel.finish();
        }
        closed
    }
}

/// The notice of `change`, whose row is `row`.
fn notice(table: &str, change: &Change, row: &Value) -> Notice {
    let text = |name: &str| row.get(name).and_then(Value::as_str).map(str::to_owned);
    Notice {
        alert_id: text("alert_id").unwrap_or_else(|| change.key.clone()),
        kind: text("kind").unwrap_or_else(|| table.to_owned()),
        row: row.clone(),
    }
}
