#!/usr/bin/env bash
# Runs every test of strata on a fresh machine: unit and property tests of each crate, and the
# end-to-end suite (tests/main.rs) against the real `strata` binary on port 0 in temp dirs, once
# on the embedded log and once on a Kafka-protocol broker (Tansu, started here on a free port and
# stopped afterwards), including the benchmark harness in --quick mode, 3 rounds of the kill -9
# fault harness and the fuzz targets at 256 cases each. Needs a Rust toolchain, python3 and Java
# 17; installs the Python packages it needs into .venv (scripts/venv.sh) and the Debian packages
# of the real PostgreSQL clients and server (scripts/clients.sh). Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi

STRATA_BENCH_PYTHON="$(./scripts/venv.sh)"
export STRATA_BENCH_PYTHON
./scripts/clients.sh

# Build first, so that the broker does not idle through a cold build.
cargo test --workspace --all-targets --locked --no-run "$@"

tansu_log="$(mktemp -t strata-tansu.XXXXXX.log)"
read -r tansu_pid brokers < <(./scripts/tansu.sh "$STRATA_BENCH_PYTHON" "$tansu_log")
cleanup() {
  kill "$tansu_pid" 2>/dev/null || true
  wait "$tansu_pid" 2>/dev/null || true
}
trap cleanup EXIT
echo "scripts/test.sh: Tansu (pid $tansu_pid) on $brokers, log $tansu_log" >&2
export STRATA_TEST_KAFKA_BROKERS="$brokers" STRATA_TEST_REQUIRE_KAFKA=1
# Bounded runs of the fault harness and the fuzz targets here; scripts/faults.sh and
# scripts/fuzz.sh run them at full length.
export STRATA_FAULT_ROUNDS="${STRATA_FAULT_ROUNDS:-3}" PROPTEST_CASES="${PROPTEST_CASES:-256}"

cargo test --workspace --all-targets --locked "$@"
