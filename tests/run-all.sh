#!/usr/bin/env bash
# Runs every CAP test on a fresh or warm machine: installs what the tests need (idempotently,
# reusing what is there), builds the workspace once in the shared dev profile, then runs
# unit, oracle, end-to-end and doc tests. Used by .ci/run and by developers alike.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (rustup) first" >&2
    exit 1
fi

# cargo-nextest runs test binaries in parallel; fall back to cargo test where it is missing
# and cannot be installed.
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked || true
fi

# tansu, a Kafka-compatible broker written in Rust (crates.io), is the real broker of the
# Kafka tests (tests/src/tansu.rs). Built once per machine: about 15-20 minutes on 2 cores.
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
    log "installing the tansu broker (once per machine; about 15-20 minutes on 2 cores)"
    cargo install tansu --version 0.6.0 --locked --features dynostore,libsql \
        || echo "warning: could not install tansu; the Kafka tests will fail" >&2
fi

# Python test dependencies from PyPI: scikit-learn for the k-means quality comparison in
# tests/e2e_clusters.rs, confluent-kafka for the independent reader of the output topics
# (tests/read_topics.py), pyarrow and duckdb for the Parquet tables (tests/read_lake.py). Installed only when missing; the tests fail if they cannot be.
if command -v python3 >/dev/null 2>&1; then
    missing=()
    python3 -c "import sklearn, numpy" >/dev/null 2>&1 || missing+=(scikit-learn)
    python3 -c "import confluent_kafka" >/dev/null 2>&1 || missing+=(confluent-kafka)
    # pyarrow and DuckDB: the independent readers of the Parquet tables (tests/read_lake.py).
    python3 -c "import pyarrow" >/dev/null 2>&1 || missing+=(pyarrow)
    python3 -c "import duckdb" >/dev/null 2>&1 || missing+=(duckdb)
    # moto's S3-compatible server and boto3: the S3 backend's test (tests/e2e_lakehouse.rs).
    python3 -c "import moto.server, boto3" >/dev/null 2>&1 || missing+=("moto[server]")
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing python test dependencies (${missing[*]})"
        python3 -m pip install --quiet "${missing[@]}" \
            || echo "warning: could not install ${missing[*]}; the tests that use them will fail" >&2
    fi
fi

log "building the workspace (dev profile, shared by tests and binaries)"
cargo build --workspace --all-targets --locked
# The tests' job_binary() then uses this build as it is instead of invoking cargo again.
export CAP_TESTS_PREBUILT=1

if cargo nextest --version >/dev/null 2>&1; then
    log "running tests with cargo-nextest"
    cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
    log "running tests with cargo test"
    cargo test --workspace --locked --no-fail-fast
fi

log "running doc tests"
cargo test --workspace --doc --locked

log "README demo, bounded (same binary as the tests; the README runs it in release)"
demo_out=$(mktemp -d)
trap 'rm -rf "$demo_out"' EXIT
# The binary from the workspace build above: `cargo run -p customer-analytics` would unify
# features differently and compile the dependency graph a second time.
"${CARGO_TARGET_DIR:-target}/debug/customer-analytics" run --max-events 300000 --no-console -o "$demo_out"
test -s "$demo_out/daily_visitors.jsonl" && test -s "$demo_out/session_funnel_daily.jsonl"
echo "demo wrote $(wc -l < "$demo_out/daily_visitors.jsonl") daily_visitors rows and $(wc -l < "$demo_out/session_funnel_daily.jsonl") funnel rows" >&2
