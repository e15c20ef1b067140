//! A real Kafka-compatible broker for the tests: tansu (a Rust implementation of the Kafka
//! protocol, from crates.io), started on a free loopback port and stopped when the handle
//! drops. `tests/run-all.sh` installs it when it is missing.
//!
//! Storage is SQLite in a temporary folder, not `memory://`: tansu 0.6's memory engine
//! acknowledges multi-record batches but keeps fewer records than it acknowledged (seen
//! here: 5,108 of 5,338 changes readable after librdkafka's default batching, all 5,338 with
//! one record per batch or with SQLite storage).

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running broker.
pub struct Tansu {
    child: Child,
    /// `host:port` for `bootstrap.servers`.
    pub brokers: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The tansu binary: `$CAP_TANSU`, else `tansu` on the PATH, else `~/.cargo/bin/tansu`.
pub fn tansu_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CAP_TANSU") {
        return Ok(PathBuf::from(p));
    }
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("tansu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu")));
    for c in candidates {
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!(
        "the tansu broker is not installed: tests/run-all.sh installs it \
         (cargo install tansu --locked --features dynostore,libsql), or set CAP_TANSU"
    )
}

impl Tansu {
    /// Starts a broker on a free loopback port with SQLite storage in a temporary folder and
    /// waits until it accepts connections.
    pub fn start() -> Result<Tansu> {
        let bin = tansu_binary()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("tansu.log");
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.path().join("tansu.err"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut broker = Tansu {
            child,
            brokers: format!("127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&broker.brokers).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!("tansu exited at start ({status}): {}", broker.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "tansu did not listen on {} in 30 s: {}",
                    broker.brokers,
                    broker.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(broker)
    }

    /// What the broker logged so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
