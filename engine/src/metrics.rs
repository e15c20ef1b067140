//! Metrics: counters and latency histograms in one registry, exposed in Prometheus text
//! format over HTTP (`GET /metrics`, `GET /healthz`).
//!
//! Each subsystem owns a struct of handles ([`SourceMetrics`], [`EpochMetrics`],
//! [`SinkMetrics`]) registered into the process-wide [`Registry`] with fixed labels (`job`,
//! `worker`, `source`, `table`). Counters are atomics, cheap enough to bump per batch.
//! Latency histograms are HdrHistograms (microseconds, 3 significant digits) merged across
//! workers. Non-guarantee: counters are per process; a cluster's totals are the sum over
//! processes' endpoints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// A monotonically increasing counter.
#[derive(Clone, Default, Debug)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (a lag, a queue length).
#[derive(Clone, Default, Debug)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram in microseconds, shared across workers.
#[derive(Clone)]
pub struct LatencyHistogram(Arc<Mutex<Histogram<u64>>>);

impl Default for LatencyHistogram {
    fn default() -> Self {
        // 1 µs .. 1 hour at 3 significant digits; the bounds are constants, so this cannot fail.
        let h = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("constant histogram bounds are valid");
        LatencyHistogram(Arc::new(Mutex::new(h)))
    }
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        if let Ok(mut h) = self.0.lock() {
            let _ = h.record(us);
        }
    }
    /// Merges another histogram in.
    pub fn add(&self, other: &Histogram<u64>) {
        if let Ok(mut h) = self.0.lock() {
            let _ = h.add(other);
        }
    }
    /// A copy of the current histogram.
    pub fn snapshot(&self) -> Histogram<u64> {
        match self.0.lock() {
            Ok(h) => h.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Labels of a metric series, in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, String), (Counter, &'static str)>,
    gauges: BTreeMap<(&'static str, String), (Gauge, &'static str)>,
    histograms: BTreeMap<(&'static str, String), (LatencyHistogram, &'static str)>,
}

/// The process-wide metrics registry.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    job: Arc<str>,
}

fn render_labels(labels: &Labels) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s
}

impl Registry {
    /// A registry whose series all carry `job="<job>"`.
    pub fn new(job: &str) -> Registry {
        Registry {
            inner: Arc::default(),
            job: Arc::from(job),
        }
    }

    fn with_job(&self, mut labels: Labels) -> Labels {
        labels.insert(0, ("job", self.job.to_string()));
        labels
    }

    /// The counter `name{labels}`, created on first use.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: Labels) -> Counter {
        let key = (name, render_labels(&self.with_job(labels)));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .counters
            .entry(key)
            .or_insert_with(|| (Counter::default(), help))
            .0
            .clone()
    }

    /// The gauge `name{labels}`, created on first use.
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: Labels) -> Gauge {
        let key = (name, render_labels(&self.with_job(labels)));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .gauges
            .entry(key)
            .or_insert_with(|| (Gauge::default(), help))
            .0
            .clone()
    }

    /// The values of every series of gauge `name`, by rendered labels.
    pub fn gauge_values(&self, name: &str) -> Vec<(String, i64)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .gauges
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|((_, labels), (g, _))| (labels.clone(), g.get()))
            .collect()
    }

    /// The histogram `name{labels}`, created on first use.
    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
    ) -> LatencyHistogram {
        let key = (name, render_labels(&self.with_job(labels)));
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .histograms
            .entry(key)
            .or_insert_with(|| (LatencyHistogram::default(), help))
            .0
            .clone()
    }

    /// Sum of all series of counter `name`.
    pub fn counter_total(&self, name: &str) -> u64 {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .counters
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, (c, _))| c.get())
            .sum()
    }

    /// Merge of all series of histogram `name`.
    pub fn histogram_merged(&self, name: &str) -> Option<Histogram<u64>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Option<Histogram<u64>> = None;
        for ((n, _), (h, _)) in inner.histograms.iter() {
            if *n != name {
                continue;
            }
            let snap = h.snapshot();
            match &mut out {
                None => out = Some(snap),
                Some(o) => {
                    let _ = o.add(&snap);
                }
            }
        }
        out
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), (c, help)) in inner.counters.iter() {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{{{labels}}} {}", c.get());
        }
        last = "";
        for ((name, labels), (g, help)) in inner.gauges.iter() {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
                last = name;
            }
            let _ = writeln!(out, "{name}{{{labels}}} {}", g.get());
        }
        last = "";
        for ((name, labels), (h, help)) in inner.histograms.iter() {
            if *name != last {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} summary");
                last = name;
            }
            let snap = h.snapshot();
            for q in [0.5, 0.9, 0.99, 0.999] {
                let v = snap.value_at_quantile(q) as f64 / 1e6;
                let _ = writeln!(out, "{name}{{{labels},quantile=\"{q}\"}} {v}");
            }
            let sum: f64 = snap.mean() * snap.len() as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", snap.len());
        }
        out
    }

    /// Serves `/metrics` and `/healthz` on `addr` from a background thread.
    pub fn serve(&self, addr: &str) -> std::io::Result<std::net::SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let registry = self.clone();
        std::thread::Builder::new().name("cap-metrics".into()).spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut first = String::new();
                let mut reader = BufReader::new(&stream);
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                // Drain headers.
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                    line.clear();
                }
                let (status, body) = if first.starts_with("GET /metrics") {
                    ("200 OK", registry.render())
                } else if first.starts_with("GET /healthz") {
                    ("200 OK", "ok\n".to_owned())
                } else {
                    ("404 Not Found", "try /metrics or /healthz\n".to_owned())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
        Ok(local)
    }
}

