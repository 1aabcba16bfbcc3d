"""One query over Flight SQL with ADBC; its single value must be the expected one.

Usage: flight_count.py FLIGHT_HOST:PORT SQL EXPECTED
"""

import sys

import adbc_driver_flightsql.dbapi as flightsql

with flightsql.connect("grpc://" + sys.argv[1]) as conn:
    cur = conn.cursor()
    cur.execute(sys.argv[2])
    value = cur.fetchone()[0]
if str(value) != sys.argv[3]:
    sys.exit(f"{sys.argv[2]} gave {value}, not {sys.argv[3]}")
print(f"ok   {sys.argv[2]} = {value}")
