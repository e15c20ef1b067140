//! One webhook channel: a bounded queue, a token bucket and a thread that POSTs.
//!
//! ```text
//!  offer(notice) ──(room)──▶ queue (queue_len) ──token──▶ POST, retried ──▶ sent | failed
//!       └──(full)──▶ folded into the pending summary ──token──▶ POST "N more alerts ..."
//! ```
//!
//! `offer` only takes a mutex held for a push (the thread never holds it across HTTP), so
//! the caller never waits on the network. The thread takes one token per notification
//! (its retries included) from a bucket of `max_per_minute` tokens refilled evenly over a
//! minute; while the bucket is empty notifications wait in the queue, in order. A pending
//! summary goes out at the next token once the queue is empty, or once it has waited a
//! minute, so a flood that keeps the queue full still gets one summary a minute.
//!
//! Retries: connection errors, timeouts, 429 and 5xx are retried up to `retries` times,
//! after 0.5 s doubling up to 30 s, or after the 429's `Retry-After` seconds (at most five
//! minutes). Any other status below 200 or from 300 up (redirects are not followed: they
//! would carry the headers elsewhere) gives up at once. A notification given up on is
//! logged at ERROR with the url, the status or error and the alert id.
//!
//! End of the run ([`WebhookChannel::begin_close`]): the thread keeps delivering for at most
//! `drain_ms`, requests shortened to fit. Alerts still waiting when the bucket is empty are
//! folded into one last summary, sent at once, past the limit: at most one notification
//! more than `max_per_minute` allows, so that none is dropped without a trace. What the
//! drain cannot deliver in time is logged at ERROR and counted as failed.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cap_engine::config::{NotifyConfig, NotifyFormat};
use cap_engine::sink::SinkError;
use tracing::{debug, error, warn};
use ureq::http::{HeaderName, HeaderValue, Uri};

use super::payload::{alert_body, summary_body, Notice, Suppressed};
use super::NotifyMetrics;

/// First retry delay; each further retry waits twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest delay between two attempts without a `Retry-After`.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// A pending summary waits at most this long for the queue to empty.
const SUMMARY_EVERY: Duration = Duration::from_secs(60);
/// How long `finish` waits past the drain for a request that is still running.
const FINISH_GRACE: Duration = Duration::from_secs(1);
/// Response bytes kept for the logs.
const BODY_SNIPPET: u64 = 512;

/// What the thread and the writer share.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    queue: VecDeque<Notice>,
    capacity: usize,
    /// Alerts folded into the next summary, and since when it waits.
    pending: Option<(Suppressed, Instant)>,
    /// Set by `begin_close`: deliver until then, then stop.
    deadline: Option<Instant>,
    /// The thread has stopped.
    done: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(
        &self,
        st: MutexGuard<'a, State>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, State> {
        match timeout {
            None => self.wake.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(t) => {
                self.wake
                    .wait_timeout(st, t)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        }
    }
}

/// Folds `notice` into the pending summary.
fn fold(pending: &mut Option<(Suppressed, Instant)>, notice: &Notice) {
    match pending {
        Some((s, _)) => s.add(notice),
        None => *pending = Some((Suppressed::of(notice), Instant::now())),
    }
}

/// A webhook channel of one table (see the module docs).
pub struct WebhookChannel {
    shared: Arc<Shared>,
    drain: Duration,
    url: String,
    metrics: NotifyMetrics,
    thread: Option<JoinHandle<()>>,
}

