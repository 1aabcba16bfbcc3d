"""One query over Flight SQL with ADBC; its single value must be the expected one.

Usage: flight_count.py FLIGHT_HOST:PORT SQL EXPECTED [TOKEN [ROOT_CERT_PEM]]
With ROOT_CERT_PEM the connection is TLS (grpc+tls), trusting that certificate only.
"""

import sys

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql

address, sql, expected = sys.argv[1:4]
token = sys.argv[4] if len(sys.argv) > 4 else None
root = sys.argv[5] if len(sys.argv) > 5 else None
options = {}
if token:
    options["username"], options["password"] = "analyst", token
if root:
    with open(root) as f:
        options[adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value] = f.read()
uri = ("grpc+tls://" if root else "grpc://") + address
with flightsql.connect(uri, db_kwargs=options) as conn:
    cur = conn.cursor()
    cur.execute(sql)
    value = cur.fetchone()[0]
if str(value) != expected:
    sys.exit(f"{sql} gave {value}, not {expected}")
print(f"ok   {sql} = {value} over {uri}")
