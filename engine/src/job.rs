//! The job API: what a job crate implements, and the context it builds its dataflow in.
//!
//! A job declares its name, its embedded default configuration and its output tables, and
//! builds its dataflow from typed collections in [`Job::build`]:
//!
//! ```text
//!   df.source("clickstream", open)  -> SourceStreams { records, dead_letters }
//!   records.map(..).distinct()...  -> VecCollection<Row>
//!   df.sink("daily_visitors", rows)
//! ```
//!
//! `build` runs once on every worker of every process, and must build the same dataflow
//! everywhere (timely requires it). Sources and sinks are bound by configuration, so the
//! same job runs on the generator, a file or Kafka without code changes.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use differential_dataflow::{ExchangeData, Hashable, VecCollection};
use serde::de::DeserializeOwned;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::Scope;

use crate::config::{ConfigError, EngineConfig, Layers, SinksConfig};
use crate::input::{source_operator, EpochClock, EpochLog, SourceSpec, SourceStreams};
use crate::metrics::{Registry, SinkMetrics, SourceMetrics};
use crate::sink::{sink_table, writer_worker, LiveView, SinkError, SinkFactory, TableRow};
use crate::source::{Source, SourceError};

/// An error while building a job's dataflow.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A source could not be opened.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A sink could not be opened.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A table was sunk that the job did not declare, or twice.
    #[error("table `{0}`: {1}")]
    Table(String, String),
}

/// A CAP job: implemented by each job crate, run by [`crate::cli::main`].
pub trait Job: Send + Sync + 'static {
    /// The job's name (binary name, metrics label).
    fn name(&self) -> &'static str;
    /// One line on what the job computes.
    fn about(&self) -> &'static str;
    /// The embedded default configuration (TOML): runs with no file, env or flags.
    fn default_config(&self) -> &'static str;
    /// The output tables the job writes, in a stable order.
    fn tables(&self) -> Vec<&'static str>;
    /// Builds the dataflow on one worker.
    fn build<'s>(&self, df: &mut Dataflow<'s>) -> Result<(), BuildError>;
}

/// Opens a configured source: given the source's name and its config table.
pub type SourceOpener<T> = dyn Fn(&str, &toml::Table) -> Result<Arc<dyn Source<T>>, SourceError>;

/// The context a job builds its dataflow in, on one worker.
pub struct Dataflow<'s> {
    scope: Scope<'s, u64>,
    layers: Arc<Layers>,
    engine: EngineConfig,
    sinks: SinksConfig,
    factory: Arc<dyn SinkFactory>,
    registry: Registry,
    pub(crate) clock: Rc<RefCell<EpochClock>>,
    log: Rc<RefCell<EpochLog>>,
    pub(crate) probe: ProbeHandle<u64>,
    live: Arc<BTreeMap<String, LiveView>>,
    declared: Vec<&'static str>,
    sunk: Vec<String>,
}

