//! Lakehouse sink benchmark: `customer_traits` changes into the Parquet gold table on local
//! disk, through the sink the job uses (background writer, changelog files, compaction,
//! snapshots).
//!
//! ```text
//! cargo bench -p cap-benches --bench lakehouse -- [--changes N] [--users N]
//!     [--epoch-changes N] [--snapshot-ms N] [--dir DIR]
//! ```
//! The rows are made before the clock starts; their packing into changes (the key's JSON
//! and the row packed by its columns, as the engine's sink operator hands them to a
//! columnar writer) runs on the calling thread inside the measured span. Reports:
//! - rows/s: changelog rows written (a changed key is two rows, -1 old and +1 new; a new
//!   key one) per second of wall time, from the first epoch handed to the sink until its
//!   close returned with everything written;
//! - rows per CPU-second: the same rows over the CPU time of the whole process in that
//!   span (the writer thread, plus the handing over on the calling thread), i.e. per core;
//! - the stall of the calling (worker) thread: hdrhistogram percentiles of each
//!   `write_epoch` call, which only queues the epoch for the writer thread;
//! - the lake's size: changelog files and bytes, snapshot bytes.

use std::time::Instant;

use cap_engine::config::ParquetSinkConfig;
use cap_engine::sink::{Change, TableRow, TableWriter};
use cap_engine::time::UtcTime;
use cap_engine::values::Money;
use clap::Parser;
use customer_analytics::tables::customers::CustomerTraitsRow;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(about = "customer_traits changes into the Parquet gold table on local disk")]
struct Args {
    /// Changes handed to the sink.
    #[arg(long, default_value_t = 2_000_000)]
    changes: u64,
    /// Distinct customers the changes are about.
    #[arg(long, default_value_t = 500_000)]
    users: u64,
    /// Changes per epoch.
    #[arg(long, default_value_t = 50_000)]
    epoch_changes: u64,
    /// Milliseconds between snapshot rewrites (the job's default is 5000).
    #[arg(long, default_value_t = 5000)]
    snapshot_ms: u64,
    /// Where the lake goes (default: a temporary directory).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Accepted for `cargo bench` compatibility.
    #[arg(long, hide = true)]
    bench: bool,
}

/// CPU seconds of this process so far (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name: utime is the 14th field, stime the 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|x| x.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Epochs of rows: random customers get new traits, sorted by key as the sink gives them.
fn make_epochs(args: &Args) -> anyhow::Result<(Vec<Vec<CustomerTraitsRow>>, u64)> {
    let mut rng = 42u64;
    let mut seen = vec![false; args.users as usize];
    let mut rows = 0u64;
    let mut epochs = Vec::new();
    let mut left = args.changes;
    while left > 0 {
        let n = left.min(args.epoch_changes);
        left -= n;
        let mut by_user = std::collections::BTreeMap::new();
        for _ in 0..n {
            let user = splitmix(&mut rng) % args.users;
            let r = splitmix(&mut rng);
            let first = 1_572_566_400_000 + (r % 2_592_000_000) as i64;
            let purchases = r % 4;
            let row = CustomerTraitsRow {
                user_id: 512_000_000 + user,
                first_seen: UtcTime(first),
                last_seen: UtcTime(first + (r % 86_400_000) as i64),
                sessions: 1 + r % 9,
                views: 1 + r % 40,
                carts: r % 5,
                purchases,
                revenue: Money((r % 200_000) as i64 * purchases as i64),
                avg_order_value: Money((r % 200_000) as i64),
                distinct_products: 1 + r % 30,
                top_category: format!("electronics.category{}", r % 97).into(),
            };
            by_user.insert(user, row);
        }
        let mut changes = Vec::with_capacity(by_user.len());
        for (user, row) in by_user {
            rows += if seen[user as usize] { 2 } else { 1 };
            seen[user as usize] = true;
            changes.push(row);
        }
        epochs.push(changes);
    }
    Ok((epochs, rows))
}

fn dir_size(dir: &std::path::Path) -> (u64, u64) {
    let mut files = 0;
    let mut bytes = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = e.metadata() {
            files += 1;
            bytes += m.len();
        }
    }
    (files, bytes)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (epochs, rows) = make_epochs(&args)?;
    let changes: usize = epochs.iter().map(Vec::len).sum();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_owned());
    let cfg = ParquetSinkConfig {
        url: dir.display().to_string(),
        ..ParquetSinkConfig::default()
    };
    let schema = CustomerTraitsRow::schema();
    let mut sink = cap_connectors::lake::ParquetTableSink::open(
        "customer_traits",
        schema.as_ref(),
        &cfg,
        &dir,
        args.snapshot_ms,
    )?;
    sink.begin(false)?;
    let mut stall = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let schema = schema.ok_or_else(|| anyhow::anyhow!("customer_traits declares no columns"))?;
    for (e, epoch) in epochs.iter().enumerate() {
        let mut changes = Vec::with_capacity(epoch.len());
        for row in epoch {
            let mut packed = Vec::with_capacity(96);
            cap_engine::packed::pack(row, &schema, &mut packed)?;
            changes.push(Change {
                key: serde_json::to_string(&row.key())?,
                row: Some(String::new()),
                packed: Some(packed),
            });
        }
        let t = Instant::now();
        sink.write_epoch(e as u64, &changes)?;
        stall.record((t.elapsed().as_micros() as u64).max(1))?;
    }
    sink.close()?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let (files, changelog_bytes) = dir_size(&dir.join("gold/customer_traits/changelog"));
    let snapshot =
        std::fs::metadata(dir.join("gold/customer_traits/snapshot/snapshot.parquet"))?.len();
    println!(
        "customer_traits -> parquet: {changes} changes in {} epochs, {rows} changelog rows, {} customers",
        epochs.len(),
        args.users
    );
    println!(
        "wall {secs:.2}s: {:.2} M rows/s ({:.2} M changes/s); CPU {cpu:.2}s: {:.2} M rows per CPU-second",
        rows as f64 / secs / 1e6,
        changes as f64 / secs / 1e6,
        rows as f64 / cpu.max(1e-9) / 1e6
    );
    println!(
        "write_epoch stall (calling thread) per epoch of {} changes: p50 {} us, p99 {} us, max {} us",
        args.epoch_changes,
        stall.value_at_quantile(0.5),
        stall.value_at_quantile(0.99),
        stall.max()
    );
    println!(
        "lake: {files} changelog files, {:.1} MiB ({:.1} B/row); snapshot {:.1} MiB",
        changelog_bytes as f64 / 1048576.0,
        changelog_bytes as f64 / rows as f64,
        snapshot as f64 / 1048576.0
    );
    Ok(())
}
