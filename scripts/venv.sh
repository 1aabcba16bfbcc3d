#!/usr/bin/env bash
# Makes (once) the Python venv the tests and benchmarks use, with the pinned peers from PyPI:
# DuckDB (the benchmark's SQL peer). Prints the venv's python. STRATA_VENV overrides the location.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${STRATA_VENV:-$PWD/.venv}"
requirements="duckdb==2.0.1"
if ! "$venv/bin/python" -c 'import duckdb; assert duckdb.__version__ == "2.0.1"' >/dev/null 2>&1; then
  echo "scripts/venv.sh: installing $requirements into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check $requirements >&2
fi
echo "$venv/bin/python"
