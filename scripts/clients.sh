#!/usr/bin/env bash
# Installs (once) the Debian packages the PostgreSQL front end is tested and benchmarked with:
# psql (postgresql-client), pgjdbc (libpostgresql-jdbc-java; Java 17 runs it) and a real
# PostgreSQL server (postgresql, the benchmark's peer), and curl (the subscriptions' HTTP client).
# Uses sudo when not root.
set -euo pipefail
missing=()
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
[ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v curl >/dev/null 2>&1 || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "scripts/clients.sh: installing ${missing[*]}" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
fi
