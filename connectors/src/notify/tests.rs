//! Notification channels against a real HTTP server on loopback (written here, on
//! `std::net`): it records every request and answers from a script of statuses.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cap_engine::config::{NotifyConfig, NotifyFormat, SinkConfig, SinksConfig};
use cap_engine::metrics::Registry;
use cap_engine::sink::{Change, SinkFactory, TableWriter};
use serde_json::Value;

use super::payload::{alert_body, alert_line, summary_body, Notice, Suppressed};
use super::webhook::{backoff, redacted, TokenBucket};
use super::{NotifyFilter, NotifyingWriter};
use crate::sinks::{FileAndNullSinks, NullSink};
use crate::Connectors;

/// Long enough for anything these tests wait for; reached only when a test fails.
const PATIENCE: Duration = Duration::from_secs(60);

/// How the server answers one request.
#[derive(Clone, Debug)]
enum Answer {
    Status(u16),
    /// A status with one extra header.
    StatusWith(u16, &'static str, &'static str),
    /// Read the request, then say nothing until the test releases the server.
    Silent,
}

/// One request as the server read it.
#[derive(Clone, Debug)]
struct Request {
    at: Instant,
    path: String,
    /// Header names lower-cased.
    headers: BTreeMap<String, String>,
    body: String,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    arrivals: Receiver<()>,
    seen: usize,
    /// Set once the server has answered any request.
    answered: Arc<AtomicBool>,
    release: Mutex<Option<Sender<()>>>,
}

impl Server {
    /// Serves on a free loopback port: the i-th request gets `script[i]`, later ones 200.
    fn start(script: Vec<Answer>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let answered = Arc::new(AtomicBool::new(false));
        let (arrived, arrivals) = channel();
        let (release, released) = channel::<()>();
        let released = Arc::new(Mutex::new(released));
        let next = Arc::new(AtomicUsize::new(0));
        let (log, done) = (Arc::clone(&requests), Arc::clone(&answered));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let answer = script
                    .get(next.fetch_add(1, Ordering::SeqCst))
                    .cloned()
                    .unwrap_or(Answer::Status(200));
                let (log, done, arrived, released) = (
                    Arc::clone(&log),
                    Arc::clone(&done),
                    arrived.clone(),
                    Arc::clone(&released),
                );
                std::thread::spawn(move || {
                    serve_one(stream, answer, &log, &done, &arrived, &released)
                });
            }
        });
        Server {
            addr,
            requests,
            arrivals,
            seen: 0,
            answered,
            release: Mutex::new(Some(release)),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits (at most [`PATIENCE`]) until `n` requests in all have arrived.
    fn wait_for(&mut self, n: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.seen < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.arrivals.recv_timeout(left) {
                Ok(()) => self.seen += 1,
                Err(_) => panic!("{} requests after {PATIENCE:?}, expected {n}", self.seen),
            }
        }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().expect("requests").clone()
    }

    /// Lets silent answers go on (with a 200).
    fn release(&self) {
        self.release.lock().expect("release").take();
    }
}

