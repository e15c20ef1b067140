//! The gold Parquet tables of the flagship job, read back by independent readers (pyarrow
//! and DuckDB, `tests/read_lake.py`) and compared with the JSON-lines file sink of the same
//! run, which the other end-to-end tests check against batch computations: every table's
//! snapshot holds the same rows with the documented types, and its changelog holds exactly
//! the changes the file sink's changelog holds, each once.
//!
//! With kills: a supervised run with checkpoints is killed three times, and the lake it
//! leaves is still equal to its file sink's output, which equals an uninterrupted run's:
//! the Parquet sink passes the same replay test as the file sink.
//!
//! S3: the same check against moto's S3-compatible server on loopback, read back with boto3.
//!
//! HDFS: no namenode can run on these machines; with `CAP_TEST_HDFS_URL` set (e.g.
//! `hdfs://namenode:8020/tmp/cap-test`) the last test writes the gold tables there and
//! reads their snapshots back through the engine's own lake client. Without it the test
//! says so and checks nothing else.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use cap_tests::supervise::{newest_checkpoint, supervise_with_kills};
use cap_tests::{generate_csv, run_on_csv, snapshot_tables};

/// Runs `tests/read_lake.py` over `lake` and the file sink's `out`, for every table in
/// `out`; returns its report.
fn read_lake(lake: &Path, out: &Path) -> Result<String> {
    read_lake_with(&[lake.as_os_str().into()], out)
}

/// `tests/read_lake.py` with `lake` as its first arguments (a path, or `--s3-endpoint E URL`).
fn read_lake_with(lake: &[std::ffi::OsString], out: &Path) -> Result<String> {
    let tables = snapshot_tables(out)?;
    ensure!(
        tables.len() >= 10,
        "only {} tables in {}",
        tables.len(),
        out.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("read_lake.py");
    let run = Command::new("python3")
        .arg(&script)
        .args(lake)
        .arg(out)
        .args(&tables)
        .output()
        .context("running python3 tests/read_lake.py (pyarrow and duckdb from PyPI)")?;
    let report = String::from_utf8_lossy(&run.stdout).into_owned();
    ensure!(
        run.status.success(),
        "read_lake.py: {}\n{report}",
        String::from_utf8_lossy(&run.stderr)
    );
    for t in &tables {
        ensure!(
            report.contains(&format!("{t}: ")),
            "{t} was not checked:\n{report}"
        );
    }
    Ok(report)
}

#[test]
fn gold_tables_read_by_pyarrow_and_duckdb_equal_the_file_sinks_tables() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 40_000, 17, &[])?;
    let out = dir.path().join("out");
    // Small files (an epoch every 2000 records) and compaction every 4 files.
    run_on_csv(
        &csv,
        &out,
        "2",
        "2000",
        &[
            "--set",
            "sinks.kind=file,parquet",
            "--set",
            "sinks.parquet.compact_files=4",
        ],
    )?;
    let report = read_lake(&out.join("lake"), &out)?;
    // Non-trivial: rows and changes in the big tables.
    ensure!(
        report
            .lines()
            .any(|l| l.starts_with("customer_traits: ") && !l.contains(": 0 rows")),
        "{report}"
    );
    Ok(())
}

#[test]
fn a_killed_run_leaves_a_lake_equal_to_an_uninterrupted_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 60_000, 23, &[])?;
    let straight = dir.path().join("straight");
    run_on_csv(
        &csv,
        &straight,
        "2",
        "3000",
        &["--set", "sinks.kind=file,parquet"],
    )?;
    let out = dir.path().join("killed");
    let input = vec!["--input".to_owned(), csv.display().to_string()];
    let log = supervise_with_kills(
        &input,
        &out,
        &[
            "--checkpoint-ms",
            "150",
            "--set",
            "sinks.kind=file,parquet",
            "--set",
            "sinks.parquet.compact_files=3",
        ],
        3,
        |state, seen| newest_checkpoint(state) > seen,
    )?;
    ensure!(
        log.contains("restoring"),
        "no restart restored a checkpoint:\n{log}"
    );
    read_lake(&out.join("lake"), &out)?;
    // The killed run's file sink equals the uninterrupted one's (the lake equals each).
    for table in snapshot_tables(&straight)? {
        let a = std::fs::read_to_string(straight.join(format!("{table}.jsonl")))?;
        let b = std::fs::read_to_string(out.join(format!("{table}.jsonl")))?;
        ensure!(a == b, "{table}: the killed run's snapshot differs");
    }
    read_lake(&straight.join("lake"), &straight)?;
    Ok(())
}

