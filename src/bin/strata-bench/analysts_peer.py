"""Scenario 8 of the strata benchmark: analysts' tools against strata and against the peers a
user would pick instead, side by side.

Usage: analysts_peer.py PG_ADDR FLIGHT_ADDR HTTP_BASE PARQUET N RUNS

Starts a real PostgreSQL (Debian's package; as user postgres when run as root) in a temp dir on a
free port, loads the same N rows into it, and prints one JSON object with the median seconds of
(each pair that is compared measured in alternation, so that both see the same machine):
N rows through psycopg from strata and from PostgreSQL; the same rows over Flight SQL (ADBC),
over HTTP Arrow IPC, and from DuckDB reading the Parquet file; psql connect-to-first-row against
both servers. PostgreSQL is stopped (and its files removed) before the script ends.
"""

import io
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

from pg_peer import Postgres
import adbc_driver_flightsql.dbapi as flightsql
import duckdb
import psycopg
import pyarrow
import pyarrow.csv
import pyarrow.flight
import pyarrow.ipc

PG, FLIGHT, BASE, PARQUET, N, RUNS = sys.argv[1:7]
N, RUNS = int(N), int(RUNS)
HOST, PORT = PG.rsplit(":", 1)
STRATA_SQL = f"SELECT time, key, json_get_float(data, 'amount') AS amount FROM orders LIMIT {N}"
PEER_SQL = "SELECT time, key, amount FROM orders"


def median_seconds(f, runs=RUNS):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        rows = f()
        times.append(time.perf_counter() - started)
    return statistics.median(times), rows


def alternating(f, g, runs=RUNS):
    """Medians of f's and g's seconds, run one after the other `runs` times, so that both see the
    same moments of this shared machine; each checks it got N rows."""
    f_times, g_times = [], []
    for _ in range(runs):
        for fn, times in ((f, f_times), (g, g_times)):
            started = time.perf_counter()
            rows = fn()
            times.append(time.perf_counter() - started)
            assert rows == N, rows
    return statistics.median(f_times), statistics.median(g_times)


def psql_first_row(conninfo, sql, runs=21):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["psql", "-X", "-Atc", sql, conninfo], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PGPASSWORD": "unused"}, timeout=60)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def connect_first_row(dsn, sql, runs=21):
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            conn.execute(sql).fetchone()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def http_arrow():
    request = urllib.request.Request(
        BASE + "/v1/sql", data=json.dumps({"sql": STRATA_SQL}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/vnd.apache.arrow.stream"},
    )
    with urllib.request.urlopen(request, timeout=600) as answer:
        return pyarrow.ipc.open_stream(answer.read()).read_all().num_rows


out = {"rows": N}
strata_dsn = f"host={HOST} port={PORT} user=analyst password=unused dbname=strata"
with flightsql.connect("grpc://" + FLIGHT) as flight:
    cur = flight.cursor()
    cur.execute(STRATA_SQL)
    table = cur.fetch_arrow_table()

    def flight_rows():
        c = flight.cursor()
        c.execute(STRATA_SQL)
        return c.fetch_arrow_table().num_rows

    out["flight_seconds"], rows = median_seconds(flight_rows)
    assert rows == N, rows


def varint(n):
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out += bytes([low | 0x80])
        else:
            return out + bytes([low])


def flight_raw():
    # A Flight SQL CommandStatementQuery as the protobuf Any pyarrow does not build itself.
    body = STRATA_SQL.encode()
    command = b"\n" + varint(len(body)) + body
    url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
    message = b"\n" + varint(len(url)) + url + b"\x12" + varint(len(command)) + command
    client = pyarrow.flight.FlightClient("grpc://" + FLIGHT)
    info = client.get_flight_info(pyarrow.flight.FlightDescriptor.for_command(message))
    return client.do_get(info.endpoints[0].ticket).read_all().num_rows


flight_raw()  # the connection and the query's first run, for both
http_arrow()
# The two front ends differ by less than this shared machine's spread from one run to the next
# (±5 % at 1M rows, BENCHMARKS.md 8e): the median of more pairs than the other comparisons take.
out["flight_raw_seconds"], out["http_arrow_seconds"] = alternating(
    flight_raw, http_arrow, runs=max(RUNS, 15))
duck = duckdb.connect()
out["duckdb_parquet_seconds"], rows = median_seconds(
    lambda: duck.execute(
        f"SELECT time, customer AS key, amount FROM read_parquet('{PARQUET}') LIMIT {N}"
    ).to_arrow_table().num_rows
)

pg = Postgres()
try:
    with psycopg.connect(pg.dsn, autocommit=True) as peer, psycopg.connect(strata_dsn) as conn:
        peer.execute("CREATE TABLE orders (time timestamptz, key text, amount float8)")
        csv = io.BytesIO()
        pyarrow.csv.write_csv(table, csv, pyarrow.csv.WriteOptions(include_header=False))
        with peer.cursor().copy("COPY orders FROM STDIN (FORMAT csv)") as copy:
            copy.write(csv.getvalue())
        peer.execute("VACUUM ANALYZE orders")
        out["psycopg_strata_seconds"], out["psycopg_postgres_seconds"] = alternating(
            lambda: len(conn.execute(STRATA_SQL).fetchall()),
            lambda: len(peer.execute(PEER_SQL).fetchall()),
        )
    out["connect_strata_seconds"] = connect_first_row(strata_dsn, "SELECT time, key FROM orders LIMIT 1")
    out["connect_postgres_seconds"] = connect_first_row(pg.dsn, "SELECT time, key FROM orders LIMIT 1")
    out["psql_strata_seconds"] = psql_first_row(
        f"host={HOST} port={PORT} user=analyst dbname=strata", "SELECT time, key FROM orders LIMIT 1"
    )
    out["psql_postgres_seconds"] = psql_first_row(pg.dsn, "SELECT time, key FROM orders LIMIT 1")
finally:
    pg.stop()
print(json.dumps(out))