/// Per-source, per-worker counters.
#[derive(Clone)]
pub struct SourceMetrics {
    /// Records decoded successfully.
    pub records: Counter,
    /// Records sent to the dead-letter output.
    pub dead_letters: Counter,
    /// Times this worker paused its partitions because the dataflow fell behind.
    pub pauses: Counter,
    registry: Registry,
    source: String,
    worker: usize,
}

impl SourceMetrics {
    /// Registers the series for `source` on `worker`.
    pub fn new(registry: &Registry, source: &str, worker: usize) -> SourceMetrics {
        let labels = || {
            vec![
                ("worker", worker.to_string()),
                ("source", source.to_owned()),
            ]
        };
        SourceMetrics {
            records: registry.counter(
                "cap_source_records_total",
                "Records decoded and fed into the dataflow.",
                labels(),
            ),
            dead_letters: registry.counter(
                "cap_dead_letters_total",
                "Records that could not be decoded (dead letters).",
                labels(),
            ),
            pauses: registry.counter(
                "cap_source_backpressure_pauses_total",
                "Times a worker paused its partitions because its outputs fell behind.",
                labels(),
            ),
            registry: registry.clone(),
            source: source.to_owned(),
            worker,
        }
    }

    /// The lag gauge of one partition: records upstream not read yet.
    pub fn lag(&self, partition: &str) -> Gauge {
        self.registry.gauge(
            "cap_source_lag_records",
            "Records available upstream but not read yet, per partition (Kafka: high watermark minus position).",
            vec![
                ("worker", self.worker.to_string()),
                ("source", self.source.clone()),
                ("partition", partition.to_owned()),
            ],
        )
    }
}

/// Per-worker epoch progress.
#[derive(Clone)]
pub struct EpochMetrics {
    /// Epochs whose every output is complete.
    pub completed: Counter,
    /// Time from an epoch's close at its sources to all outputs complete.
    pub latency: LatencyHistogram,
}

impl EpochMetrics {
    /// Registers the series for `worker`.
    pub fn new(registry: &Registry, worker: usize) -> EpochMetrics {
        let labels = || vec![("worker", worker.to_string())];
        EpochMetrics {
            completed: registry.counter(
                "cap_epochs_completed_total",
                "Epochs whose outputs are complete.",
                labels(),
            ),
            latency: registry.histogram(
                "cap_epoch_latency_seconds",
                "Time from an epoch closing at the sources to all its outputs being complete.",
                labels(),
            ),
        }
    }
}

/// Per-table sink counters.
#[derive(Clone)]
pub struct SinkMetrics {
    /// Keyed changes (upserts and deletes) written.
    pub changes: Counter,
}

impl SinkMetrics {
    /// Registers the series for `table`.
    pub fn new(registry: &Registry, table: &str) -> SinkMetrics {
        SinkMetrics {
            changes: registry.counter(
                "cap_sink_changes_total",
                "Keyed changes written to sinks.",
                vec![("table", table.to_owned())],
            ),
        }
    }
}

/// Checkpoint metrics: per worker and collection (`pause`, `records`) or per process
/// (`written`, `failed`, `bytes`, counted by worker 0).
#[derive(Clone)]
pub struct CheckpointMetrics {
    /// Time a worker paused to hand its changes of a collection to the writer thread at a
    /// checkpoint.
    pub pause: LatencyHistogram,
    /// Records of the collection in this worker's latest part.
    pub records: Gauge,
    /// Checkpoints completed (manifest written).
    pub written: Counter,
    /// Checkpoints abandoned (a part or the manifest could not be written).
    pub failed: Counter,
    /// Bytes of the latest complete checkpoint.
    pub bytes: Gauge,
}

impl CheckpointMetrics {
    /// Registers the series of `collection` (empty: the manifest's) on `worker`.
    pub fn new(registry: &Registry, collection: &str, worker: usize) -> CheckpointMetrics {
        let labels = || {
            vec![
                ("worker", worker.to_string()),
                ("collection", collection.to_owned()),
            ]
        };
        CheckpointMetrics {
            pause: registry.histogram(
                "cap_checkpoint_pause_seconds",
                "Time a worker paused its dataflow to hand its changes of a checkpointed collection to the writer thread.",
                labels(),
            ),
            records: registry.gauge(
                "cap_checkpoint_records",
                "Changes of a checkpointed collection this worker handed to its writer at the latest checkpoint.",
                labels(),
            ),
            written: registry.counter(
                "cap_checkpoints_written_total",
                "Checkpoints completed (manifest written).",
                vec![],
            ),
            failed: registry.counter(
                "cap_checkpoints_failed_total",
                "Checkpoints abandoned because a part or the manifest could not be written.",
                vec![],
            ),
            bytes: registry.gauge(
                "cap_checkpoint_bytes",
                "Bytes of the latest complete checkpoint.",
                vec![],
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_and_serves_it() -> anyhow::Result<()> {
        let r = Registry::new("demo");
        let m = SourceMetrics::new(&r, "clickstream", 0);
        m.records.add(5);
        SourceMetrics::new(&r, "clickstream", 1).records.add(2);
        let e = EpochMetrics::new(&r, 0);
        e.latency.record(Duration::from_millis(3));
        let text = r.render();
        assert!(
            text.contains(
                "cap_source_records_total{job=\"demo\",worker=\"0\",source=\"clickstream\"} 5"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE cap_epoch_latency_seconds summary"),
            "{text}"
        );
        assert_eq!(r.counter_total("cap_source_records_total"), 7);
        let addr = r.serve("127.0.0.1:0")?;
        let mut s = std::net::TcpStream::connect(addr)?;
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut body = String::new();
        std::io::Read::read_to_string(&mut s, &mut body)?;
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(body.contains("cap_dead_letters_total"), "{body}");
        Ok(())
    }
}
