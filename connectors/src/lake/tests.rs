//! The gold-table sink against a sequential oracle: seeded random upserts and deletes over
//! many epochs, small files and compaction, a crash and a replay.

use std::collections::{BTreeMap, BTreeSet};

use cap_engine::config::ParquetSinkConfig;
use cap_engine::sink::{Change, ColumnType, TableSchema, TableWriter};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use super::gold::ParquetTableSink;
use super::store::Lake;

fn schema() -> TableSchema {
    use ColumnType::*;
    TableSchema::new(
        1,
        &["k"],
        &[
            ("k", UInt64),
            ("day", Date),
            ("at", Timestamp),
            ("amount", Money),
            ("name", Text),
            ("ratio", Float64),
            ("flag", Bool),
        ],
    )
    .nullable("name")
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn row(k: u64, v: u64) -> String {
    let name = if v % 5 == 0 {
        "null".to_owned()
    } else {
        format!("\"n\\\"{v}é\"")
    };
    format!(
        "{{\"k\":{k},\"day\":\"2019-11-{:02}\",\"at\":\"2019-11-03T10:{:02}:{:02}Z\",\"amount\":{}.{:02},\"name\":{name},\"ratio\":{},\"flag\":{}}}",
        1 + v % 28,
        v % 60,
        (v / 60) % 60,
        v % 1000,
        v % 100,
        (v % 7) as f64 / 8.0,
        v % 2 == 0
    )
}

/// Epoch `e`'s changes: random keys of `0..keys` get a new row or leave, sorted by key.
fn epoch_changes(seed: u64, e: u64, keys: u64) -> Vec<Change> {
    let mut rng = Rng(seed ^ e.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut changed = BTreeMap::new();
    for _ in 0..rng.below(40) {
        let k = rng.below(keys);
        let v = rng.next() % 100_000;
        changed.insert(k, (rng.below(4) != 0).then(|| row(k, v)));
    }
    changed
        .into_iter()
        .map(|(k, row)| Change {
            key: format!("{{\"k\":{k}}}"),
            row,
            packed: None,
        })
        .collect()
}

/// The same changes as the engine's sink operator hands them to a columnar writer: rows
/// packed by the table's columns, no row JSON.
fn packed(changes: Vec<Change>) -> anyhow::Result<Vec<Change>> {
    changes
        .into_iter()
        .map(|c| {
            let packed = match &c.row {
                Some(json) => {
                    let mut bytes = Vec::new();
                    cap_engine::packed::pack(
                        &serde_json::from_str::<Value>(json)?,
                        &schema(),
                        &mut bytes,
                    )?;
                    Some(bytes)
                }
                None => None,
            };
            Ok(Change {
                row: c.row.map(|_| String::new()),
                packed,
                ..c
            })
        })
        .collect()
}

fn config(file_rows: usize, compact_files: usize) -> ParquetSinkConfig {
    ParquetSinkConfig {
        file_rows,
        row_group_rows: 64,
        compact_files,
        queue_epochs: 4,
        ..ParquetSinkConfig::default()
    }
}

fn sink(dir: &std::path::Path, cfg: &ParquetSinkConfig) -> anyhow::Result<ParquetTableSink> {
    let cfg = ParquetSinkConfig {
        url: dir.display().to_string(),
        ..cfg.clone()
    };
    Ok(ParquetTableSink::open("t", Some(&schema()), &cfg, dir, 0)?)
}

/// Every row of a Parquet object as JSON (Arrow's JSON of the typed columns).
fn read_rows(bytes: bytes::Bytes) -> anyhow::Result<Vec<Value>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut out = Vec::new();
    for batch in reader {
        let mut w = arrow_json::LineDelimitedWriter::new(Vec::new());
        w.write_batches(&[&batch?])?;
        w.finish()?;
        for line in String::from_utf8(w.into_inner())?.lines() {
            out.push(numbers_as_floats(serde_json::from_str(line)?));
        }
    }
    Ok(out)
}

/// A JSON row as the Parquet round trip gives it back: null fields absent, money and
/// ratios as numbers.
fn normal(row: &str) -> anyhow::Result<Value> {
    Ok(numbers_as_floats(serde_json::from_str(row)?))
}

/// Null fields dropped, every number as a float (`0` and `0.0` are one value).
fn numbers_as_floats(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| !x.is_null());
        for x in o.values_mut() {
            if let Some(f) = x.as_f64() {
                *x = Value::from(f);
            }
        }
    }
    v
}

