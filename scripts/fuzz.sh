#!/usr/bin/env bash
# Runs the fuzz targets (proptest-driven, named fuzz_*) longer than the test command does:
#   scripts/fuzz.sh [CASES]   (default 20000 cases per target; the log-recovery target runs 1/8)
# Targets: the NDJSON/JSON event decoder, the embedded log's frame scan and crash recovery
# (strata-ingest), the consistency token, stream names and the event codec (strata-proto), and
# view statements (strata-views). A failure prints the minimal input that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${1:-20000}"
exec cargo test -p strata-ingest -p strata-proto -p strata-views --lib fuzz_ -- --nocapture