fn serve_one(
    stream: TcpStream,
    answer: Answer,
    log: &Mutex<Vec<Request>>,
    answered: &AtomicBool,
    arrived: &Sender<()>,
    released: &Mutex<Receiver<()>>,
) {
    let mut reader = BufReader::new(&stream);
    let mut first = String::new();
    if reader.read_line(&mut first).unwrap_or(0) == 0 {
        return; // a connection opened and closed without a request
    }
    let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    log.lock().expect("log").push(Request {
        at: Instant::now(),
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    let _ = arrived.send(());
    let (status, extra) = match answer {
        Answer::Status(s) => (s, String::new()),
        Answer::StatusWith(s, k, v) => (s, format!("{k}: {v}\r\n")),
        Answer::Silent => {
            // Blocks until the test drops the sender.
            let _ = released.lock().expect("released").recv();
            (200, String::new())
        }
    };
    answered.store(true, Ordering::SeqCst);
    let mut stream = &stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\n{extra}Content-Length: 2\r\nConnection: close\r\n\r\nok"
    );
}

fn channel_to(url: &str, f: impl FnOnce(&mut NotifyConfig)) -> NotifyConfig {
    let mut cfg = NotifyConfig {
        url: url.to_owned(),
        ..NotifyConfig::default()
    };
    f(&mut cfg);
    cfg
}

fn alert(id: &str, kind: &str, severity: &str, observed: u64) -> Change {
    let row = serde_json::json!({
        "alert_id": id,
        "kind": kind,
        "subject": "user:42",
        "window_start": "2019-11-01T13:05:00Z",
        "window_end": "2019-11-01T13:33:00Z",
        "observed": observed,
        "threshold": 300,
        "severity": severity,
        "rule": "user_rate",
    });
    Change {
        key: format!("{{\"alert_id\":\"{id}\"}}"),
        row: Some(row.to_string()),
        packed: None,
    }
}

fn gone(id: &str) -> Change {
    Change {
        key: format!("{{\"alert_id\":\"{id}\"}}"),
        row: None,
        packed: None,
    }
}

fn writer(notify: &[NotifyConfig], registry: &Registry) -> NotifyingWriter {
    NotifyingWriter::open("alerts", Box::new(NullSink), notify, registry).expect("open")
}

fn notice(id: &str) -> Notice {
    let change = alert(id, "bot", "critical", 812);
    Notice {
        alert_id: id.to_owned(),
        kind: "bot".into(),
        row: serde_json::from_str(change.row.as_deref().unwrap_or("")).expect("row"),
    }
}

/// Log lines of the current thread (and of the threads it starts), as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

#[test]
fn notify_payloads_parse_as_json_and_carry_the_alert_id() {
    let n = notice("00000000000000a1");
    let json: Value =
        serde_json::from_str(&alert_body(NotifyFormat::Json, "alerts", &n)).expect("json body");
    assert_eq!(json["alert_id"], "00000000000000a1");
    assert_eq!(json["table"], "alerts");
    assert_eq!(json["alert"], n.row);
    let slack: Value =
        serde_json::from_str(&alert_body(NotifyFormat::Slack, "alerts", &n)).expect("slack body");
    let text = slack["text"].as_str().expect("text");
    assert_eq!(
        text,
        "critical bot alert on user:42, 2019-11-01T13:05:00Z to 2019-11-01T13:33:00Z: \
         observed 812 vs threshold 300 (user_rate); alert_id 00000000000000a1"
    );
    assert_eq!(text, alert_line(&n));
    let teams: Value =
        serde_json::from_str(&alert_body(NotifyFormat::Teams, "alerts", &n)).expect("teams body");
    assert_eq!(teams["@type"], "MessageCard");
    assert_eq!(teams["@context"], "https://schema.org/extensions");
    assert_eq!(teams["summary"], text);
    assert_eq!(teams["title"], "CAP alerts: critical bot on user:42");
    assert!(teams["text"]
        .as_str()
        .is_some_and(|t| t.contains("00000000000000a1")));
    assert_eq!(
        teams["sections"][0]["facts"][0],
        serde_json::json!({"name": "alert_id", "value": "00000000000000a1"})
    );

    let mut s = Suppressed::of(&n);
    s.add(&notice("00000000000000a2"));
    let mut ddos = notice("00000000000000a3");
    ddos.kind = "ddos".into();
    s.add(&ddos);
    assert_eq!(
        s.line(),
        "3 more alerts suppressed by the rate limit: kinds bot (2), ddos (1), \
         first alert_id 00000000000000a1, last 00000000000000a3"
    );
    for format in [NotifyFormat::Json, NotifyFormat::Slack, NotifyFormat::Teams] {
        let body: Value =
            serde_json::from_str(&summary_body(format, "alerts", &s)).expect("summary body");
        assert!(body.to_string().contains("00000000000000a1"), "{body}");
    }
    let json: Value =
        serde_json::from_str(&summary_body(NotifyFormat::Json, "alerts", &s)).expect("json");
    assert_eq!(json["alert_id"], "summary-00000000000000a1-3");
    assert_eq!(json["suppressed"], 3);
    assert_eq!(json["kinds"], serde_json::json!({"bot": 2, "ddos": 1}));
}

#[test]
fn notify_webhook_posts_every_format_with_the_idempotency_key_and_headers() {
    let mut server = Server::start(vec![]);
    let registry = Registry::new("test");
    let auth = |f: NotifyFormat, path: &str| {
        channel_to(&server.url(path), |c| {
            c.format = f;
            c.headers
                .insert("Authorization".into(), "Bearer s3cret".into());
        })
    };
    let mut w = writer(
        &[
            auth(NotifyFormat::Json, "/json"),
            auth(NotifyFormat::Slack, "/slack"),
            auth(NotifyFormat::Teams, "/teams"),
        ],
        &registry,
    );
    w.write_epoch(0, &[alert("00000000000000b1", "ddos", "warning", 120)])
        .expect("write");
    server.wait_for(3);
    w.close().expect("close");
    let mut by_path: BTreeMap<String, Request> = server
        .requests()
        .into_iter()
        .map(|r| (r.path.clone(), r))
        .collect();
    for path in ["/json", "/slack", "/teams"] {
        let r = by_path.remove(path).expect(path);
        assert_eq!(r.headers["idempotency-key"], "00000000000000b1", "{path}");
        assert_eq!(r.headers["content-type"], "application/json", "{path}");
        assert_eq!(r.headers["authorization"], "Bearer s3cret", "{path}");
        assert!(r.json().to_string().contains("00000000000000b1"), "{path}");
    }
    assert_eq!(registry.counter_total("cap_notify_sent_total"), 3);
}

#[test]
fn notify_server_errors_are_retried_until_delivered() {
    let mut server = Server::start(vec![Answer::Status(500), Answer::Status(503)]);
    let registry = Registry::new("test");
    let mut w = writer(&[channel_to(&server.url("/hook"), |_| ())], &registry);
    w.write_epoch(3, &[alert("00000000000000c1", "bot", "critical", 900)])
        .expect("write");
    server.wait_for(3);
    w.close().expect("close");
    let requests = server.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    for r in &requests {
        assert_eq!(r.json()["alert_id"], "00000000000000c1");
        assert_eq!(r.headers["idempotency-key"], "00000000000000c1");
    }
    let last = requests.last().expect("a request").json();
    assert_eq!(last["alert"]["observed"], 900);
    assert_eq!(registry.counter_total("cap_notify_retries_total"), 2);
    assert_eq!(registry.counter_total("cap_notify_sent_total"), 1);
    assert_eq!(registry.counter_total("cap_notify_failed_total"), 0);
}

#[test]
fn notify_too_many_requests_waits_out_retry_after() {
    let mut server = Server::start(vec![Answer::StatusWith(429, "Retry-After", "1")]);
    let registry = Registry::new("test");
    let mut w = writer(&[channel_to(&server.url("/hook"), |_| ())], &registry);
    w.write_epoch(0, &[alert("00000000000000d1", "bot", "warning", 310)])
        .expect("write");
    server.wait_for(2);
    w.close().expect("close");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    // A lower bound on the delay (the server asked for a second), not a speed claim.
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    assert_eq!(registry.counter_total("cap_notify_retries_total"), 1);
    assert_eq!(registry.counter_total("cap_notify_sent_total"), 1);
}

/// Individual alerts and summaries the server received: (alert ids, suppressed counts).
fn individual_and_summaries(requests: &[Request]) -> (Vec<String>, Vec<u64>) {
    let (mut alerts, mut summaries) = (Vec::new(), Vec::new());
    for r in requests {
        let body = r.json();
        match body["suppressed"].as_u64() {
            Some(n) => summaries.push(n),
            None => alerts.push(body["alert_id"].as_str().unwrap_or("").to_owned()),
        }
    }
    (alerts, summaries)
}

#[test]
fn notify_rate_limit_sends_the_rest_as_one_summary() {
    let mut server = Server::start(vec![]);
    let registry = Registry::new("test");
    let mut w = writer(
        &[channel_to(&server.url("/hook"), |c| {
            c.max_per_minute = 3;
            c.drain_ms = 5000;
        })],
        &registry,
    );
    let changes: Vec<Change> = (0..10)
        .map(|i| {
            alert(
                &format!("00000000000000e{i}"),
                ["bot", "ddos"][i % 2],
                "warning",
                310,
            )
        })
        .collect();
    w.write_epoch(0, &changes).expect("write");
    // Closing at once: the drain sends what the bucket allows, then the one summary.
    w.close().expect("close");
    server.wait_for(4);
    let requests = server.requests();
    let (alerts, summaries) = individual_and_summaries(&requests);
    assert_eq!(
        alerts,
        ["00000000000000e0", "00000000000000e1", "00000000000000e2"]
    );
    assert_eq!(summaries, [7], "{requests:?}");
    let summary = requests.last().expect("summary").json();
    assert_eq!(summary["first_alert_id"], "00000000000000e3");
    assert_eq!(summary["last_alert_id"], "00000000000000e9");
    assert_eq!(summary["kinds"], serde_json::json!({"bot": 3, "ddos": 4}));
    assert!(summary["text"]
        .as_str()
        .is_some_and(|t| t.starts_with("7 more alerts suppressed by the rate limit")));
    assert_eq!(registry.counter_total("cap_notify_suppressed_total"), 7);
    assert_eq!(registry.counter_total("cap_notify_sent_total"), 4);
}

#[test]
fn notify_client_errors_give_up_at_once_and_say_so() {
    let (logs, _guard) = Logs::capture();
    let mut server = Server::start(vec![Answer::Status(400)]);
    let registry = Registry::new("test");
    let mut w = writer(&[channel_to(&server.url("/hook"), |_| ())], &registry);
    w.write_epoch(
        0,
        &[
            alert("00000000000000f1", "bot", "warning", 310),
            alert("00000000000000f2", "bot", "warning", 310),
        ],
    )
    .expect("write");
    server.wait_for(2);
    w.close().expect("close");
    let ids: Vec<Value> = server
        .requests()
        .iter()
        .map(|r| r.json()["alert_id"].clone())
        .collect();
    // One attempt each: the refused one is not retried.
    assert_eq!(ids, ["00000000000000f1", "00000000000000f2"]);
    assert_eq!(registry.counter_total("cap_notify_failed_total"), 1);
    assert_eq!(registry.counter_total("cap_notify_retries_total"), 0);
    assert_eq!(registry.counter_total("cap_notify_sent_total"), 1);
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("ERROR") && l.contains("00000000000000f1"))
        .unwrap_or_else(|| panic!("no ERROR naming the alert:\n{text}"));
    assert!(line.contains(&server.url("/hook")), "{line}");
    assert!(line.contains("HTTP 400"), "{line}");
}

