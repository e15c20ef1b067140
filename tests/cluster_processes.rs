//! Two processes of one worker each, over loopback with timely's own communication, give
//! the same outputs as one process with one worker, for every table of the job.

use anyhow::{ensure, Context, Result};
use cap_tests::{read_jsonl, run_job, run_two_processes};

#[test]
fn two_processes_equal_one_process() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let common = [
        "--max-events",
        "60000",
        "--epoch-records",
        "3000",
        "--no-console",
        "--set",
        "sources.clickstream.partitions=4",
    ];

    let single = dir.path().join("single");
    let mut args = vec!["run", "-w", "1", "-o", single.to_str().context("path")?];
    args.extend_from_slice(&common);
    run_job(&args)?;

    let multi = dir.path().join("multi");
    let mut args = vec!["-o", multi.to_str().context("path")?];
    args.extend_from_slice(&common);
    run_two_processes(dir.path(), &args)?;

    // Every table, k-means included: its final model is a function of the input alone.
    for table in customer_analytics::TABLES {
        let a = read_jsonl(&single.join(format!("{table}.jsonl")))?;
        let b = read_jsonl(&multi.join(format!("{table}.jsonl")))?;
        // The generator's defaults inject no incident into 60k events, and the data is clean.
        let may_be_empty = matches!(table, "dead_letters" | "alerts");
        ensure!(may_be_empty || !a.is_empty(), "{table} is empty");
        ensure!(
            a == b,
            "{table}: 2 processes differ from 1\n1x1: {a:?}\n2x1: {b:?}"
        );
    }
    Ok(())
}