/// The table's snapshot and every changelog line, read back from the lake.
struct ReadBack {
    snapshot: Vec<Value>,
    /// `(epoch, seq, diff, key, row)` in file order.
    changelog: Vec<(u64, u64, i64, String, Value)>,
    files: Vec<(u64, u64)>,
}

fn read_back(dir: &std::path::Path) -> anyhow::Result<ReadBack> {
    let lake = Lake::open(&dir.display().to_string(), &BTreeMap::new())?;
    let snapshot = read_rows(
        lake.get("gold/t/snapshot/snapshot.parquet")?
            .ok_or_else(|| anyhow::anyhow!("no snapshot"))?,
    )?;
    let mut changelog = Vec::new();
    let mut files = Vec::new();
    for (name, _) in lake.list("gold/t/changelog")? {
        if name.starts_with('.') {
            continue; // not a changelog file (the sink leaves it alone too)
        }
        let body = name
            .strip_prefix("part-")
            .and_then(|n| n.strip_suffix(".parquet"))
            .ok_or_else(|| anyhow::anyhow!("stray object {name}"))?;
        let (a, b) = body
            .split_once('-')
            .ok_or_else(|| anyhow::anyhow!("bad name {name}"))?;
        files.push((a.parse()?, b.parse()?));
        for mut line in read_rows(
            lake.get(&format!("gold/t/changelog/{name}"))?
                .ok_or_else(|| anyhow::anyhow!("vanished"))?,
        )? {
            let o = line
                .as_object_mut()
                .ok_or_else(|| anyhow::anyhow!("not an object"))?;
            // Numbers were read back as floats (see `numbers_as_floats`).
            let mut int = |name: &str| o.remove(name).and_then(|v| v.as_f64()).map(|f| f as i64);
            let epoch = int("epoch").unwrap_or(-1) as u64;
            let seq = int("seq").unwrap_or(-1) as u64;
            let diff = int("diff").unwrap_or(0);
            let key = o
                .remove("key")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            changelog.push((epoch, seq, diff, key, line));
        }
    }
    Ok(ReadBack {
        snapshot,
        changelog,
        files,
    })
}

/// The oracle: the table after epochs `0..epochs`, by key.
fn oracle(seed: u64, epochs: u64, keys: u64) -> BTreeMap<u64, String> {
    let mut table = BTreeMap::new();
    for e in 0..epochs {
        for c in epoch_changes(seed, e, keys) {
            let k: u64 = c.key[5..c.key.len() - 1].parse().unwrap_or(u64::MAX);
            match c.row {
                Some(r) => table.insert(k, r),
                None => table.remove(&k),
            };
        }
    }
    table
}

fn check_against_oracle(read: &ReadBack, table: &BTreeMap<u64, String>) -> anyhow::Result<()> {
    // The snapshot is the table, in key order.
    let expected: Vec<Value> = table
        .values()
        .map(|r| normal(r))
        .collect::<Result<_, _>>()?;
    assert_eq!(read.snapshot, expected, "snapshot");
    // Summing diffs over the changelog gives the table.
    let mut sum: BTreeMap<(String, String), i64> = BTreeMap::new();
    for (_, _, diff, key, row) in &read.changelog {
        *sum.entry((key.clone(), row.to_string())).or_default() += diff;
    }
    sum.retain(|_, d| *d != 0);
    let mut expected_sum = BTreeMap::new();
    for (k, r) in table {
        expected_sum.insert((format!("{{\"k\":{k}}}"), normal(r)?.to_string()), 1);
    }
    assert_eq!(sum, expected_sum, "changelog sums");
    // (epoch, seq) is unique and ordered; files hold disjoint epochs in name order.
    let ids: Vec<(u64, u64)> = read.changelog.iter().map(|l| (l.0, l.1)).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "(epoch, seq) unique and in order");
    for pair in read.files.windows(2) {
        assert!(pair[0].1 < pair[1].0, "overlapping files {pair:?}");
    }
    Ok(())
}