/// moto's S3-compatible server (PyPI) on a loopback port, stopped on drop.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> Result<S3Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context(
                "starting moto's S3 server (python3 -m moto.server; moto[server] from PyPI)",
            )?;
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            ensure!(
                std::time::Instant::now() < deadline,
                "moto did not start on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(server)
    }

    /// Creates `bucket` with boto3 (object stores have no bucket creation).
    fn create_bucket(&self, bucket: &str) -> Result<()> {
        let code = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', aws_access_key_id='test', \
             aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')",
            self.endpoint
        );
        let run = Command::new("python3").args(["-c", &code]).output()?;
        ensure!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn gold_tables_on_an_s3_compatible_server_equal_the_file_sinks_tables() -> Result<()> {
    let s3 = S3Server::start()?;
    s3.create_bucket("lake")?;
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 20_000, 29, &[])?;
    let out = dir.path().join("out");
    let endpoint = format!("sinks.parquet.options.aws_endpoint={}", s3.endpoint);
    let args = [
        "--set",
        "sinks.kind=file,parquet",
        "--set",
        "sinks.parquet.url=s3://lake/cap",
        "--set",
        &endpoint,
        "--set",
        "sinks.parquet.options.aws_allow_http=true",
        "--set",
        "sinks.parquet.options.aws_access_key_id=test",
        "--set",
        "sinks.parquet.options.aws_secret_access_key=test",
        "--set",
        "sinks.parquet.options.aws_region=us-east-1",
    ];
    run_on_csv(&csv, &out, "2", "2000", &args)?;
    ensure!(!out.join("lake").exists(), "the lake went to local disk");
    read_lake_with(
        &[
            "--s3-endpoint".into(),
            s3.endpoint.clone().into(),
            "s3://lake/cap".into(),
        ],
        &out,
    )?;
    Ok(())
}

#[test]
fn gold_tables_on_hdfs_when_a_namenode_is_given() -> Result<()> {
    let Ok(url) = std::env::var("CAP_TEST_HDFS_URL") else {
        eprintln!("CAP_TEST_HDFS_URL is not set: no HDFS namenode to write to (docs/lakehouse.md)");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 5_000, 3, &[])?;
    let out = dir.path().join("out");
    run_on_csv(
        &csv,
        &out,
        "2",
        "1000",
        &[
            "--set",
            "sinks.kind=file,parquet",
            "--set",
            &format!("sinks.parquet.url={url}"),
        ],
    )?;
    let lake = cap_connectors::lake::Lake::open(&url, &Default::default())?;
    for table in snapshot_tables(&out)? {
        let bytes = lake
            .get(&format!("gold/{table}/snapshot/snapshot.parquet"))?
            .with_context(|| format!("no snapshot of {table} on {url}"))?;
        let rows = parquet::file::reader::SerializedFileReader::new(bytes).map(|r| {
            parquet::file::reader::FileReader::metadata(&r)
                .file_metadata()
                .num_rows()
        })?;
        let want = std::fs::read_to_string(out.join(format!("{table}.jsonl")))?
            .lines()
            .count();
        ensure!(
            rows as usize == want,
            "{table}: {rows} rows on HDFS, {want} in the file sink"
        );
    }
    Ok(())
}
