"""The token and grant rules of the HTTP API, over PostgreSQL (psycopg) and Flight SQL (ADBC,
pyarrow.flight), and the SQL sandbox over PostgreSQL.

Usage: security_clients.py PG_HOST:PORT FLIGHT_HOST:PORT HTTP_BASE

Tokens (tests/analysts.rs): ops-secret (read, write, admin), analyst-secret (read, stream
orders only), writer-secret (write only). Streams: orders (with view by_country), secrets.
"""

import asyncio
import sys

import adbc_driver_flightsql
import asyncpg
import adbc_driver_flightsql.dbapi as flightsql
import psycopg
import pyarrow.flight

PG, FLIGHT, BASE = sys.argv[1], sys.argv[2], sys.argv[3]
HOST, PORT = PG.rsplit(":", 1)


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + str(detail) if detail and not ok else ""))
    if not ok:
        sys.exit(1)


def connect(token):
    return psycopg.connect(
        f"host={HOST} port={PORT} user=someone password={token} dbname=strata", autocommit=True
    )


def refused(conn, sql, state):
    try:
        conn.execute(sql).fetchall()
        check(f"refused ({state}): {sql}", False, "it ran")
    except psycopg.Error as e:
        check(f"refused ({state}): {sql}", e.sqlstate == state, (e.sqlstate, str(e)))


# PostgreSQL: wrong credentials.
try:
    connect("not-a-token")
    check("a wrong token is refused", False, "it connected")
except psycopg.OperationalError as e:
    check("a wrong token is refused with 28P01", "28P01" in str(e) or "password authentication failed" in str(e), e)

async def wrong_password():
    try:
        await asyncpg.connect(host=HOST, port=int(PORT), user="x", password="not-a-token", database="strata", ssl=False)
        return None
    except asyncpg.PostgresError as e:
        return e.sqlstate


state = asyncio.run(wrong_password())
check("a wrong token is refused with SQLSTATE 28P01", state == "28P01", state)

analyst = connect("analyst-secret")
check("analyst reads orders", analyst.execute("SELECT count(*) FROM orders").fetchone()[0] == 60)
check("analyst reads the view of orders", len(analyst.execute("SELECT * FROM by_country").fetchall()) == 3)
check("analyst browses the catalog", len(analyst.execute("SELECT relname FROM pg_catalog.pg_class").fetchall()) > 0)
check("analyst reads information_schema", len(analyst.execute("SELECT table_name FROM information_schema.tables").fetchall()) > 0)
for sql in [
    "SELECT * FROM secrets",
    "SELECT o.key FROM orders o JOIN secrets s ON o.key = s.key",
    "SELECT count(*) FROM orders WHERE key IN (SELECT key FROM secrets)",
    "WITH x AS (SELECT * FROM secrets) SELECT * FROM x",
    "CREATE MATERIALIZED VIEW pins AS SELECT key, count(*) AS n FROM orders GROUP BY key",
]:
    refused(analyst, sql, "42501")
shown = analyst.execute("SHOW VIEWS").fetchall()
check("SHOW VIEWS lists only granted streams' views", [r[0] for r in shown] == ["by_country"], shown)
for sql, state in [
    ("CREATE TABLE t2 AS SELECT 1", "25006"),
    ("CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'", "25006"),
    ("COPY (SELECT 1) TO '/tmp/strata-pg-copy.csv'", "25006"),
    ("INSERT INTO orders VALUES (1)", "25006"),
    ("DROP TABLE orders", "25006"),
    ("DECLARE c CURSOR FOR SELECT * FROM secrets", "25006"),
    ("SELECT * FROM 'data.parquet'", "42P01"),
    ("SET datafusion.execution.target_partitions = 1", "42501"),
    ("SET ROLE postgres", "25006"),
    ("SET work_mem = '1GB'", "42704"),
]:
    refused(analyst, sql, state)
# A session's SET stays in the session.
analyst.execute("SET application_name = 'first'")
other = connect("analyst-secret")
check(
    "another connection keeps its own settings",
    other.execute("SHOW application_name").fetchone()[0] != "first",
)
other.close()

writer = connect("writer-secret")
refused(writer, "SELECT count(*) FROM orders", "42501")
writer.close()

ops = connect("ops-secret")
ops.execute("CREATE MATERIALIZED VIEW by_key AS SELECT key, count(*) AS n FROM orders GROUP BY key")
check("admin creates a view over PostgreSQL", any(r[0] == "by_key" for r in ops.execute("SHOW VIEWS").fetchall()))
ops.execute("DROP MATERIALIZED VIEW by_key")
check("admin drops it", not any(r[0] == "by_key" for r in ops.execute("SHOW VIEWS").fetchall()))
ops.close()
analyst.close()

# Flight SQL.
URI = "grpc://" + FLIGHT


def flight(token):
    return flightsql.connect(
        URI,
        db_kwargs={adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + token},
    )


def flight_refused(token, sql, words):
    try:
        with flight(token) as conn:
            cur = conn.cursor()
            cur.execute(sql)
            cur.fetchall()
        check(f"Flight refuses {sql} for {token}", False, "it ran")
    except Exception as e:  # ADBC raises its own error classes
        check(f"Flight refuses {sql} for {token}", any(w in str(e) for w in words), e)


with flight("analyst-secret") as conn:
    cur = conn.cursor()
    cur.execute("SELECT count(*) AS n FROM orders")
    check("Flight: analyst reads orders", cur.fetchone()[0] == 60)
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    names = [t["table_name"] for c in objects for s in c["catalog_db_schemas"] or [] for t in s["db_schema_tables"] or []]
    check("Flight: analyst sees only granted tables", "orders" in names and "secrets" not in names, names)
flight_refused("analyst-secret", "SELECT * FROM secrets", ["may not read", "PERMISSION_DENIED", "Unauthorized"])
flight_refused("writer-secret", "SELECT 1", ["lacks the `read` scope", "PERMISSION_DENIED"])
flight_refused("not-a-token", "SELECT 1", ["not valid", "UNAUTHENTICATED", "Unauthenticated"])
flight_refused("analyst-secret", "CREATE TABLE t AS SELECT 1", ["read-only"])

client = pyarrow.flight.FlightClient(URI)
try:
    client.authenticate_basic_token("analyst", "wrong")
    check("pyarrow: a wrong basic password is refused", False, "accepted")
except pyarrow.flight.FlightUnauthenticatedError:
    check("pyarrow: a wrong basic password is refused", True)
print("all security checks passed")
