#!/bin/bash
# Starts a throwaway PostgreSQL 15 in a fresh temp dir (initdb as the `postgres` user when run as
# root), on a free port with its socket in that dir, and prints shell assignments for it:
#   eval "$(scripts/pg-throwaway.sh start [extra postgres -c settings...])"  -> PG_DIR, PGHOST, PGPORT, ...
#   scripts/pg-throwaway.sh stop "$PG_DIR"
set -euo pipefail
PGBIN=${REKEY_PG_BINDIR:-/usr/lib/postgresql/15/bin}
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "${1:-}" in
  start)
    shift
    dir=$(mktemp -d /tmp/rekey-pg.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$PGBIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
    opts="-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200"
    for setting in "$@"; do opts="$opts -c $setting"; done
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -o "$opts" -l "$dir/server.log" -w start >/dev/null
    echo "PG_DIR=$dir; export PGHOST=$dir PGPORT=$port PGUSER=postgres PGDATABASE=postgres"
    ;;
  stop)
    dir=$2
    as_pg "$PGBIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start [setting=value ...] | stop DIR" >&2; exit 2 ;;
esac
