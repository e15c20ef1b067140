//! Running a job: timely workers, the epoch loop, signals, metrics and the live console.
//!
//! ```text
//!  process ─┬─ worker 0: build dataflow ─ step ─ step ─ ... ─ probe done ─┐
//!           ├─ worker 1: build dataflow ─ step ─ ...                      ├─ RunReport
//!           ├─ console thread (stderr summary every engine.console_interval_ms)
//!           └─ metrics thread (GET /metrics, when engine.metrics_addr is set)
//! ```
//!
//! A worker steps its dataflow until every sink has seen the end of its input. SIGINT or
//! SIGTERM sets a stop flag: sources close the open epoch and stop, downstream operators
//! finish the epoch, sinks flush, and the process exits 0. A second signal exits at once.
//! Epoch latency is the time from an epoch closing at this worker's sources to every sink
//! having written it (the probe passing the epoch), recorded per worker in an HdrHistogram.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::checkpoint::store::Identity;
use crate::checkpoint::Recovery;
use crate::config::{ConfigError, EngineConfig, Layers};
use crate::job::{BuildError, Dataflow, Job};
use crate::metrics::{EpochMetrics, Registry};
use crate::sink::{LiveView, SinkFactory};

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A worker failed to build or run.
    #[error("worker {worker}: {message}")]
    Worker {
        /// Global worker index.
        worker: usize,
        /// What went wrong.
        message: String,
    },
    /// Timely could not start (e.g. could not connect to the other processes).
    #[error("cannot start the workers: {0}")]
    Start(String),
    /// The checkpoints or the epoch log cannot be used.
    #[error("cannot prepare the restart: {0}")]
    Recovery(String),
    /// The metrics endpoint could not be bound.
    #[error("engine.metrics_addr `{addr}`: {cause}")]
    Metrics {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        cause: std::io::Error,
    },
}

/// What a finished run did (this process only).
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Records decoded and fed in, over all sources.
    pub records: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Epochs completed (summed over this process's workers).
    pub epochs: u64,
    /// Wall time from the first worker starting to the last finishing.
    pub elapsed: Duration,
    /// Epoch latency over this process's workers, in microseconds.
    pub latency: Histogram<u64>,
    /// Whether the run was stopped by a signal.
    pub stopped: bool,
}

