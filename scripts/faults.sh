#!/usr/bin/env bash
# The fault harness at full length: kill -9 rounds under concurrent ingest with materialized
# views (tests/faults.rs), on the embedded log and on a Kafka-protocol broker (Tansu, started here
# and stopped afterwards). Prints each round and a summary per log, which also goes to
# target/faults-report.txt (or $STRATA_FAULT_REPORT).
#   scripts/faults.sh [ROUNDS]   (default 20; STRATA_FAULT_SEED=N repeats a run)
set -euo pipefail
cd "$(dirname "$0")/.."
export STRATA_FAULT_ROUNDS="${1:-20}"
python="$(./scripts/venv.sh)"
cargo test --test e2e --locked --no-run
report="${STRATA_FAULT_REPORT:-${CARGO_TARGET_DIR:-target}/faults-report.txt}"
: > "$report"
export STRATA_FAULT_REPORT="$report"
tansu_log="$(mktemp -t strata-tansu.XXXXXX.log)"
read -r tansu_pid brokers < <(./scripts/tansu.sh "$python" "$tansu_log")
cleanup() {
  kill "$tansu_pid" 2>/dev/null || true
  wait "$tansu_pid" 2>/dev/null || true
}
trap cleanup EXIT
export STRATA_TEST_KAFKA_BROKERS="$brokers" STRATA_TEST_REQUIRE_KAFKA=1
cargo test --test e2e --locked -- faults::kill_9_rounds --nocapture
echo
cat "$report"
