//! Checkpoint benchmark: generator -> customer-analytics -> null sinks, with and without
//! checkpoints, then restarts from them.
//!
//! ```text
//! cargo bench -p cap-benches --bench checkpoint -- [--events N] [--users N] [--workers N]
//!     [--interval-ms 10000] [--epoch-records N] [--set KEY=VALUE]...
//! ```
//! Reports, for the same generated events:
//! - events/s without checkpoints and with one every `--interval-ms`, and the overhead;
//! - per checkpoint: its epoch, the records and bytes it wrote (deltas, and the bases of
//!   chains folded), the records and bytes a restore from it reads (its chains), and the
//!   longest a worker stopped to hand its changes over (the only pause; compressing and
//!   writing run off-thread), from the manifests;
//! - the newest checkpoint's bytes per customer (customers: distinct users of the input,
//!   counted by a separate pass over the generator);
//! - restart to caught-up: the wall time of a run restoring the newest checkpoint (at the
//!   input's end: nothing to replay, so this is loading, re-feeding and recomputing every
//!   table), and of a run restoring the checkpoint an interval before (a crash just before
//!   a checkpoint: it also replays an interval of input).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;

use cap_benches::{generated_customers, run_pipeline_with};
use cap_connectors::generator::GeneratorConfig;
use cap_engine::checkpoint::store::{self, Manifest};

#[derive(Parser, Debug)]
#[command(about = "checkpoint overhead, size per customer and restart time of customer-analytics")]
struct Args {
    /// Events per run.
    #[arg(long, default_value_t = 2_000_000)]
    events: u64,
    /// Generator user population (default: the generator's, 200 000).
    #[arg(long)]
    users: Option<u64>,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Milliseconds between checkpoints.
    #[arg(long, default_value_t = 10_000)]
    interval_ms: u64,
    /// Records per epoch per worker.
    #[arg(long, default_value_t = 100_000)]
    epoch_records: u64,
    /// Extra configuration KEY=VALUE.
    #[arg(long = "set")]
    set: Vec<String>,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = PathBuf::from("target/bench-checkpoint");
    let _ = std::fs::remove_dir_all(&root);
    let users = args.users.unwrap_or(GeneratorConfig::default().users);
    let mut base = args.set.clone();
    // The generator stops by itself after `events`: every run, restarts included, reads the
    // same events.
    base.push(format!("sources.clickstream.events={}", args.events));
    base.push(format!("sources.clickstream.users={users}"));
    let customers = generated_customers(GeneratorConfig {
        events: Some(args.events),
        users,
        ..GeneratorConfig::default()
    })?;
    println!(
        "{} events, {customers} customers, {} workers, checkpoints every {} ms",
        args.events, args.workers, args.interval_ms
    );

    let with = |state: &Path, extra: &[String]| -> Vec<String> {
        let mut set = base.clone();
        set.push(format!(
            "engine.state_dir={:?}",
            state.display().to_string()
        ));
        set.extend(extra.iter().cloned());
        set
    };
    let run = |set: Vec<String>| -> anyhow::Result<(cap_engine::runtime::RunReport, f64)> {
        let started = Instant::now();
        let report = run_pipeline_with(
            customer_analytics::CustomerAnalytics,
            args.workers,
            args.epoch_records,
            set,
        )?;
        Ok((report, started.elapsed().as_secs_f64()))
    };

    let (plain, _) = run(with(&root.join("plain"), &[]))?;
    println!("no checkpoints:        {:>10.0} events/s", plain.rate());