impl WebhookChannel {
    /// Starts the channel's thread for `table`, posting to `cfg.url`.
    pub fn start(
        table: &str,
        cfg: &NotifyConfig,
        metrics: NotifyMetrics,
    ) -> Result<WebhookChannel, SinkError> {
        let err = |what: String| SinkError {
            table: table.to_owned(),
            what,
            cause: None,
        };
        let url = redacted(&cfg.url);
        let uri = Uri::try_from(cfg.url.trim())
            .map_err(|e| err(format!("sinks.notify: url `{url}` is not a valid URL: {e}")))?;
        let mut headers = Vec::with_capacity(cfg.headers.len());
        for (name, value) in &cfg.headers {
            let n = HeaderName::try_from(name.as_str())
                .map_err(|e| err(format!("sinks.notify.headers.{name}: {e}")))?;
            let mut v = HeaderValue::try_from(value.as_str())
                .map_err(|e| err(format!("sinks.notify.headers.{name}: {e}")))?;
            v.set_sensitive(true);
            headers.push((n, v));
        }
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .user_agent(format!("cap-notify/{}", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                capacity: cfg.queue_len.max(1),
                pending: None,
                deadline: None,
                done: false,
            }),
            wake: Condvar::new(),
        });
        let poster = Poster {
            shared: Arc::clone(&shared),
            table: table.to_owned(),
            url: url.clone(),
            uri,
            headers,
            agent,
            format: cfg.format,
            retries: cfg.retries,
            timeout,
            per_minute: cfg.max_per_minute.max(1),
            metrics: metrics.clone(),
        };
        // The thread logs through the subscriber of the thread that opened the channel.
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let thread = std::thread::Builder::new()
            .name(format!("cap-notify-{table}"))
            .spawn(move || tracing::dispatcher::with_default(&dispatch, || poster.run()))
            .map_err(|e| SinkError {
                table: table.to_owned(),
                what: format!("cannot start the notification thread for {url}"),
                cause: Some(e),
            })?;
        tracing::info!(table, url = %url, format = ?cfg.format, max_per_minute = cfg.max_per_minute, "notification channel ready");
        Ok(WebhookChannel {
            shared,
            drain: Duration::from_millis(cfg.drain_ms),
            url,
            metrics,
            thread: Some(thread),
        })
    }

    /// Hands `notice` to the thread without waiting: queued, or folded into the pending
    /// summary when the queue is full.
    pub fn offer(&self, notice: Notice) {
        let mut st = self.shared.lock();
        if st.queue.len() < st.capacity {
            st.queue.push_back(notice);
        } else {
            if st.pending.is_none() {
                warn!(url = %self.url, capacity = st.capacity, "notification queue full: alerts are folded into a summary until it drains");
            }
            fold(&mut st.pending, &notice);
            self.metrics.suppressed.add(1);
        }
        drop(st);
        self.shared.wake.notify_all();
    }

    /// Starts the end-of-run drain: the thread delivers for at most `drain_ms` more.
    pub fn begin_close(&self) {
        let mut st = self.shared.lock();
        if st.deadline.is_none() {
            st.deadline = Some(Instant::now() + self.drain);
        }
        drop(st);
        self.shared.wake.notify_all();
    }

    /// Waits for the drain to end (at most `drain_ms` after [`Self::begin_close`] and a
    /// second's grace for a request still running, which is then left to time out alone).
    pub fn finish(&mut self) {
        self.begin_close();
        let mut st = self.shared.lock();
        let give_up = st.deadline.map(|d| d + FINISH_GRACE);
        while !st.done {
            let left = give_up.map(|g| g.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) {
                warn!(url = %self.url, "notification channel still in a request after its drain; not waiting for it");
                return;
            }
            st = self.shared.wait(st, left);
        }
        drop(st);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WebhookChannel {
    /// A channel dropped without [`WebhookChannel::finish`] stops without a drain.
    fn drop(&mut self) {
        if self.thread.is_some() {
            let mut st = self.shared.lock();
            st.deadline.get_or_insert_with(Instant::now);
            drop(st);
            self.shared.wake.notify_all();
        }
    }
}

/// What the thread sends next.
enum Job {
    Alert(Notice),
    Summary(Suppressed),
}

impl Job {
    fn id(&self) -> String {
        match self {
            Job::Alert(n) => n.alert_id.clone(),
            Job::Summary(s) => s.id(),
        }
    }
}

/// How one request ended.
enum Outcome {
    Delivered(u16),
    /// Worth another try, after `retry_after` when the server said so.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    Permanent(String),
}

/// Evenly refilled tokens: `per_minute` at most, one taken per notification.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_sec: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `per_minute` tokens at `now`.
    pub(crate) fn new(per_minute: u32, now: Instant) -> TokenBucket {
        let capacity = f64::from(per_minute.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            per_sec: capacity / 60.0,
            last: now,
        }
    }

    /// Takes a token at `now`, or says how long until the next one.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.per_sec;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }
}

