//! End to end over SASL_SSL with SCRAM-SHA-512: the real `customer-analytics` binary reads
//! its clickstream from and writes every table to a broker that requires TLS and SCRAM,
//! with the security settings passed through from its config file to librdkafka; an
//! independent client (Python confluent-kafka) reads the output topics over the same
//! security and finds the file run's tables.
//!
//! tansu 0.6 authenticates SCRAM itself but never wraps its listener in TLS, so
//! `tests/tls_proxy.py` terminates TLS in front of it with a certificate this test issues
//! from its own CA (openssl CLI), for `127.0.0.1`; tansu advertises the proxy, so every
//! connection of every client goes through TLS.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, ensure, Context, Result};
use cap_tests::kafka_read::python_reader;
use cap_tests::tansu::Tansu;
use cap_tests::{generate_csv, job_binary, run_job, run_on_csv, snapshot_tables};

const USER: &str = "cap-job";
const PASSWORD: &str = "correct horse battery staple";

/// Runs `openssl` with `args` in `dir`, failing with its stderr.
fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (Debian's openssl package)")?;
    ensure!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A self-signed CA `<name>-ca.pem` (with its key) in `dir`.
fn issue_ca(dir: &Path, name: &str) -> Result<PathBuf> {
    let (key, cert) = (format!("{name}-ca.key"), format!("{name}-ca.pem"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-subj",
            &format!("/CN={name} test CA"),
        ],
    )?;
    Ok(dir.join(cert))
}

/// A server certificate for 127.0.0.1 signed by the CA `ca` (`issue_ca(dir, ca)`): returns
/// the certificate and key paths.
fn issue_server_cert(dir: &Path, ca: &str) -> Result<(PathBuf, PathBuf)> {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    )?;
    Ok((dir.join("server.pem"), dir.join("server.key")))
}

/// `tests/tls_proxy.py` in front of a broker, killed on drop.
struct TlsProxy {
    child: Child,
    addr: String,
}

impl TlsProxy {
    fn start(upstream: &str, cert: &Path, key: &Path) -> Result<TlsProxy> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tls_proxy.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(["--listen", &addr, "--upstream", upstream, "--cert"])
            .arg(cert)
            .arg("--key")
            .arg(key)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting python3 tests/tls_proxy.py")?;
        let stdout = child.stdout.take().context("proxy stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "listening" {
            let _ = child.kill();
            bail!("tests/tls_proxy.py did not start: {line:?}");
        }
        Ok(TlsProxy { child, addr })
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A broker that requires SCRAM-SHA-512, behind TLS for 127.0.0.1 issued by the CA `cap`.
struct SecureBroker {
    broker: Tansu,
    proxy: TlsProxy,
    ca: PathBuf,
    /// Holds the CA and server certificates for as long as the broker runs.
    _certs: tempfile::TempDir,
}

impl SecureBroker {
    fn start() -> Result<SecureBroker> {
        let certs = tempfile::tempdir()?;
        let ca = issue_ca(certs.path(), "cap")?;
        let (cert, key) = issue_server_cert(certs.path(), "cap")?;
        let mut broker = Tansu::start()?;
        let proxy = TlsProxy::start(&broker.brokers, &cert, &key)?;
        broker.require_scram(USER, PASSWORD, &proxy.addr)?;
        Ok(SecureBroker {
            broker,
            proxy,
            ca,
            _certs: certs,
        })
    }