#[test]
fn changelog_and_snapshot_equal_the_oracle_with_small_files_and_compaction() -> anyhow::Result<()> {
    // Rows as JSON (a writer fed by something other than the engine) and packed (as the
    // engine's sink operator hands them over).
    for (seed, file_rows, compact, pack) in [
        (1, 1_000_000, 0, false),
        (2, 50, 3, false),
        (3, 7, 4, true),
        (4, 1_000_000, 0, true),
    ] {
        let dir = tempfile::tempdir()?;
        let mut s = sink(dir.path(), &config(file_rows, compact))?;
        s.begin(false)?;
        for e in 0..60 {
            let changes = epoch_changes(seed, e, 30);
            s.write_epoch(e, &if pack { packed(changes)? } else { changes })?;
        }
        s.close()?;
        assert_eq!(s.unpublished(), None);
        let read = read_back(dir.path())?;
        check_against_oracle(&read, &oracle(seed, 60, 30))?;
        if compact > 0 {
            // Compaction ran: fewer files than the epochs that were written one by one.
            assert!(
                read.files.len() < 60,
                "seed {seed}: {} files",
                read.files.len()
            );
        }
    }
    Ok(())
}

#[test]
fn a_replay_after_a_crash_writes_every_epoch_once() -> anyhow::Result<()> {
    let seed = 7;
    let straight = tempfile::tempdir()?;
    let mut s = sink(straight.path(), &config(1_000_000, 0))?;
    s.begin(false)?;
    for e in 0..20 {
        s.write_epoch(e, &epoch_changes(seed, e, 25))?;
    }
    s.close()?;

    let dir = tempfile::tempdir()?;
    let mut s = sink(dir.path(), &config(40, 0))?;
    s.begin(false)?;
    for e in 0..12 {
        s.write_epoch(e, &epoch_changes(seed, e, 25))?;
    }
    drop(s); // a crash: no close (what was queued is written, nothing after it)
             // Half an epoch's file as a crash mid-put leaves it on a store without atomic puts:
             // not a changelog name, so it is left alone and never read.
    std::fs::write(
        dir.path().join("gold/t/changelog/.part-12.parquet.tmp"),
        b"PAR1 torn",
    )?;
    let mut replay = sink(dir.path(), &config(40, 2))?;
    replay.begin(true)?;
    // The restored run replays from epoch 5 on; epochs up to 11 are in the changelog.
    for e in 5..20 {
        replay.write_epoch(e, &epoch_changes(seed, e, 25))?;
    }
    replay.close()?;
    let read = read_back(dir.path())?;
    let want = read_back(straight.path())?;
    check_against_oracle(&read, &oracle(seed, 20, 25))?;
    assert_eq!(read.snapshot, want.snapshot);
    assert_eq!(
        read.changelog, want.changelog,
        "the same lines as an uninterrupted run"
    );
    Ok(())
}

