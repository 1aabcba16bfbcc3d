"""Arrow Flight SQL clients (ADBC's Flight SQL driver, pyarrow.flight) against strata, each answer
checked against the same query over strata's HTTP Arrow IPC API.

Usage: flight_clients.py FLIGHT_HOST:PORT HTTP_BASE [TOKEN]
"""

import json
import sys
import urllib.request

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import pyarrow
import pyarrow.flight
import pyarrow.ipc

FLIGHT, BASE = sys.argv[1], sys.argv[2]
TOKEN = sys.argv[3] if len(sys.argv) > 3 else None
URI = "grpc://" + FLIGHT


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + str(detail) if detail and not ok else ""))
    if not ok:
        sys.exit(1)


def http_table(sql):
    request = urllib.request.Request(
        BASE + "/v1/sql",
        data=json.dumps({"sql": sql}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/vnd.apache.arrow.stream"},
    )
    if TOKEN:
        request.add_header("Authorization", "Bearer " + TOKEN)
    with urllib.request.urlopen(request, timeout=30) as answer:
        return pyarrow.ipc.open_stream(answer.read()).read_all()


def equal(a, b):
    return a.combine_chunks().equals(b.combine_chunks()), (a.slice(0, 3), b.slice(0, 3))


QUERIES = [
    "SELECT time, key, \"offset\", data FROM orders ORDER BY \"partition\", \"offset\"",
    "SELECT json_get_str(data, 'country') AS country, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1",
    "SELECT * FROM by_country ORDER BY country",
]


def adbc_checks(**kwargs):
    label = ", ".join(sorted(kwargs)) or "no credentials"
    with flightsql.connect(URI, **kwargs) as conn:
        cur = conn.cursor()
        for sql in QUERIES:
            cur.execute(sql)
            check(f"ADBC ({label}) {sql[:40]}…", *equal(cur.fetch_arrow_table(), http_table(sql)))
        for style in ("$1", "?"):
            cur.execute(
                f"SELECT count(*) AS n FROM orders WHERE json_get_str(data, 'country') = {style}",
                parameters=("NL",),
            )
            got = cur.fetch_arrow_table()
            want = http_table("SELECT count(*) AS n FROM orders WHERE json_get_str(data, 'country') = 'NL'")
            check(f"ADBC ({label}) parameter {style}", *equal(got, want))
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        names = [
            t["table_name"]
            for c in objects
            for s in c["catalog_db_schemas"] or []
            for t in s["db_schema_tables"] or []
        ]
        check(f"ADBC ({label}) adbc_get_objects lists the streams", "orders" in names and "by_country" in names, names)
        schema = conn.adbc_get_table_schema("orders")
        check(f"ADBC ({label}) get_table_schema", "time" in schema.names and "data" in schema.names, schema)


if TOKEN:
    adbc_checks(db_kwargs={adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer " + TOKEN})
    adbc_checks(db_kwargs={"username": "analyst", "password": TOKEN})
    try:
        with flightsql.connect(URI, db_kwargs={"username": "analyst", "password": "wrong"}) as conn:
            conn.cursor().execute("SELECT 1")
        check("ADBC with a wrong token is refused", False, "it ran")
    except Exception as e:  # the driver raises its own error classes
        check("ADBC with a wrong token is refused", "nauthenticated" in str(e) or "not valid" in str(e), e)
else:
    adbc_checks()

client = pyarrow.flight.FlightClient(URI)
options = pyarrow.flight.FlightCallOptions()
if TOKEN:
    header = client.authenticate_basic_token("analyst", TOKEN)
    options = pyarrow.flight.FlightCallOptions(headers=[header])
# A Flight SQL statement, sent as the protobuf Any that pyarrow does not build itself.
sql = QUERIES[1]
body = sql.encode()
command = b"\n" + bytes([len(body)]) + body if len(body) < 128 else None
type_url = b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery"
any_message = b"\n" + bytes([len(type_url)]) + type_url + b"\x12" + bytes([len(command)]) + command
info = client.get_flight_info(pyarrow.flight.FlightDescriptor.for_command(any_message), options)
table = client.do_get(info.endpoints[0].ticket, options).read_all()
check("pyarrow.flight with authenticate_basic_token", *equal(table, http_table(sql)))
print("all Flight SQL client checks passed")
