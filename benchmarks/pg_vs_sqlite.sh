#!/bin/sh
# PostgreSQL against SQLite on the per-message path (#14): the same load, run in turn.
#
#   benchmarks/pg_vs_sqlite.sh [CORPUS] [PG_URL]
#
# Each PostgreSQL run gets a fresh database (dropped afterwards), so runs do not
# accumulate each other's training log. Prints one JSON line per run, with `uptime`
# beside it: other programs sharing the cores move msgs/s, hardly server_cpu_ms_per_msg
# (mailsift's own CPU per message) or db_cpu_ms_per_msg (the local PostgreSQL's).
set -eu
cd "$(dirname "$0")/.."
CORPUS=${1:-../shared/corpora/spamassassin}
PG=${2:-postgresql://127.0.0.1:5432/test}
BIN=${BIN:-.venv/bin}
DB=mailsift_bench_$$

run() {  # $1 backend label, $2 direction; MAILSIFT_DATABASE_URL from the environment
    result=$("$BIN/mailsift" bench "$CORPUS" --workers 2 --concurrency 16 --direction "$2" --json)
    printf '{"backend": "%s", "direction": "%s", "uptime": "%s", "result": %s}\n' \
        "$1" "$2" "$(uptime | sed 's/.*load/load/')" "$result"
}

pg_url() { printf '%s' "$PG" | sed "s#/[^/]*\$#/$DB#"; }
psql_admin() { "$BIN/python" - "$PG" "$1" <<'PY'
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    conn.execute(sys.argv[2])
PY
}

for direction in inbound outbound; do
    unset MAILSIFT_DATABASE_URL || true
    run sqlite "$direction"
    psql_admin "DROP DATABASE IF EXISTS $DB"
    psql_admin "CREATE DATABASE $DB"
    MAILSIFT_DATABASE_URL=$(pg_url) run postgresql "$direction"
    psql_admin "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
done