#[test]
fn a_restore_drops_the_small_files_a_compacted_file_holds() -> anyhow::Result<()> {
    let seed = 11;
    let dir = tempfile::tempdir()?;
    let mut s = sink(dir.path(), &config(1_000_000, 0))?;
    s.begin(false)?;
    for e in 0..6 {
        s.write_epoch(e, &epoch_changes(seed, e, 20))?;
        // One file per epoch: wait until each is published.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while s.unpublished().is_some() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "epoch {e} never published"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    s.close()?;
    let lake = Lake::open(&dir.path().display().to_string(), &BTreeMap::new())?;
    let before: BTreeSet<String> = lake
        .list("gold/t/changelog")?
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(before.len() >= 2);
    // Compact with a sink that compacts at 2 files, then put one of the small files back,
    // as a crash between writing the merged file and deleting the small ones leaves it.
    let small = before.iter().next().cloned().unwrap_or_default();
    let small_bytes = lake
        .get(&format!("gold/t/changelog/{small}"))?
        .ok_or_else(|| anyhow::anyhow!("gone"))?;
    let mut c = sink(dir.path(), &config(1_000_000, 2))?;
    c.begin(true)?;
    c.write_epoch(6, &epoch_changes(seed, 6, 20))?;
    c.close()?;
    let after = read_back(dir.path())?;
    assert!(after.files.len() < before.len() + 1, "{:?}", after.files);
    lake.put(&format!("gold/t/changelog/{small}"), small_bytes)?;
    let mut r = sink(dir.path(), &config(1_000_000, 0))?;
    r.begin(true)?;
    r.close()?;
    let read = read_back(dir.path())?;
    assert!(
        !lake
            .list("gold/t/changelog")?
            .iter()
            .any(|(n, _)| *n == small),
        "the small file the merged one holds is removed"
    );
    check_against_oracle(&read, &oracle(seed, 7, 20))
}

#[test]
fn a_table_whose_columns_changed_is_not_resumed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = sink(dir.path(), &config(1_000_000, 0))?;
    s.begin(false)?;
    s.write_epoch(0, &epoch_changes(1, 0, 10))?;
    s.close()?;
    let mut other = schema();
    other.version = 2;
    other.columns.pop();
    let cfg = ParquetSinkConfig {
        url: dir.path().display().to_string(),
        ..config(1_000_000, 0)
    };
    let mut s = ParquetTableSink::open("t", Some(&other), &cfg, dir.path(), 0)?;
    let err = s
        .begin(true)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("version 1") && err.contains("version 2"),
        "{err}"
    );
    Ok(())
}

#[test]
fn bad_settings_and_missing_columns_are_clear_errors() {
    let dir = std::path::Path::new("/nonexistent-cap-test");
    let open = |schema: Option<&TableSchema>, cfg: ParquetSinkConfig| {
        ParquetTableSink::open("t", schema, &cfg, dir, 0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let err = open(None, ParquetSinkConfig::default());
    assert!(err.contains("declare") && err.contains("`t`"), "{err}");
    let err = open(
        Some(&schema()),
        ParquetSinkConfig {
            zstd_level: 30,
            ..ParquetSinkConfig::default()
        },
    );
    assert!(err.contains("zstd_level"), "{err}");
    let mut clash = schema();
    clash.columns[1].name = "epoch".into();
    let err = open(Some(&clash), ParquetSinkConfig::default());
    assert!(err.contains("epoch"), "{err}");
}

#[test]
fn a_row_that_does_not_fit_the_columns_stops_the_writer_at_its_epoch() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut s = sink(dir.path(), &config(1_000_000, 0))?;
    s.begin(false)?;
    s.write_epoch(0, &epoch_changes(9, 0, 10))?;
    while s.unpublished().is_some() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let bad = Change {
        key: "{\"k\":3}".into(),
        row: Some(row(3, 7).replace("\"k\":3", "\"k\":\"three\"")),
        packed: None,
    };
    // The write is queued; the writer stops on it and says why.
    let _ = s.write_epoch(1, &[bad]);
    let err = s.close().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("column `k`") && err.contains("three"), "{err}");
    assert_eq!(s.unpublished(), Some(1), "the bad epoch is never published");
    let read = read_back(dir.path())?;
    assert!(
        read.changelog.iter().all(|l| l.0 == 0),
        "only epoch 0 is in the lake"
    );
    Ok(())
}