impl RunReport {
    /// Records per second.
    pub fn rate(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Installs the tracing subscriber once per process (later calls are no-ops).
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn timely_config(engine: &EngineConfig) -> Result<timely::Config, RunError> {
    let communication = if engine.processes > 1 {
        let addresses = match &engine.hostfile {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                    key: "engine.hostfile".into(),
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                let addrs: Vec<String> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect();
                if addrs.len() < engine.processes {
                    return Err(ConfigError::Invalid {
                        key: "engine.hostfile".into(),
                        reason: format!(
                            "{} lists {} addresses but engine.processes is {}",
                            path.display(),
                            addrs.len(),
                            engine.processes
                        ),
                    }
                    .into());
                }
                addrs.into_iter().take(engine.processes).collect()
            }
            None => (0..engine.processes)
                .map(|i| format!("localhost:{}", 2101 + i))
                .collect(),
        };
        timely::CommunicationConfig::Cluster {
            threads: engine.workers,
            process: engine.process,
            addresses,
            report: false,
            zerocopy: false,
        }
    } else if engine.workers > 1 {
        timely::CommunicationConfig::Process(engine.workers)
    } else {
        timely::CommunicationConfig::Thread
    };
    Ok(timely::Config {
        communication,
        worker: timely::WorkerConfig::default(),
    })
}

/// Runs `job` with the merged configuration `layers` until its sources end or a stop signal.
pub fn run_job<J: Job>(
    job: Arc<J>,
    layers: Layers,
    factory: Arc<dyn SinkFactory>,
) -> Result<RunReport, RunError> {
    let engine: EngineConfig = layers.typed("engine")?;
    engine.validate()?;
    init_logging(&engine.log_level);
    let registry = Registry::new(job.name());
    if let Some(addr) = &engine.metrics_addr {
        let bound = registry.serve(addr).map_err(|cause| RunError::Metrics {
            addr: addr.clone(),
            cause,
        })?;
        tracing::info!(%bound, "serving metrics at /metrics");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal while stopping exits at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&stop));
        let _ = signal_hook::flag::register(sig, Arc::clone(&stop));
    }
    let declared = job.tables();
    let live: Arc<BTreeMap<String, LiveView>> = Arc::new(
        engine
            .console_tables
            .iter()
            .filter(|t| declared.contains(&t.as_str()))
            .map(|t| (t.clone(), LiveView::default()))
            .collect(),
    );
    let config = timely_config(&engine)?;
    let identity = Identity {
        job: job.name().to_owned(),
        version: job.version().to_owned(),
    };
    let recovery = Arc::new(
        Recovery::prepare(&engine, identity).map_err(|e| RunError::Recovery(e.to_string()))?,
    );
    tracing::info!(
        job = job.name(),
        workers = engine.workers,
        processes = engine.processes,
        process = engine.process,
        "starting"
    );

    let started = Instant::now();
    let finished = Arc::new(AtomicBool::new(false));
    let console = if engine.console {
        let (registry, live, finished) =
            (registry.clone(), Arc::clone(&live), Arc::clone(&finished));
        let interval = Duration::from_millis(engine.console_interval_ms);
        Some(
            std::thread::Builder::new()
                .name("cap-console".into())
                .spawn(move || console_loop(&registry, &live, &finished, interval, started)),
        )
    } else {
        None
    };

    let layers = Arc::new(layers);
    let errors: Arc<Mutex<Vec<RunError>>> = Arc::default();
    let worker_errors = Arc::clone(&errors);
    let (w_registry, w_stop, w_live) = (registry.clone(), Arc::clone(&stop), Arc::clone(&live));
    let w_engine = engine.clone();
    let guards = timely::execute(config, move |worker| {
        let index = worker.index();
        let epoch_metrics = EpochMetrics::new(&w_registry, index);
        let built = worker.dataflow::<u64, _, _>(|scope| -> Result<_, BuildError> {
            let mut df = Dataflow::new(
                scope,
                Arc::clone(&layers),
                w_engine.clone(),
                Arc::clone(&factory),
                w_registry.clone(),
                Arc::clone(&w_stop),
                Arc::clone(&w_live),
                declared.clone(),
                Arc::clone(&recovery),
            )?;
            job.build(&mut df)?;
            df.finish()?;
            Ok((
                df.probe.clone(),
                std::rc::Rc::clone(&df.clock),
                df.checkpoints.clone(),
            ))
        });
        let (probe, clock, checkpoints) = match built {
            Ok(parts) => parts,
            Err(e) => {
                let message = e.to_string();
                tracing::error!(worker = index, error = %message, "cannot build the dataflow");
                worker_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(RunError::Worker {
                        worker: index,
                        message,
                    });
                // Tell the other workers to stop; this worker's dataflow has no sources.
                w_stop.store(true, Ordering::Relaxed);
                std::process::exit(2);
            }
        };
        loop {
            worker.step_or_park(Some(Duration::from_millis(1)));
            let mut clock = clock.borrow_mut();
            while let Some(&(epoch, closed_at)) = clock.closed.front() {
                if probe.less_equal(&epoch) {
                    break;
                }
                epoch_metrics.latency.record(closed_at.elapsed());
                epoch_metrics.completed.add(1);
                clock.closed.pop_front();
            }
            if probe.done() && checkpoints.done() {
                break;
            }
        }
    })
    .map_err(RunError::Start)?;
    let results = guards.join();
    let elapsed = started.elapsed();
    finished.store(true, Ordering::Relaxed);
    if let Some(Ok(handle)) = console {
        let _ = handle.join();
    }
    for (i, r) in results.into_iter().enumerate() {
        if let Err(message) = r {
            errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(RunError::Worker { worker: i, message });
        }
    }
    if let Some(e) = errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .next()
    {
        return Err(e);
    }
    let report = RunReport {
        records: registry.counter_total("cap_source_records_total"),
        dead_letters: registry.counter_total("cap_dead_letters_total"),
        epochs: registry.counter_total("cap_epochs_completed_total"),
        elapsed,
        latency: registry
            .histogram_merged("cap_epoch_latency_seconds")
            .unwrap_or_else(|| {
                Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("constant histogram bounds are valid")
            }),
        stopped: stop.load(Ordering::Relaxed),
    };
    tracing::info!(
        records = report.records,
        dead_letters = report.dead_letters,
        epochs = report.epochs,
        seconds = format!("{:.2}", elapsed.as_secs_f64()),
        rate = format!("{:.0}/s", report.rate()),
        p50_ms = format!(
            "{:.2}",
            report.latency.value_at_quantile(0.5) as f64 / 1000.0
        ),
        p99_ms = format!(
            "{:.2}",
            report.latency.value_at_quantile(0.99) as f64 / 1000.0
        ),
        stopped = report.stopped,
        "finished"
    );
    Ok(report)
}

fn human(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

fn console_loop(
    registry: &Registry,
    live: &BTreeMap<String, LiveView>,
    finished: &AtomicBool,
    interval: Duration,
    started: Instant,
) {
    let mut last = (Instant::now(), 0u64);
    while !finished.load(Ordering::Relaxed) {
        let deadline = Instant::now() + interval;
        while Instant::now() < deadline {
            if finished.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let records = registry.counter_total("cap_source_records_total");
        let dead = registry.counter_total("cap_dead_letters_total");
        let epochs = registry.counter_total("cap_epochs_completed_total");
        let now = Instant::now();
        let rate = (records - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
        last = (now, records);
        let (p50, p99) = registry
            .histogram_merged("cap_epoch_latency_seconds")
            .map(|h| {
                (
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                )
            })
            .unwrap_or((0.0, 0.0));
        let mut text = format!(
            "[{:>7.1}s] events {} ({}/s)  dead letters {}  epochs {}  epoch latency p50 {:.1} ms p99 {:.1} ms\n",
            started.elapsed().as_secs_f64(),
            records,
            human(rate),
            dead,
            epochs,
            p50,
            p99
        );
        for (table, view) in live {
            let view = view.lock().unwrap_or_else(|p| p.into_inner());
            let rows: Vec<&String> = view.values().rev().take(3).collect();
            for row in rows.into_iter().rev() {
                text.push_str(&format!("    {table}: {row}\n"));
            }
        }
        eprint!("{text}");
    }
}