/// The channel's thread.
struct Poster {
    shared: Arc<Shared>,
    table: String,
    url: String,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    agent: ureq::Agent,
    format: NotifyFormat,
    retries: u32,
    timeout: Duration,
    per_minute: u32,
    metrics: NotifyMetrics,
}

/// Marks the thread done however it ends (a panic included), so `finish` never waits for
/// a thread that is gone.
struct DoneGuard(Arc<Shared>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.0.lock().done = true;
        self.0.wake.notify_all();
    }
}

impl Poster {
    fn run(self) {
        let _done = DoneGuard(Arc::clone(&self.shared));
        let mut bucket = TokenBucket::new(self.per_minute, Instant::now());
        while let Some(job) = self.next_job(&mut bucket) {
            self.deliver(job);
        }
        // The drain is over: whatever is left is lost, and said so.
        let mut st = self.shared.lock();
        let left: Vec<String> = st.queue.drain(..).map(|n| n.alert_id).collect();
        let summary = st.pending.take().map(|(s, _)| s);
        drop(st);
        let lost = left.len() as u64 + u64::from(summary.is_some());
        if lost > 0 {
            self.metrics.failed.add(lost);
            error!(
                table = %self.table,
                url = %self.url,
                undelivered = left.len(),
                first_alert_ids = ?left.iter().take(10).collect::<Vec<_>>(),
                summary = summary.as_ref().map(|s| s.line()),
                "the end-of-run drain ended before these notifications were delivered"
            );
        }
    }

    /// The next notification to send, once the bucket allows; `None` when the channel is
    /// closing and has nothing left, or its drain is over.
    fn next_job(&self, bucket: &mut TokenBucket) -> Option<Job> {
        let mut st = self.shared.lock();
        loop {
            let now = Instant::now();
            if st.queue.is_empty() && st.pending.is_none() {
                if st.deadline.is_some() {
                    return None;
                }
                st = self.shared.wait(st, None);
                continue;
            }
            if st.deadline.is_some_and(|d| now >= d) {
                return None;
            }
            match bucket.take(now) {
                Ok(()) => {
                    let summary_due = st.pending.as_ref().is_some_and(|(_, since)| {
                        st.queue.is_empty() || now - *since >= SUMMARY_EVERY
                    });
                    if summary_due {
                        return st.pending.take().map(|(s, _)| Job::Summary(s));
                    }
                    return st.queue.pop_front().map(Job::Alert);
                }
                Err(wait) if st.deadline.is_some() => {
                    // Closing with an empty bucket: one last summary of all that waits.
                    let waiting: Vec<Notice> = st.queue.drain(..).collect();
                    for n in &waiting {
                        fold(&mut st.pending, n);
                    }
                    self.metrics.suppressed.add(waiting.len() as u64);
                    debug!(url = %self.url, folded = waiting.len(), next_token_ms = wait.as_millis() as u64, "drain: the rate limit leaves no token; sending one summary");
                    return st.pending.take().map(|(s, _)| Job::Summary(s));
                }
                Err(wait) => st = self.shared.wait(st, Some(wait)),
            }
        }
    }

