"""DuckDB peer of the strata benchmark: the same queries over Parquet and over NDJSON.

Usage: duckdb_peer.py EVENTS_NDJSON PARQUET_OUT RUNS QUERIES_JSON NDJSON_RUNS
Prints one JSON object: load time, per-query median seconds and results for both sources.
"""
import json
import resource
import statistics
import sys
import time

import duckdb

events, parquet, runs, queries, ndjson_runs = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5])
con = duckdb.connect()
columns = "{key: 'VARCHAR', id: 'VARCHAR', type: 'VARCHAR', time: 'BIGINT', data: 'STRUCT(customer VARCHAR, country VARCHAR, amount DOUBLE, status VARCHAR)'}"
source = f"read_json('{events}', format='newline_delimited', columns={columns})"
flat = f"SELECT key AS customer, id, type, epoch_ms(time) AS time, data.country AS country, data.amount AS amount, data.status AS status FROM {source}"

started = time.perf_counter()
con.execute(f"COPY ({flat}) TO '{parquet}' (FORMAT parquet)")
export_seconds = time.perf_counter() - started


def run(view_sql, n):
    con.execute(f"CREATE OR REPLACE VIEW orders AS {view_sql}")
    out = {}
    for name, sql in queries.items():
        times, rows = [], None
        for _ in range(n):
            t = time.perf_counter()
            rows = con.execute(sql).fetchall()
            times.append(time.perf_counter() - t)
        out[name] = {"seconds": statistics.median(times), "rows": len(rows), "first": [str(v) for v in rows[0]] if rows else []}
    return out


con.execute(f"CREATE OR REPLACE VIEW orders AS SELECT * FROM read_parquet('{parquet}')")
con.execute("SELECT count(*) FROM orders").fetchall()  # warm the file cache
parquet_results = run(f"SELECT * FROM read_parquet('{parquet}')", runs)
ndjson_results = run(flat, ndjson_runs)
print(json.dumps({
    "version": duckdb.__version__,
    "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
    "export_seconds": export_seconds,
    "parquet": parquet_results,
    "ndjson": ndjson_results,
    "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
}))
