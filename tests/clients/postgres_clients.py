"""Real PostgreSQL clients against strata's PostgreSQL front end, each answer checked against the
same query over strata's HTTP API.

Usage: postgres_clients.py PG_HOST:PORT HTTP_BASE [TOKEN]

The server holds a stream `orders` (fields key, time, data {country, amount}) and a materialized
view `by_country`. Prints one line per check; exits non-zero on the first failure.
"""

import asyncio
import datetime
import decimal
import json
import sys
import urllib.request

import asyncpg
import pandas
import psycopg
import sqlalchemy

PG, BASE = sys.argv[1], sys.argv[2]
TOKEN = sys.argv[3] if len(sys.argv) > 3 else None
HOST, PORT = PG.rsplit(":", 1)
PASSWORD = TOKEN or "unused"


def http_rows(sql):
    request = urllib.request.Request(
        BASE + "/v1/sql",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Content-Type": "application/json"},
    )
    if TOKEN:
        request.add_header("Authorization", "Bearer " + TOKEN)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + str(detail) if detail and not ok else ""))
    if not ok:
        sys.exit(1)


def plain(value):
    """A value as HTTP JSON has it."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return value


def same(rows, expected, keys):
    got = [[plain(r[i]) for i in range(len(keys))] for r in rows]
    want = [[plain(e[k]) for k in keys] for e in expected]
    return got == want, {"got": got[:3], "want": want[:3]}


GROUP = (
    "SELECT json_get_str(data, 'country') AS country, count(*) AS n, "
    "sum(json_get_float(data, 'amount')) AS total FROM orders GROUP BY 1 ORDER BY 1"
)
EXPECTED_GROUP = http_rows(GROUP)
check("HTTP answers the reference query", len(EXPECTED_GROUP) > 1, EXPECTED_GROUP)


def len_orders(conn):
    return conn.execute("SELECT count(*) FROM orders").fetchone()[0]


def psycopg_checks():
    dsn = f"host={HOST} port={PORT} user=analyst password={PASSWORD} dbname=strata"
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = conn.execute("SELECT version()").fetchone()[0]
        check("psycopg version()", version.startswith("PostgreSQL "), version)
        rows = conn.execute(GROUP).fetchall()
        check("psycopg simple GROUP BY", *same(rows, EXPECTED_GROUP, ["country", "n", "total"]))
        # COPY … TO STDOUT, as psycopg's cursor.copy() reads it: the same rows, as text.
        with conn.cursor() as cur:
            with cur.copy(f"COPY ({GROUP}) TO STDOUT") as copy:
                copied = [tuple(row) for row in copy.rows()]
        want = [(e["country"], str(e["n"])) for e in EXPECTED_GROUP]
        check("psycopg COPY TO STDOUT", [c[:2] for c in copied] == want, (copied[:3], want[:3]))
        totals = [float(c[2]) for c in copied]
        check(
            "psycopg COPY TO STDOUT floats",
            all(abs(t - e["total"]) < 1e-6 * max(1, abs(e["total"])) for t, e in zip(totals, EXPECTED_GROUP)),
            totals[:3],
        )
        # Parameters ($1 as psycopg sends %s), server-side prepared, binary results.
        for prepare in (False, True):
            for binary in (False, True):
                cur = conn.cursor(binary=binary)
                rows = cur.execute(
                    "SELECT json_get_str(data, 'country') AS country, count(*) AS n "
                    "FROM orders WHERE json_get_str(data, 'country') = %s GROUP BY 1",
                    ("NL",),
                    prepare=prepare,
                ).fetchall()
                want = [[e["country"], e["n"]] for e in EXPECTED_GROUP if e["country"] == "NL"]
                check(
                    f"psycopg parameter (prepare={prepare}, binary={binary})",
                    [list(r) for r in rows] == want,
                    (rows, want),
                )
        cur = conn.cursor(binary=True)
        first = cur.execute('SELECT time, key, data, "offset" FROM orders ORDER BY time, "offset" LIMIT 3').fetchall()
        check(
            "psycopg binary timestamptz and json",
            isinstance(first[0][0], datetime.datetime)
            and first[0][0].tzinfo is not None
            and isinstance(first[0][2], dict),
            first[0],
        )
        text = conn.execute('SELECT time, data FROM orders ORDER BY time, "offset" LIMIT 1').fetchone()
        check(
            "psycopg text timestamptz and json",
            isinstance(text[0], datetime.datetime) and isinstance(text[1], dict),
            text,
        )
        # `json` goes with the stream's `data` column under any name, and not to other text
        # called `data` (which psycopg would otherwise fail to parse as JSON).
        for binary in (False, True):
            renamed = conn.cursor(binary=binary).execute(
                "SELECT data AS payload, json_get_str(data, 'country') AS data, 'plain' AS data2 "
                'FROM orders ORDER BY time, "offset" LIMIT 1'
            ).fetchone()
            check(
                f"psycopg json by the column, not its name (binary={binary})",
                isinstance(renamed[0], dict) and isinstance(renamed[1], str) and renamed[2] == "plain",
                renamed,
            )
        # NULL parameters (psycopg sends None without a type), typed by a cast, by the plan, or
        # by nothing: each binds a NULL in its place, and the values after it stay in theirs.
        for binary in (False, True):
            row = conn.cursor(binary=binary).execute(
                "SELECT %s::int + 1 AS a, %s AS b, %s::timestamptz AS c", (None, "x", None)
            ).fetchone()
            check(f"psycopg NULL parameters (binary={binary})", row == (None, "x", None), row)
            n = conn.cursor(binary=binary).execute(
                "SELECT count(*) FROM orders WHERE key = %s OR %s::text IS NULL", (None, None)
            ).fetchone()[0]
            check(f"psycopg NULL parameter in a comparison (binary={binary})", n == len_orders(conn), n)
        nulls = conn.execute("SELECT CAST(NULL AS BIGINT) AS a, CAST(1.5 AS DECIMAL(10,2)) AS d, true AS b").fetchone()
        check("psycopg NULL, numeric, boolean", nulls == (None, decimal.Decimal("1.50"), True), nulls)
        # Session settings: SET/SHOW, and a statement_timeout that strata honours.
        conn.execute("SET application_name = 'pytest'")
        shown = conn.execute("SHOW application_name").fetchone()[0]
        check("psycopg SET/SHOW application_name", shown == "pytest", shown)
        check("psycopg current_setting", conn.execute("SELECT current_setting('server_version_num')").fetchone()[0] == "160006")
        try:
            conn.execute("SET statement_timeout = '1ms'")
            conn.execute("SELECT sum(a.\"offset\" * b.\"offset\" * c.\"offset\") FROM orders a, orders b, orders c").fetchall()
            check("statement_timeout stops a long query", False, "it ran to the end")
        except psycopg.Error as e:
            check("statement_timeout stops a long query (57014)", e.sqlstate == "57014", (e.sqlstate, str(e)))
        conn.execute("RESET statement_timeout")
        # Read-your-writes: the token of an append over HTTP, set for the session's next queries.
        request = urllib.request.Request(
            BASE + "/v1/streams/notes/events",
            data=json.dumps({"key": "ryw", "id": "ryw-1", "data": {"note": 1}}).encode(),
        )
        if TOKEN:
            request.add_header("Authorization", "Bearer " + TOKEN)
        with urllib.request.urlopen(request, timeout=30) as answer:
            token = json.load(answer)["token"]
        conn.execute(f"SET strata.after = '{token}'")
        seen = conn.execute("SELECT count(*) FROM notes WHERE key = 'ryw'").fetchone()[0]
        check("SET strata.after reads the session's own write", seen == 1, seen)
        check("SHOW strata.after", conn.execute("SHOW strata.after").fetchone()[0] == token)
        conn.execute("RESET strata.after")
        views = conn.execute("SELECT * FROM by_country ORDER BY country").fetchall()
        check("psycopg reads the materialized view", len(views) == len(EXPECTED_GROUP), views)
        # Key lookups with a parameter, each country in turn (the node keeps the lookup's plan
        # and binds each key into it): the same rows as the literal query over HTTP.
        for prepare in (False, True):
            for e in EXPECTED_GROUP:
                country = e["country"]
                rows = conn.cursor(binary=True).execute(
                    "SELECT country, n, total FROM by_country WHERE country = %s", (country,), prepare=prepare
                ).fetchall()
                want = http_rows(f"SELECT country, n, total FROM by_country WHERE country = '{country}'")
                check(
                    f"psycopg view lookup by parameter {country} (prepare={prepare})",
                    *same(rows, want, ["country", "n", "total"]),
                )
        shown = conn.execute("SHOW VIEWS").fetchall()
        check("psycopg SHOW VIEWS", any(r[0] == "by_country" for r in shown), shown)
        for sql, state in [
            ("SELEC 1", "42601"),
            ("SELECT * FROM nowhere", "42P01"),
            ("SELECT nothing FROM orders", "42703"),
            ("CREATE TABLE t2 AS SELECT 1", "25006"),
            ("COPY (SELECT 1) TO '/tmp/strata-copy.csv'", "25006"),
            ("SET datafusion.execution.batch_size = 1", "42501"),
            ("DECLARE c CURSOR FOR SELECT * FROM orders", "25006"),
            ("SELECT map(['a'], [1]) AS m", "0A000"),
        ]:
            try:
                conn.execute(sql)
                check(f"refused: {sql}", False, "it ran")
            except psycopg.Error as e:
                check(f"refused with {state}: {sql}", e.sqlstate == state, (e.sqlstate, str(e)))


def transaction_checks():
    """psycopg's default mode: transactions, statements it prepares after five runs, and the
    `DEALLOCATE ALL` it sends after a rollback."""
    dsn = f"host={HOST} port={PORT} user=analyst password={PASSWORD} dbname=strata"
    with psycopg.connect(dsn) as conn:
        query = "SELECT count(*) FROM orders WHERE json_get_str(data, 'country') = %s"
        want = conn.execute(query, ("NL",)).fetchone()[0]
        for _ in range(6):
            conn.execute(query, ("NL",)).fetchone()
        check("psycopg prepared a repeated statement", len(conn._prepared._names) > 0, conn._prepared._names)
        conn.rollback()
        got = [conn.execute(query, ("NL",)).fetchone()[0] for _ in range(7)]
        check("psycopg rollback (DEALLOCATE ALL), then the statement again", got == [want] * 7, got)
        conn.commit()
        # SQLAlchemy's documented reset on return; the statements psycopg prepared stay valid.
        for statement in ("CLOSE ALL", "RESET ALL", "DISCARD TEMP", "UNLISTEN *"):
            conn.execute(statement)
        conn.rollback()
        got = conn.execute(query, ("NL",)).fetchone()[0]
        check("psycopg's prepared statement after a reset (CLOSE ALL, DISCARD TEMP, …)", got == want, got)
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute("DEALLOCATE no_such_statement")
            check("DEALLOCATE of an unknown statement refused", False, "it ran")
        except psycopg.Error as e:
            check("DEALLOCATE of an unknown statement refused (26000)", e.sqlstate == "26000", (e.sqlstate, str(e)))
        for statement in ("DEALLOCATE ALL", "DISCARD ALL"):
            conn.execute(statement)
        check("psycopg after DISCARD ALL", conn.execute("SELECT 1").fetchone() == (1,))


def sqlalchemy_checks():
    url = f"postgresql+psycopg://analyst:{PASSWORD}@{HOST}:{PORT}/strata"
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        inspector = sqlalchemy.inspect(conn)
        tables = inspector.get_table_names()
        check("SQLAlchemy get_table_names", "orders" in tables, tables)
        described = {c["name"]: c["type"] for c in inspector.get_columns("orders")}
        check("SQLAlchemy get_columns", {"time", "key", "data"} <= set(described), described)
        check(
            "SQLAlchemy get_columns: data is JSON, key text",
            isinstance(described["data"], sqlalchemy.JSON) and isinstance(described["key"], sqlalchemy.Text),
            described,
        )
        frame = pandas.read_sql(
            sqlalchemy.text(
                "SELECT date_trunc('hour', time) AS hour, json_get_str(data, 'country') AS country, "
                "count(*) AS n FROM orders GROUP BY 1, 2 ORDER BY 1, 2"
            ),
            conn,
        )
        expected = http_rows(
            "SELECT date_trunc('hour', time) AS hour, json_get_str(data, 'country') AS country, "
            "count(*) AS n FROM orders GROUP BY 1, 2 ORDER BY 1, 2"
        )
        check(
            "pandas.read_sql GROUP BY with a timestamp",
            len(frame) == len(expected)
            and list(frame["n"]) == [e["n"] for e in expected]
            and str(frame["hour"].dtype).startswith("datetime64"),
            (frame.head(), expected[:3]),
        )
    engine.dispose()


async def asyncpg_checks():
    conn = await asyncpg.connect(host=HOST, port=int(PORT), user="analyst", password=PASSWORD, database="strata", ssl=False)
    try:
        rows = await conn.fetch(GROUP)
        check("asyncpg GROUP BY", *same([tuple(r) for r in rows], EXPECTED_GROUP, ["country", "n", "total"]))
        statement = await conn.prepare(
            "SELECT count(*) AS n FROM orders WHERE json_get_str(data, 'country') = $1"
        )
        for country in ("NL", "DE"):
            n = await statement.fetchval(country)
            want = sum(e["n"] for e in EXPECTED_GROUP if e["country"] == country)
            check(f"asyncpg prepared statement ({country})", n == want, (n, want))
        # A cast gives a placeholder its type, which asyncpg encodes the value by.
        typed = await conn.fetchrow(
            "SELECT $1::int + 1 AS a, $2::timestamptz AS b, $3::double precision AS c",
            41,
            datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc),
            0.5,
        )
        check(
            "asyncpg placeholders typed by their casts",
            tuple(typed) == (42, datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc), 0.5),
            typed,
        )
        keys = await conn.fetchval("SELECT count(*) FROM orders WHERE key = any($1::text[])", ["no-such-key"])
        check("asyncpg array parameter through a cast", keys == 0, keys)
        first = await conn.fetchrow('SELECT time, data FROM orders ORDER BY time, "offset" LIMIT 1')
        check("asyncpg binary timestamptz", first["time"].tzinfo is not None, first)
    finally:
        await conn.close()


psycopg_checks()
transaction_checks()
sqlalchemy_checks()
asyncio.run(asyncpg_checks())
print("all PostgreSQL client checks passed")
