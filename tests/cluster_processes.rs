//! Two processes of one worker each, over loopback with timely's own communication, give
//! the same outputs as one process with one worker, for every table of the job.

use std::net::TcpListener;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use cap_tests::{job_binary, read_jsonl, run_job};

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

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

    let hostfile = dir.path().join("hosts.txt");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port()?, free_port()?),
    )?;
    let multi = dir.path().join("multi");
    let bin = job_binary()?;
    let mut children = Vec::new();
    for p in ["0", "1"] {
        let mut cmd = Command::new(&bin);
        cmd.args([
            "run",
            "-w",
            "1",
            "-n",
            "2",
            "-p",
            p,
            "--hostfile",
            hostfile.to_str().context("path")?,
            "-o",
            multi.to_str().context("path")?,
        ]);
        cmd.args(common)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        children.push(cmd.spawn()?);
    }
    for child in children {
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "a process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

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