    let state = root.join("checkpointed");
    let checkpoints = [
        format!("engine.checkpoint.interval_ms={}", args.interval_ms),
        "engine.checkpoint.keep=1000".to_owned(),
    ];
    let (checkpointed, _) = run(with(&state, &checkpoints))?;
    let overhead = 100.0 * (1.0 - checkpointed.rate() / plain.rate());
    println!(
        "checkpoints:           {:>10.0} events/s  overhead {overhead:.1}%",
        checkpointed.rate()
    );
    let ckpt_root = state.join("checkpoints");
    let mut epochs = store::list(&ckpt_root)?;
    epochs.sort_unstable();
    let mut manifests: Vec<Manifest> = Vec::new();
    for e in &epochs {
        let dir = store::checkpoint_dir(&ckpt_root, *e);
        if dir.join(store::MANIFEST).exists() {
            manifests.push(read_manifest(&dir)?);
        } else {
            println!("  checkpoint at epoch {e:>5}: partial (no manifest): a defect in an uninterrupted run");
        }
    }
    for m in &manifests {
        let written: Vec<_> = m.parts.iter().filter(|p| p.stored_in.is_none()).collect();
        println!(
            "  checkpoint at epoch {:>5}: wrote {:>10} records {:>8.1} MiB ({} bases); a restore reads {:>10} records {:>8.1} MiB; longest worker pause {:>7.3} ms",
            m.epoch,
            written.iter().map(|p| p.records).sum::<u64>(),
            m.written_bytes() as f64 / f64::from(1 << 20),
            written.iter().filter(|p| !p.delta).count(),
            m.parts.iter().map(|p| p.records).sum::<u64>(),
            m.bytes() as f64 / f64::from(1 << 20),
            m.worker_pause_us() as f64 / 1000.0
        );
    }
    let newest = manifests
        .last()
        .ok_or_else(|| anyhow::anyhow!("the checkpointed run wrote no checkpoint"))?;
    println!(
        "newest checkpoint: {:.1} MiB, {:.0} B/customer",
        newest.bytes() as f64 / f64::from(1 << 20),
        newest.bytes() as f64 / customers.max(1) as f64
    );
    let mut by_collection: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
    for p in &newest.parts {
        let e = by_collection.entry(p.collection.as_str()).or_default();
        e.0 += p.records;
        e.1 += p.bytes;
    }
    for (name, (records, bytes)) in by_collection {
        println!(
            "  {name:<22} {records:>10} records {:>8.1} MiB {:>7.1} B/customer",
            bytes as f64 / f64::from(1 << 20),
            bytes as f64 / customers.max(1) as f64
        );
    }

    // A crash an interval before the end: a copy of the state without the checkpoints of
    // the last interval (one interval in epochs: the gap between the first two checkpoints;
    // the input's end is checkpointed at every worker's last epoch, a few epochs apart).
    let earlier = root.join("earlier");
    copy_dir(&state, &earlier)?;
    let gap = match manifests.as_slice() {
        [a, b, ..] => b.epoch - a.epoch,
        _ => 1,
    };
    let before = manifests
        .iter()
        .rev()
        .find(|m| m.epoch + gap <= newest.epoch)
        .map(|m| m.epoch);
    for m in &manifests {
        if before.is_some_and(|b| m.epoch > b) {
            std::fs::remove_dir_all(store::checkpoint_dir(&earlier.join("checkpoints"), m.epoch))?;
        }
    }

    let restore = ["engine.checkpoint.restore=true".to_owned()];
    let restart = |dir: &Path, what: &str| -> anyhow::Result<()> {
        let mut extra = checkpoints.to_vec();
        extra.extend(restore.iter().cloned());
        let (report, secs) = run(with(dir, &extra))?;
        println!(
            "restart to caught-up ({what}): {secs:.2} s, {} events replayed",
            report.records
        );
        Ok(())
    };
    restart(&state, "newest checkpoint, at the end of the input")?;
    if let Some(b) = before {
        restart(
            &earlier,
            &format!(
                "the checkpoint of epoch {b}, {} epochs before the newest",
                newest.epoch - b
            ),
        )?;
    }
    Ok(())
}

fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(store::MANIFEST);
    let text = std::fs::read_to_string(&path)?;
    Ok(serde_json::from_str(&text)?)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let dest = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &dest)?;
        } else {
            std::fs::copy(e.path(), dest)?;
        }
    }
    Ok(())
}
