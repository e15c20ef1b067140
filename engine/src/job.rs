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

use differential_dataflow::difference::Semigroup;
use differential_dataflow::{ExchangeData, Hashable, VecCollection};
use serde::de::DeserializeOwned;
use timely::dataflow::operators::probe::Handle as ProbeHandle;
use timely::dataflow::operators::Probe;
use timely::dataflow::{Scope, StreamVec};

use crate::checkpoint::log::EpochLog;
use crate::checkpoint::operator::{
    checkpoint_clock, checkpoint_collection, manifest_writer, restore_feed, restored_records,
    ManifestSpec, PartDone,
};
use crate::checkpoint::Recovery;
use crate::config::{ConfigError, EngineConfig, Layers, SinksConfig};
use crate::input::{source_operator, EpochClock, SourceSpec, SourceStreams};
use crate::metrics::{CheckpointMetrics, Registry, SinkMetrics, SourceMetrics};
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
    /// The checkpoint being restored does not fit this dataflow.
    #[error("checkpoint {checkpoint}: {reason}; start afresh with `--fresh` (which ignores the checkpoints and the epoch log) or run the build that wrote it")]
    Restore {
        /// The checkpoint directory.
        checkpoint: String,
        /// What does not fit.
        reason: String,
    },
}

/// A CAP job: implemented by each job crate, run by [`crate::cli::main`].
pub trait Job: Send + Sync + 'static {
    /// The job's name (binary name, metrics label).
    fn name(&self) -> &'static str;
    /// The job's version (its crate's, `env!("CARGO_PKG_VERSION")`): a checkpoint restores
    /// only into the same name and version.
    fn version(&self) -> &'static str {
        "0"
    }
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
    recovery: Arc<Recovery>,
    /// The checkpoint marks, when checkpoints are on.
    marks: Option<StreamVec<'s, u64, u64>>,
    /// Checkpoints fall on epochs `e` with `e % align == align - 1` (see
    /// [`Dataflow::align_epochs`]).
    align: Rc<std::cell::Cell<u64>>,
    /// Every checkpoint operator's parts, for the manifest writer.
    parts: Vec<StreamVec<'s, u64, PartDone>>,
    /// `(name, record type)` of every checkpointed collection, in build order.
    checkpointed: Vec<(String, String)>,
    /// The checkpointed collections whose writer is built.
    checkpoint_written: Vec<String>,
    /// Done once the last checkpoint is written.
    pub(crate) checkpoints: ProbeHandle<u64>,
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
        recovery: Arc<Recovery>,
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
        let clock = Rc::new(RefCell::new(
            EpochClock::new(engine.epoch_records, engine.epoch_ms, stop)
                .resuming(recovery.plan.first_epoch, recovery.plan.replay_through),
        ));
        let log =
            EpochLog::open(&recovery.run_dir, scope.index(), recovery.fresh_log).map_err(|e| {
                ConfigError::Invalid {
                    key: "engine.state_dir".into(),
                    reason: e.to_string(),
                }
            })?;
        let align = Rc::new(std::cell::Cell::new(1u64));
        let probe = ProbeHandle::new();
        let marks = recovery.config.interval().map(|interval| {
            checkpoint_clock(
                scope,
                Rc::clone(&clock),
                interval,
                Rc::clone(&align),
                probe.clone(),
            )
        });
        Ok(Dataflow {
            scope,
            layers,
            engine,
            sinks,
            factory,
            registry,
            clock,
            log: Rc::new(RefCell::new(log)),
            probe,
            live,
            declared,
            sunk: Vec::new(),
            recovery,
            marks,
            align,
            parts: Vec::new(),
            checkpointed: Vec::new(),
            checkpoint_written: Vec::new(),
            checkpoints: ProbeHandle::new(),
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
            plan: Arc::clone(&self.recovery.plan),
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
            let mut writer = self.factory.open_bound(
                table,
                self.sinks.for_table(table),
                &self.sinks.notify_for(table),
                &self.registry,
                R::schema().as_ref(),
            )?;
            writer.begin(self.recovery.resuming)?;
            Some(writer)
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
            self.recovery.restored_epoch(),
        );
        Ok(())
    }

    /// Makes `collection` part of every checkpoint, under `name`: returns the collection to
    /// build on, which after a restore starts with the checkpoint's contents (at the restored
    /// epoch) and goes on with the updates of the input read since.
    ///
    /// Checkpoint the first *reduced* collections of the dataflow (per customer, per bucket
    /// accumulations, not raw events): everything the job computes must be a function of its
    /// checkpointed collections' contents, since nothing else survives a restart. The
    /// difference type may be any semigroup (counters ride in it, see
    /// `cap_operators::aggregate`): the checkpoint holds each record with its accumulated
    /// difference. Names are unique per job; the names and types make up the dataflow's
    /// fingerprint, which a restored checkpoint must match.
    pub fn checkpointed<D, R>(
        &mut self,
        name: &str,
        collection: VecCollection<'s, u64, D, R>,
    ) -> Result<VecCollection<'s, u64, D, R>, BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup,
    {
        let collection = match self.restored(name)? {
            Some(restored) => collection.concat(restored),
            None => collection,
        };
        self.checkpoint(name, collection.clone())?;
        Ok(collection)
    }

    /// Makes checkpoints fall only on epochs `e` with `(e + 1) % every == 0`, for a dataflow
    /// that delays updates to such epochs (`cap_operators::recommend::refresh_every`): a
    /// checkpoint between two of them would hold updates that the delayed part has not yet
    /// seen, and a restore would publish them again. Several calls align to all of them.
    pub fn align_epochs(&mut self, every: u64) {
        let every = every.max(1);
        let a = self.align.get();
        self.align.set(a / gcd(a, every) * every);
    }

    /// Registers a checkpointed collection for an operator that keeps its own state and
    /// publishes it as a collection of changes (the windowed operators of
    /// `cap_operators::anomaly`): returns the state to restore the operator with, at the
    /// restored epoch, when this run restores. The operator's state changes, together with
    /// these restored records, then go to [`Dataflow::checkpoint`] under the same name.
    pub fn restored<D, R>(
        &mut self,
        name: &str,
    ) -> Result<Option<VecCollection<'s, u64, D, R>>, BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup,
    {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid || self.checkpointed.iter().any(|(n, _)| n == name) {
            return Err(BuildError::Table(
                name.into(),
                "a checkpointed collection needs a unique name of letters, digits, `_` and `-`"
                    .into(),
            ));
        }
        self.checkpointed
            .push((name.to_owned(), record_type::<D, R>()));
        let Some((dir, manifest)) = &self.recovery.restored else {
            return Ok(None);
        };
        if !manifest.parts.iter().any(|p| p.collection == name) {
            return Err(BuildError::Restore {
                checkpoint: dir.display().to_string(),
                reason: format!("it holds no collection `{name}`, which this job checkpoints"),
            });
        }
        let records =
            restored_records::<D, R>(dir, manifest, name, self.scope.index(), self.scope.peers())
                .map_err(|e| BuildError::Restore {
                checkpoint: dir.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Some(restore_feed(
            self.scope,
            name,
            manifest.epoch,
            records,
        )))
    }

    /// Writes `collection` at every checkpoint under `name`, registered by
    /// [`Dataflow::restored`] with the same types; `collection` must include the restored
    /// records (its accumulation is the state to restore).
    pub fn checkpoint<D, R>(
        &mut self,
        name: &str,
        collection: VecCollection<'s, u64, D, R>,
    ) -> Result<(), BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup,
    {
        let registered = self
            .checkpointed
            .iter()
            .any(|(n, t)| n == name && *t == record_type::<D, R>());
        if !registered || self.checkpoint_written.iter().any(|n| n == name) {
            return Err(BuildError::Table(
                name.into(),
                "a checkpoint is written once per name, with the types `restored` registered it with".into(),
            ));
        }
        self.checkpoint_written.push(name.to_owned());
        if let Some(marks) = &self.marks {
            let parts = checkpoint_collection(
                collection,
                marks.clone(),
                name,
                self.recovery.root.clone(),
                CheckpointMetrics::new(&self.registry, name, self.scope.index()),
            );
            self.parts.push(parts);
        }
        Ok(())
    }

    /// The fingerprint of the checkpointed part of the dataflow.
    /// The fingerprint of the checkpointed part of the dataflow: each checkpointed
    /// collection's name and types, and a digest of the job's `[job]` settings (windows,
    /// thresholds and schedules shape the state, so a checkpoint is only restored under the
    /// settings that wrote it).
    fn fingerprint(&self) -> String {
        let mut names: Vec<String> = self
            .checkpointed
            .iter()
            .map(|(n, t)| format!("{n}:{t}"))
            .collect();
        names.sort();
        let settings = toml::to_string(&self.layers.table_at("job")).unwrap_or_default();
        names.push(format!("[job]:{:016x}", fnv1a64(settings.as_bytes())));
        names.join(",")
    }

    pub(crate) fn finish(&mut self) -> Result<(), BuildError> {
        if let Some((name, _)) = self
            .checkpointed
            .iter()
            .find(|(n, _)| !self.checkpoint_written.contains(n))
        {
            return Err(BuildError::Table(
                name.clone(),
                "is registered for checkpoints (`restored`) but never written (`checkpoint`)"
                    .into(),
            ));
        }
        let fingerprint = self.fingerprint();
        if let Some((dir, manifest)) = &self.recovery.restored {
            if manifest.fingerprint != fingerprint {
                return Err(BuildError::Restore {
                    checkpoint: dir.display().to_string(),
                    reason: format!(
                        "it was written by a dataflow checkpointing [{}], this one checkpoints [{fingerprint}] (collection:types, and a digest of the [job] settings: run with the settings that wrote it, or start over with --fresh)",
                        manifest.fingerprint
                    ),
                });
            }
        }
        if let Some(marks) = self.marks.take() {
            if self.checkpointed.is_empty() {
                if self.scope.index() == 0 {
                    tracing::warn!("engine.checkpoint.interval_ms is set but the job checkpoints no collection: no checkpoints are written, and a restart replays the epoch log from the start");
                }
            } else {
                let spec = ManifestSpec {
                    root: self.recovery.root.clone(),
                    keep: self.recovery.config.keep,
                    job: self.recovery.identity.job.clone(),
                    version: self.recovery.identity.version.clone(),
                    fingerprint: (fingerprint, self.checkpointed.len()),
                    metrics: CheckpointMetrics::new(&self.registry, "", self.scope.index()),
                    outputs: self.probe.clone(),
                };
                manifest_writer(marks, std::mem::take(&mut self.parts), spec)
                    .probe_with(&self.checkpoints);
            }
        }
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

/// FNV-1a, 64 bits: a digest that stays the same across builds and platforms.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The type of a checkpointed collection's records and differences, for the fingerprint.
fn record_type<D, R>() -> String {
    format!(
        "{}*{}",
        std::any::type_name::<D>(),
        std::any::type_name::<R>()
    )
}

/// Where a dataflow keeps the collections its state derives from: a job's [`Dataflow`]
/// (checkpoints, see [`Dataflow::checkpointed`]), or [`NoCheckpoints`] when a part of a
/// dataflow runs alone (benches, operator tests). Table builders take
/// `&mut impl Checkpoints<'s>` so the same code serves both.
pub trait Checkpoints<'s> {
    /// See [`Dataflow::checkpointed`].
    fn checkpointed<D, R>(
        &mut self,
        name: &str,
        collection: VecCollection<'s, u64, D, R>,
    ) -> Result<VecCollection<'s, u64, D, R>, BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup;

    /// See [`Dataflow::align_epochs`].
    fn align_epochs(&mut self, every: u64);

    /// See [`Dataflow::restored`].
    fn restored<D, R>(
        &mut self,
        name: &str,
    ) -> Result<Option<VecCollection<'s, u64, D, R>>, BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup;

    /// See [`Dataflow::checkpoint`].
    fn checkpoint<D, R>(
        &mut self,
        name: &str,
        collection: VecCollection<'s, u64, D, R>,
    ) -> Result<(), BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup;
}

impl<'s> Checkpoints<'s> for Dataflow<'s> {
    fn checkpointed<D, R>(
        &mut self,
        name: &str,
        collection: VecCollection<'s, u64, D, R>,
    ) -> Result<VecCollection<'s, u64, D, R>, BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup,
    {
        Dataflow::checkpointed(self, name, collection)
    }

    fn align_epochs(&mut self, every: u64) {
        Dataflow::align_epochs(self, every);
    }

    fn restored<D, R>(
        &mut self,
        name: &str,
    ) -> Result<Option<VecCollection<'s, u64, D, R>>, BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup,
    {
        Dataflow::restored(self, name)
    }

    fn checkpoint<D, R>(
        &mut self,
        name: &str,
        collection: VecCollection<'s, u64, D, R>,
    ) -> Result<(), BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup,
    {
        Dataflow::checkpoint(self, name, collection)
    }
}

/// Checkpoints nothing: for a part of a dataflow run alone, outside a job.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCheckpoints;

impl<'s> Checkpoints<'s> for NoCheckpoints {
    fn checkpointed<D, R>(
        &mut self,
        _name: &str,
        collection: VecCollection<'s, u64, D, R>,
    ) -> Result<VecCollection<'s, u64, D, R>, BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup,
    {
        Ok(collection)
    }

    fn align_epochs(&mut self, _every: u64) {}

    fn restored<D, R>(
        &mut self,
        _name: &str,
    ) -> Result<Option<VecCollection<'s, u64, D, R>>, BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup,
    {
        Ok(None)
    }

    fn checkpoint<D, R>(
        &mut self,
        _name: &str,
        _collection: VecCollection<'s, u64, D, R>,
    ) -> Result<(), BuildError>
    where
        D: ExchangeData + Hashable + std::hash::Hash,
        R: ExchangeData + Semigroup,
    {
        Ok(())
    }
}