#[test]
fn notify_write_epoch_does_not_wait_for_a_silent_server() {
    let mut server = Server::start(vec![Answer::Silent]);
    let registry = Registry::new("test");
    let mut w = writer(
        &[channel_to(&server.url("/hook"), |c| {
            c.timeout_ms = 120_000;
            c.queue_len = 2;
        })],
        &registry,
    );
    w.write_epoch(0, &[alert("0000000000000101", "bot", "warning", 310)])
        .expect("write");
    // The channel's thread is now inside a request the server does not answer.
    server.wait_for(1);
    // A watchdog, so that a writer that does wait cannot hang the test forever.
    let stop = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (stop, release) = (
            Arc::clone(&stop),
            server.release.lock().expect("release").clone(),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + PATIENCE;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::park_timeout(Duration::from_millis(50));
            }
            drop(release);
        })
    };
    let more: Vec<Change> = (2..30)
        .map(|i| alert(&format!("0000000000000{i:03}"), "bot", "warning", 310))
        .collect();
    w.write_epoch(1, &more).expect("write");
    w.write_epoch(2, &[alert("0000000000000101", "bot", "critical", 700)])
        .expect("write");
    // Both epochs were handed over while the request was still unanswered.
    assert!(
        !server.answered.load(Ordering::SeqCst),
        "write_epoch returned only after the server answered"
    );
    stop.store(true, Ordering::SeqCst);
    watchdog.thread().unpark();
    let _ = watchdog.join();
    server.release();
    w.close().expect("close");
    // Nothing is lost from the count: delivered alone or counted in a summary.
    let (alerts, summaries) = individual_and_summaries(&server.requests());
    let suppressed: u64 = summaries.iter().sum();
    assert_eq!(
        alerts.len() as u64 + suppressed,
        30,
        "{alerts:?} {summaries:?}"
    );
    assert_eq!(
        registry.counter_total("cap_notify_suppressed_total"),
        suppressed
    );
    assert!(suppressed > 0);
}

