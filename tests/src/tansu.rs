//! A real Kafka-compatible broker for the tests: tansu (a Rust implementation of the Kafka
//! protocol, from crates.io), started on a free loopback port and stopped when the handle
//! drops. `tests/run-all.sh` installs it when it is missing.
//!
//! Storage is SQLite in a temporary folder, not `memory://`: tansu 0.6's memory engine
//! acknowledges multi-record batches but keeps fewer records than it acknowledged (seen
//! here: 5,108 of 5,338 changes readable after librdkafka's default batching, all 5,338 with
//! one record per batch or with SQLite storage).

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running broker.
pub struct Tansu {
    child: Child,
    /// `host:port` for `bootstrap.servers`.
    pub brokers: String,
    log: PathBuf,
    dir: tempfile::TempDir,
    storage: String,
    /// What tansu advertises in its metadata (`host:port`): `brokers` unless a proxy
    /// stands in front of it.
    advertised: String,
    /// Whether clients must authenticate (SASL SCRAM).
    authentication: bool,
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
        Tansu::start_with_storage("sqlite://tansu.db")
    }

    /// Starts a broker with the storage engine `storage` (`sqlite://tansu.db`, relative to
    /// its temporary folder, or `memory://tansu/`, which is faster but, in tansu 0.6, may
    /// keep fewer records of multi-record batches than it acknowledged).
    pub fn start_with_storage(storage: &str) -> Result<Tansu> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("tansu.log");
        let brokers = format!("127.0.0.1:{port}");
        let child = spawn(dir.path(), &brokers, &brokers, storage, false)?;
        let mut broker = Tansu {
            child,
            advertised: brokers.clone(),
            brokers,
            storage: storage.to_owned(),
            log,
            dir,
            authentication: false,
        };
        broker.wait_listening()?;
        Ok(broker)
    }

    /// Kills the broker (as a crash would) and waits for it to exit. Its storage stays.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the broker again on the same port over the same storage (after [`kill`]).
    ///
    /// [`kill`]: Tansu::kill
    pub fn restart(&mut self) -> Result<()> {
        self.child = spawn(
            self.dir.path(),
            &self.brokers,
            &self.advertised,
            &self.storage,
            self.authentication,
        )?;
        self.wait_listening()
    }

    /// Creates the SCRAM-SHA-512 user `name`, then restarts the broker requiring SASL
    /// authentication and advertising `advertised` (a proxy's `host:port`) instead of its
    /// own listener. tansu keeps users in its storage, so they survive the restart.
    pub fn require_scram(&mut self, name: &str, password: &str, advertised: &str) -> Result<()> {
        let out = Command::new(tansu_binary()?)
            .args(["user", "create", "--mechanism", "scram512", "--broker"])
            .arg(format!("tcp://{}", self.brokers))
            .args([name, password])
            .output()
            .context("running tansu user create")?;
        if !out.status.success() {
            bail!(
                "tansu user create {name} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.kill()?;
        self.authentication = true;
        self.advertised = advertised.to_owned();
        self.restart()
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.brokers).is_err() {
            if let Some(status) = self.child.try_wait()? {
                bail!("tansu exited at start ({status}): {}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "tansu did not listen on {} in 30 s: {}",
                    self.brokers,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// What the broker logged so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts tansu in `dir` with the storage engine `storage`, listening on `brokers` and
/// advertising `advertised`, with SASL authentication required when `authentication`.
fn spawn(
    dir: &Path,
    brokers: &str,
    advertised: &str,
    storage: &str,
    authentication: bool,
) -> Result<Child> {
    let bin = tansu_binary()?;
    let url = format!("tcp://{brokers}");
    let advertised = format!("tcp://{advertised}");
    // Appends, so a restarted broker's log follows the first one's.
    let append = |name: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))
    };
    Command::new(&bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &advertised,
        ])
        .args(["--storage-engine", storage])
        .args(authentication.then_some("--authentication"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(append("tansu.log")?)
        .stderr(append("tansu.err")?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
