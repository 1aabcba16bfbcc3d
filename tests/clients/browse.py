"""Replays the connect and browse queries of Grafana, Metabase and DBeaver against strata's
PostgreSQL front end, over the simple and the extended query protocol; every one must answer.

Usage: browse.py PG_HOST:PORT [TOKEN]
"""

import sys

import psycopg

from browse_queries import QUERIES

HOST, PORT = sys.argv[1].rsplit(":", 1)
PASSWORD = sys.argv[2] if len(sys.argv) > 2 else "unused"
failed = 0
dsn = f"host={HOST} port={PORT} user=postgres password={PASSWORD} dbname=strata"
for protocol, cursor_class in (("simple", psycopg.ClientCursor), ("extended", psycopg.Cursor)):
    with psycopg.connect(dsn, autocommit=True, cursor_factory=cursor_class) as conn:
        for client, sql in QUERIES:
            try:
                cur = conn.cursor()
                cur.execute(sql)
                rows = cur.fetchall() if cur.description else []
                print(f"ok   {protocol} {client}: {len(rows)} rows  {' '.join(sql.split())[:70]}")
            except psycopg.Error as e:
                failed += 1
                print(f"FAIL {protocol} {client}: {e}  {' '.join(sql.split())[:200]}")
if failed:
    sys.exit(f"{failed} browse queries failed")
print("all browse queries answered")