    /// The librdkafka security properties of a client that trusts `ca` and logs in with
    /// `password`.
    fn properties(&self, ca: &Path, password: &str) -> Vec<(String, String)> {
        [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", USER),
            ("sasl.password", password),
            ("ssl.ca.location", ca.to_str().unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

/// `[<table>.properties]` in TOML, one line per property.
fn toml_properties(table: &str, properties: &[(String, String)]) -> String {
    let mut text = format!("[{table}.properties]\n");
    for (k, v) in properties {
        text.push_str(&format!("{k:?} = {v:?}\n"));
    }
    text
}

/// A job config that reads `topic` from and writes every table to `brokers` with
/// `properties`, under the topic prefix `sec.`.
fn job_config(
    dir: &Path,
    brokers: &str,
    topic: &str,
    properties: &[(String, String)],
) -> Result<PathBuf> {
    let path = dir.join("secure.toml");
    let text = format!(
        r#"
[sources.clickstream]
kind = "kafka"
brokers = "{brokers}"
stop = "end"
metadata_timeout_ms = 8000

[[sources.clickstream.topics]]
name = "{topic}"
format = "json"

{source_properties}
[sinks]
kind = "kafka"

[sinks.kafka]
brokers = "{brokers}"
topic_prefix = "sec."

{sink_properties}"#,
        source_properties = toml_properties("sources.clickstream", properties),
        sink_properties = toml_properties("sinks.kafka", properties),
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// `replay` arguments carrying `properties` as `--property` flags.
fn property_args(properties: &[(String, String)]) -> Vec<String> {
    properties
        .iter()
        .flat_map(|(k, v)| ["--property".to_owned(), format!("{k}={v}")])
        .collect()
}

/// Replays `csv` as JSON into `topic` over `properties`, keyed by user; the raw output.
fn replay(
    brokers: &str,
    topic: &str,
    csv: &Path,
    properties: &[(String, String)],
) -> Result<std::process::Output> {
    let mut args: Vec<String> = [
        "replay",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--input",
        csv.to_str().context("path")?,
        "--format",
        "json",
        "--key-field",
        "user_id",
        "--create-partitions",
        "3",
        "--no-progress",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(property_args(properties));
    let bin = job_binary()?;
    Command::new(&bin)
        .args(&args)
        .env_remove("RUST_LOG")
        .output()
        .with_context(|| format!("running {}", bin.display()))
}

#[test]
fn the_job_reads_and_writes_over_sasl_ssl_scram() -> Result<()> {
    let secure = SecureBroker::start()?;
    let brokers = secure.proxy.addr.clone();
    let properties = secure.properties(&secure.ca, PASSWORD);
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 3_000, 41, &[])?;
    let files = dir.path().join("files");
    run_on_csv(&csv, &files, "2", "500", &[])?;

    let sent = replay(&brokers, "clicks", &csv, &properties)?;
    let summary = String::from_utf8_lossy(&sent.stderr);
    ensure!(
        sent.status.success() && summary.contains("3000 events sent"),
        "replay over SASL_SSL: {summary}\nbroker log: {}",
        secure.broker.log_text()
    );

    let config = job_config(dir.path(), &brokers, "clicks", &properties)?;
    let state = dir.path().join("kafka");
    run_job(&[
        "run",
        "--config",
        config.to_str().context("path")?,
        "--output",
        state.to_str().context("path")?,
        "--workers",
        "2",
        "--epoch-records",
        "500",
        "--no-console",
    ])
    .with_context(|| format!("broker log: {}", secure.broker.log_text()))?;

    let tables = snapshot_tables(&files)?;
    ensure!(tables.len() >= 14, "expected every table, got {tables:?}");
    let borrowed: Vec<(&str, &str)> = properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let messages = python_reader(&brokers, "sec.", &files, &tables, &borrowed)?;
    // Not vacuous: thousands of changes went over TLS.
    ensure!(
        messages > 1_000,
        "only {messages} messages on the output topics"
    );
    Ok(())
}

/// The job run with `config`, which must fail: its stderr.
fn failing_job(config: &Path, state: &Path) -> Result<String> {
    let bin = job_binary()?;
    let out = Command::new(&bin)
        .args(["run", "--config"])
        .arg(config)
        .arg("--output")
        .arg(state)
        .args(["--workers", "2", "--no-console"])
        .env_remove("RUST_LOG")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "the job succeeded against a broker that should refuse it:\n{stderr}"
    );
    Ok(stderr)
}

/// Replay and the job with `properties` both fail, and their errors carry `reason` (compared
/// in lower case) and never `secret`.
fn refused_with(
    secure: &SecureBroker,
    properties: &[(String, String)],
    reason: &str,
    secret: &str,
) -> Result<()> {
    let brokers = secure.proxy.addr.clone();
    let dir = tempfile::tempdir()?;
    let csv = generate_csv(dir.path(), 50, 43, &[])?;
    let sent = replay(&brokers, "clicks", &csv, properties)?;
    let replay_err = String::from_utf8_lossy(&sent.stderr).into_owned();
    ensure!(
        !sent.status.success(),
        "replay succeeded against a broker that should refuse it:\n{replay_err}"
    );
    let config = job_config(dir.path(), &brokers, "clicks", properties)?;
    let job_err = failing_job(&config, &dir.path().join("kafka"))?;
    for (who, text) in [("replay", &replay_err), ("the job", &job_err)] {
        ensure!(
            text.to_lowercase().contains(reason),
            "{who} failed without saying `{reason}`:\n{text}"
        );
        ensure!(
            !text.contains(secret),
            "{who} printed the password:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn a_wrong_password_is_refused_with_the_reason() -> Result<()> {
    let secure = SecureBroker::start()?;
    let wrong = "not the password";
    let properties = secure.properties(&secure.ca, wrong);
    refused_with(&secure, &properties, "authentication", wrong)
}

#[test]
fn an_untrusted_certificate_is_refused_with_the_reason() -> Result<()> {
    let secure = SecureBroker::start()?;
    // A CA the broker's certificate does not come from.
    let other = tempfile::tempdir()?;
    let stranger = issue_ca(other.path(), "stranger")?;
    let properties = secure.properties(&stranger, PASSWORD);
    refused_with(&secure, &properties, "certificate verify failed", PASSWORD)
}
