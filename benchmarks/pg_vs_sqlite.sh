#!/bin/sh
# PostgreSQL against SQLite on the per-message path (#14): the same load, run in turn.
#
#   benchmarks/pg_vs_sqlite.sh [CORPUS] [PG_URL]
#
# Each PostgreSQL run gets a fresh database (dropped afterwards), so runs do not
# accumulate each other's training log. Prints one JSON line per run, with `uptime`
# beside it (other programs sharing the cores move msgs/s, hardly server_cpu_ms_per_msg)
# and pg_cpu_s: CPU seconds all postgres processes on this host spent during the run
# (anyone else's queries included), the database's share of the same cores.
set -eu
cd "$(dirname "$0")/.."
CORPUS=${1:-/work/shared/corpora/spamassassin}
PG=${2:-postgresql://127.0.0.1:5432/test}
BIN=${BIN:-.venv/bin}
DB=mailsift_bench_$$

pg_cpu() {  # CPU seconds of every process named postgres on this host
    "$BIN/python" -c '
import os
total = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    if stat[stat.index("(") + 1 : stat.rindex(")")].startswith("postgres"):
        fields = stat.rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])
print(round(total / os.sysconf("SC_CLK_TCK"), 2))'
}

run() {  # $1 backend label, $2 direction; MAILSIFT_DATABASE_URL from the environment
    before=$(pg_cpu)
    result=$("$BIN/mailsift" bench "$CORPUS" --workers 2 --concurrency 16 --direction "$2" --json)
    after=$(pg_cpu)
    printf '{"backend": "%s", "direction": "%s", "uptime": "%s", "pg_cpu_s": %s, "result": %s}\n' \
        "$1" "$2" "$(uptime | sed 's/.*load/load/')" \
        "$("$BIN/python" -c "print(round($after - $before, 2))")" "$result"
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
