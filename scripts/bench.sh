#!/usr/bin/env bash
# The full benchmark: builds strata in release mode, makes the Python venv with DuckDB, runs every
# scenario against a real `strata serve` and its peers, and writes BENCHMARKS.md.
# Extra arguments go to strata-bench (e.g. --events 1000000, --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
python="$(./scripts/venv.sh)"
cargo build --release --locked --bin strata --bin strata-bench
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/strata-bench" --strata "$target/release/strata" --python "$python" \
  --work "$target/bench" --out BENCHMARKS.md "$@"
