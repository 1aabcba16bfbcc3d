"""Scenario 1's PostgreSQL peer: the same events, durably, into PostgreSQL with COPY.

Usage: ingest_peer.py CLIENTS FILE...

Starts a real PostgreSQL with fsync on (as durable as strata's acknowledged appends), creates
`orders (seq bigserial primary key, id text unique, key text, type text, time_ms bigint,
data jsonb)`, and loads each NDJSON FILE with one COPY stream per file, CLIENTS at a time (each
file is one client's share, sent in one COPY). Prints {"seconds": …, "rows": …}.
"""

import concurrent.futures
import json
import sys
import time

import psycopg

from pg_peer import Postgres

CLIENTS = int(sys.argv[1])
FILES = sys.argv[2:]


def rows_of(path):
    """The file's events as COPY text rows (the conversion is not timed)."""
    out = []
    escape = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            e = json.loads(line)
            fields = [e.get("id"), e.get("key"), e.get("type"), e.get("time"), json.dumps(e["data"])]
            out.append("\t".join("\\N" if v is None else str(v).translate(escape) for v in fields))
    return ("\n".join(out) + "\n").encode()


def copy(dsn, body):
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY orders (id, key, type, time_ms, data) FROM STDIN") as c:
                for i in range(0, len(body), 1 << 20):
                    c.write(body[i:i + (1 << 20)])
        conn.commit()


bodies = [rows_of(p) for p in FILES]
pg = Postgres(fsync=True)
try:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (seq bigserial PRIMARY KEY, id text UNIQUE, key text, "
                     "type text, time_ms bigint, data jsonb)")
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(lambda b: copy(pg.dsn, b), bodies))
    seconds = time.perf_counter() - started
    with psycopg.connect(pg.dsn) as conn:
        rows = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    print(json.dumps({"seconds": seconds, "rows": rows}))
finally:
    pg.stop()