impl<'s> Dataflow<'s> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        scope: Scope<'s, u64>,
        layers: Arc<Layers>,
        engine: EngineConfig,
        factory: Arc<dyn SinkFactory>,
        registry: Registry,
        stop: Arc<AtomicBool>,
        live: Arc<BTreeMap<String, LiveView>>,
        declared: Vec<&'static str>,
        global_worker: usize,
    ) -> Result<Dataflow<'s>, BuildError> {
        let sinks: SinksConfig = layers.typed("sinks")?;
        sinks.validate(&declared)?;
        if let Some(unknown) = engine
            .tables
            .iter()
            .find(|t| !declared.contains(&t.as_str()))
        {
            return Err(ConfigError::Invalid {
                key: "engine.tables".into(),
                reason: format!(
                    "`{unknown}` is not a table of this job (its tables: {})",
                    declared.join(", ")
                ),
            }
            .into());
        }
        let clock = Rc::new(RefCell::new(EpochClock::new(
            engine.epoch_records,
            engine.epoch_ms,
            stop,
        )));
        let log = EpochLog::open(Some(&engine.state_dir), global_worker).map_err(|e| {
            ConfigError::Invalid {
                key: "engine.state_dir".into(),
                reason: format!(
                    "cannot create the epoch log under {}: {e}",
                    engine.state_dir.display()
                ),
            }
        })?;
        Ok(Dataflow {
            scope,
            layers,
            engine,
            sinks,
            factory,
            registry,
            clock,
            log: Rc::new(RefCell::new(log)),
            probe: ProbeHandle::new(),
            live,
            declared,
            sunk: Vec::new(),
        })
    }

    /// The timely scope (epochs are `u64`).
    pub fn scope(&self) -> Scope<'s, u64> {
        self.scope
    }

    /// This worker's index among all workers of all processes.
    pub fn worker_index(&self) -> usize {
        self.scope.index()
    }

    /// Number of workers in all processes.
    pub fn workers(&self) -> usize {
        self.scope.peers()
    }

    /// The runtime configuration.
    pub fn engine_config(&self) -> &EngineConfig {
        &self.engine
    }

    /// The job's own settings (the `[job]` table), typed; errors name the key.
    pub fn settings<T: DeserializeOwned>(&self) -> Result<T, BuildError> {
        Ok(self.layers.typed("job")?)
    }

    /// The metrics registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Adds the source `name` (bound by `[sources.<name>]`), opened with `open`.
    pub fn source<T: ExchangeData>(
        &mut self,
        name: &str,
        open: &SourceOpener<T>,
    ) -> Result<SourceStreams<'s, T>, BuildError> {
        let table = self.layers.table_at(&format!("sources.{name}"));
        if table.is_empty() {
            return Err(ConfigError::Invalid {
                key: format!("sources.{name}"),
                reason: "is not configured".into(),
            }
            .into());
        }
        let source = open(name, &table)?;
        let spec = SourceSpec {
            outputs: self.probe.clone(),
            max_epochs_in_flight: self.engine.max_epochs_in_flight,
            source,
            limit: self.engine.max_events,
            metrics: SourceMetrics::new(&self.registry, name, self.scope.index()),
        };
        Ok(source_operator(
            self.scope,
            spec,
            Rc::clone(&self.clock),
            Rc::clone(&self.log),
        )?)
    }

    /// Whether `table` is to be computed: `engine.tables` is empty (every table) or lists
    /// it. A job skips building what only unwanted tables need; [`Dataflow::sink`] of an
    /// unwanted table is accepted and writes nothing.
    pub fn wants(&self, table: &str) -> bool {
        self.engine.tables.is_empty() || self.engine.tables.iter().any(|t| t == table)
    }

    /// Writes `rows` as the output table `table`, bound by `[sinks]` / `[sinks.tables.<table>]`.
    pub fn sink<R: TableRow + Hashable>(
        &mut self,
        table: &str,
        rows: VecCollection<'s, u64, R>,
    ) -> Result<(), BuildError> {
        if !self.declared.contains(&table) {
            return Err(BuildError::Table(
                table.into(),
                "is not among the tables the job declares".into(),
            ));
        }
        if self.sunk.iter().any(|t| t == table) {
            return Err(BuildError::Table(table.into(), "is written twice".into()));
        }
        self.sunk.push(table.to_owned());
        if !self.wants(table) {
            return Ok(());
        }
        let is_writer = writer_worker(table, self.scope.peers()) == self.scope.index();
        let writer = if is_writer {
            Some(self.factory.open_bound(
                table,
                self.sinks.for_table(table),
                &self.sinks.notify_for(table),
                &self.registry,
            )?)
        } else {
            None
        };
        let live = if is_writer {
            self.live.get(table).cloned()
        } else {
            None
        };
        sink_table(
            rows,
            table,
            writer,
            live,
            SinkMetrics::new(&self.registry, table),
            &self.probe,
        );
        Ok(())
    }

    pub(crate) fn finish(&self) -> Result<(), BuildError> {
        for t in &self.declared {
            if self.wants(t) && !self.sunk.iter().any(|s| s == t) {
                return Err(BuildError::Table(
                    (*t).into(),
                    "is declared but never written".into(),
                ));
            }
        }
        Ok(())
    }
}
