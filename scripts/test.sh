#!/usr/bin/env bash
# Runs every test of strata on a fresh machine: unit and property tests of each crate, and the
# end-to-end suite (tests/main.rs) against the real `strata` binary on port 0 in temp dirs,
# including the benchmark harness in --quick mode. Needs a Rust toolchain and python3; installs
# the Python peers it needs into .venv (scripts/venv.sh). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "scripts/test.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi

STRATA_BENCH_PYTHON="$(./scripts/venv.sh)"
export STRATA_BENCH_PYTHON

cargo test --workspace --all-targets --locked "$@"