    /// Sends `job`, retrying as the module docs say.
    fn deliver(&self, job: Job) {
        let id = job.id();
        let body = match &job {
            Job::Alert(n) => alert_body(self.format, &self.table, n),
            Job::Summary(s) => summary_body(self.format, &self.table, s),
        };
        let mut attempt: u32 = 0;
        loop {
            let Some(timeout) = self.request_timeout() else {
                return self.lost(&id, attempt, "the end-of-run drain is over");
            };
            match self.post(&body, &id, timeout) {
                Outcome::Delivered(status) => {
                    self.metrics.sent.add(1);
                    debug!(table = %self.table, url = %self.url, alert_id = %id, status, attempt, "notification delivered");
                    return;
                }
                Outcome::Permanent(reason) => {
                    self.metrics.failed.add(1);
                    error!(table = %self.table, url = %self.url, alert_id = %id, status = %reason, "webhook refused the notification; giving up on it (not retried)");
                    return;
                }
                Outcome::Transient {
                    reason,
                    retry_after,
                } => {
                    if attempt >= self.retries {
                        return self.lost(&id, attempt, &reason);
                    }
                    let delay = retry_after.unwrap_or_else(|| backoff(attempt));
                    attempt += 1;
                    self.metrics.retries.add(1);
                    warn!(table = %self.table, url = %self.url, alert_id = %id, status = %reason, attempt, retries = self.retries, delay_ms = delay.as_millis() as u64, "notification not delivered; retrying");
                    if !self.sleep(delay) {
                        return self.lost(
                            &id,
                            attempt,
                            "the end-of-run drain ends before the retry",
                        );
                    }
                }
            }
        }
    }

    fn lost(&self, id: &str, retried: u32, reason: &str) {
        self.metrics.failed.add(1);
        error!(table = %self.table, url = %self.url, alert_id = %id, status = %reason, retried, "notification not delivered; giving up on it");
    }

    /// The timeout of the next request: the configured one, cut to what is left of the
    /// drain; `None` when the drain is over.
    fn request_timeout(&self) -> Option<Duration> {
        match self.shared.lock().deadline {
            None => Some(self.timeout),
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(self.timeout))
            }
        }
    }

    /// Waits `d`, or says `false` at once when the drain would end first.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        let mut st = self.shared.lock();
        loop {
            if st.deadline.is_some_and(|deadline| until > deadline) {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            st = self.shared.wait(st, Some(until - now));
        }
    }

    fn post(&self, body: &str, id: &str, timeout: Duration) -> Outcome {
        let mut req = self
            .agent
            .post(self.uri.clone())
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", id);
        for (name, value) in &self.headers {
            req = req.header(name.clone(), value.clone());
        }
        let result = req
            .config()
            .timeout_global(Some(timeout))
            .build()
            .send(body);
        match result {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                // Reading the body lets the connection be reused; its start goes to the logs.
                let text = resp
                    .body_mut()
                    .with_config()
                    .limit(BODY_SNIPPET)
                    .read_to_string()
                    .unwrap_or_default();
                let reason = || {
                    let text = text.trim();
                    if text.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        format!("HTTP {status}: {text}")
                    }
                };
                match status {
                    200..=299 => Outcome::Delivered(status),
                    429 => Outcome::Transient {
                        reason: reason(),
                        retry_after,
                    },
                    500..=599 => Outcome::Transient {
                        reason: reason(),
                        retry_after: None,
                    },
                    _ => Outcome::Permanent(reason()),
                }
            }
            Err(e) => match e {
                ureq::Error::BadUri(_)
                | ureq::Error::Http(_)
                | ureq::Error::InvalidProxyUrl
                | ureq::Error::RequireHttpsOnly(_)
                | ureq::Error::Tls(_)
                | ureq::Error::Rustls(_)
                | ureq::Error::Pem(_) => Outcome::Permanent(e.to_string()),
                other => Outcome::Transient {
                    reason: other.to_string(),
                    retry_after: None,
                },
            },
        }
    }
}

/// The delay before retry `attempt` (0-based): 0.5 s doubling, at most 30 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

/// The url as logs show it: no user info, no query, and every path segment longer than 12
/// characters cut to its first 4 (webhook urls carry their secret in the path or the query).
pub(crate) fn redacted(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit('@').next().unwrap_or("");
    let path = path
        .split('/')
        .map(|seg| {
            if seg.chars().count() > 12 {
                format!("{}…", seg.chars().take(4).collect::<String>())
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/");
    format!("{scheme}://{host}/{path}")
}

/// The channel's name in metrics: the url's host (and port).
pub(crate) fn host(url: &str) -> String {
    let rest = url.trim().split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit('@').next().unwrap_or("").to_owned()
}