#[test]
fn notify_filter_admits_new_keys_and_severity_rises_only() {
    let mut all = NotifyFilter::new(None);
    let mut critical = NotifyFilter::new(Some("critical"));
    let steps = [
        ("a", Some("warning"), true, false),
        ("a", Some("warning"), false, false), // observed grew
        ("a", Some("critical"), true, true),  // severity rose
        ("a", Some("critical"), false, false),
        ("a", Some("warning"), false, false), // fell: not news
        ("b", Some("critical"), true, true),
        ("c", None, true, false), // no severity: lowest
        ("c", Some("warning"), true, false),
    ];
    for (key, severity, to_all, to_critical) in steps {
        assert_eq!(all.admit(key, severity), to_all, "{key} {severity:?}");
        assert_eq!(
            critical.admit(key, severity),
            to_critical,
            "critical: {key} {severity:?}"
        );
    }
}

#[test]
fn notify_only_on_new_keys_and_severity_rises_through_the_writer() {
    let mut server = Server::start(vec![]);
    let registry = Registry::new("test");
    let mut w = writer(
        &[
            channel_to(&server.url("/all"), |_| ()),
            channel_to(&server.url("/critical"), |c| {
                c.min_severity = Some("critical".into())
            }),
        ],
        &registry,
    );
    let epochs = [
        vec![
            alert("0000000000000a01", "bot", "warning", 310),
            alert("0000000000000a02", "ddos", "critical", 200),
        ],
        vec![
            alert("0000000000000a01", "bot", "warning", 350),
            alert("0000000000000a02", "ddos", "critical", 260),
        ],
        vec![alert("0000000000000a01", "bot", "critical", 700)],
        vec![gone("0000000000000a01")],
        vec![
            alert("0000000000000a01", "bot", "critical", 700),
            alert("0000000000000a03", "bot", "warning", 320),
        ],
    ];
    for (e, changes) in epochs.iter().enumerate() {
        w.write_epoch(e as u64, changes).expect("write");
    }
    server.wait_for(6);
    w.close().expect("close");
    let seen = |path: &str| -> Vec<(String, String)> {
        server
            .requests()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| {
                let b = r.json();
                let id = b["alert_id"].as_str().unwrap_or("").to_owned();
                (id, b["alert"]["severity"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    };
    let pair = |id: &str, s: &str| (id.to_owned(), s.to_owned());
    assert_eq!(
        seen("/all"),
        [
            pair("0000000000000a01", "warning"),
            pair("0000000000000a02", "critical"),
            pair("0000000000000a01", "critical"),
            pair("0000000000000a03", "warning"),
        ]
    );
    assert_eq!(
        seen("/critical"),
        [
            pair("0000000000000a02", "critical"),
            pair("0000000000000a01", "critical"),
        ]
    );
}

#[test]
fn notify_config_errors_name_the_key_and_factories_refuse_what_they_cannot_do() {
    let sinks = SinksConfig {
        notify: vec![
            channel_to("https://hooks.slack.com/services/T/B/x", |_| ()),
            channel_to("hooks.slack.com/services/T/B/x", |_| ()),
        ],
        ..SinksConfig::default()
    };
    let err = sinks
        .validate(&["alerts"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("`sinks.notify[1].url`"), "{err}");
    let sinks = SinksConfig {
        notify: vec![channel_to("https://x.invalid/", |c| {
            c.table = "alertz".into()
        })],
        ..SinksConfig::default()
    };
    let err = sinks
        .validate(&["alerts"])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("`sinks.notify[0].table`") && err.contains("alertz"),
        "{err}"
    );

    // A url that passes the start-up checks but is no URL fails when the writer opens.
    let registry = Registry::new("test");
    let bad = [channel_to("http://[::1/hook", |_| ())];
    let cfg = SinkConfig {
        kind: "null".into(),
        ..SinkConfig::default()
    };
    let err = Connectors
        .open_bound("alerts", &cfg, &bad, &registry, None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("sinks.notify") && err.contains("not a valid URL"),
        "{err}"
    );
    // A factory without channels refuses them rather than ignore them.
    let ok = [channel_to("http://127.0.0.1:9/hook", |_| ())];
    let err = FileAndNullSinks
        .open_bound("alerts", &cfg, &ok, &registry, None)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("sinks.notify"), "{err}");
    assert!(Connectors
        .open_bound("alerts", &cfg, &[], &registry, None)
        .is_ok());
}

#[test]
fn notify_token_bucket_backoff_and_redaction() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(3, t0);
    for _ in 0..3 {
        assert!(bucket.take(t0).is_ok());
    }
    let wait = bucket.take(t0).expect_err("empty");
    assert!(
        wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    assert!(bucket.take(t0 + Duration::from_secs(20)).is_ok());
    assert!(bucket.take(t0 + Duration::from_secs(20)).is_err());
    assert!(bucket.take(t0 + Duration::from_secs(3600)).is_ok()); // refilled, capped at 3
    assert_eq!(
        (0..8).map(|a| backoff(a).as_millis()).collect::<Vec<_>>(),
        [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]
    );
    assert_eq!(backoff(100), Duration::from_secs(30));
    assert_eq!(
        redacted("https://hooks.slack.com/services/T0123/B0456/abcdefghijklmnopqrstuvwx?x=1"),
        "https://hooks.slack.com/services/T0123/B0456/abcd…"
    );
    assert_eq!(
        redacted("http://user:pw@127.0.0.1:80/hook"),
        "http://127.0.0.1:80/hook"
    );
}
