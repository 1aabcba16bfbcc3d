#!/usr/bin/env bash
# The full benchmark: builds strata in release mode, makes the Python venv with DuckDB, Tansu and
# the analysts' clients, installs psql and PostgreSQL (scenario 8's peer), starts Tansu (for
# scenarios 5 and 7), runs every scenario against a real `strata serve`
# and its peers, and writes BENCHMARKS.md. Extra arguments go to strata-bench (e.g. --events
# 1000000, --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
python="$(./scripts/venv.sh)"
./scripts/clients.sh  # psql and PostgreSQL, the peers of scenario 8
cargo build --release --locked --bin strata --bin strata-bench
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target/bench-logs"
read -r tansu_pid brokers < <(./scripts/tansu.sh "$python" "$target/bench-logs/tansu.log")
trap 'kill "$tansu_pid" 2>/dev/null || true' EXIT
STRATA_BENCH_KAFKA_BROKERS="$brokers" "$target/release/strata-bench" --strata "$target/release/strata" \
  --python "$python" --work "$target/bench" --out BENCHMARKS.md "$@"
