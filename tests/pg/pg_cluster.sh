#!/usr/bin/env bash
# pg_cluster.sh - a throwaway PostgreSQL cluster for the `pg` tests.
#
#   pg_cluster.sh start DIR          initdb DIR/data, start it on a free loopback
#                                    port, write the server's URL to DIR/url
#   pg_cluster.sh stop DIR           stop it (fast shutdown) and remove DIR/data
#   pg_cluster.sh run DIR DB CMD...  (re)create database DB and run CMD with
#                                    BATON_TEST_STORE=postgres://.../DB
#   pg_cluster.sh restart DIR [S]    restart the server (fast shutdown: every
#                                    session is cut); with S seconds, keep it
#                                    down that long first. Same port and data.
#
# The cluster trusts connections from 127.0.0.1 and its own socket only,
# listens on 127.0.0.1 alone, and does not fsync (test data). The server
# binaries are the newest under /usr/lib/postgresql (PG_BINDIR overrides).
# initdb and postgres refuse to run as root: as root, they run as the user
# `postgres` (the Debian package makes it), else `nobody`, owning DIR. Data
# and socket live in DIR, or, when that user cannot reach DIR or its path is
# too long for a unix socket, in a mktemp directory under /tmp named in
# DIR/base.
set -euo pipefail

die() {
    echo "pg_cluster.sh: $*" >&2
    exit 1
}

bindir() {
    if [ -n "${PG_BINDIR:-}" ]; then
        echo "$PG_BINDIR"
        return
    fi
    local v
    v=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
    [ -n "$v" ] && [ -x "/usr/lib/postgresql/$v/bin/initdb" ] ||
        die "no PostgreSQL server under /usr/lib/postgresql (apt-get install postgresql)"
    echo "/usr/lib/postgresql/$v/bin"
}

# Run a command as the cluster's owner.
owner=""
as_owner() {
    if [ -n "$owner" ]; then
        runuser -u "$owner" -- "$@"
    else
        "$@"
    fi
}

pick_owner() {
    if [ "$(id -u)" = 0 ]; then
        if id postgres >/dev/null 2>&1; then owner=postgres; else owner=nobody; fi
    fi
}

# A port nothing listens on (bash's /dev/tcp connects when one does).
free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    die "no free port found"
}

# Where a cluster made by start keeps its data and socket.
base_of() {
    if [ -f "$1/base" ]; then cat "$1/base"; else echo "$1"; fi
}

# The server's settings (pg_ctl -o) for a port and base directory.
server_options() {
    echo "-c listen_addresses=127.0.0.1 -c port=$1 -c unix_socket_directories=$2 \
-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
}

start() {
    local dir=$1 bin base
    bin=$(bindir)
    pick_owner
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    stop "$dir" # a cluster left running by an interrupted run
    rm -f "$dir/url" "$dir/base"
    base=$dir
    [ -n "$owner" ] && chown "$owner" "$dir"
    if [ ${#dir} -gt 80 ] || ! as_owner test -w "$dir" -a -x "$dir"; then
        base=$(mktemp -d /tmp/baton-pg.XXXXXX)
        [ -n "$owner" ] && chown "$owner" "$base"
        echo "$base" >"$dir/base"
    fi
    as_owner "$bin/initdb" -D "$base/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
        --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        die "initdb failed"
    }
    cat >"$base/data/pg_hba.conf" <<EOF
local all all trust
host all all 127.0.0.1/32 trust
EOF
    local port
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        if as_owner "$bin/pg_ctl" -D "$base/data" -l "$base/server.log" -w -t 30 \
            -o "$(server_options "$port" "$base")" start >/dev/null; then
            echo "postgres://postgres@127.0.0.1:$port" >"$dir/url"
            echo "pg_cluster.sh: PostgreSQL running at postgres://postgres@127.0.0.1:$port"
            return 0
        fi
        # Most likely the port was taken meanwhile: try another one.
        tail -n 5 "$base/server.log" >&2 || true
    done
    die "the server did not start (see $base/server.log)"
}

stop() {
    local dir=$1 bin base
    bin=$(bindir)
    pick_owner
    base=$(base_of "$dir")
    rm -f "$dir/url"
    [ -d "$base/data" ] || return 0
    as_owner "$bin/pg_ctl" -D "$base/data" -m fast stop -t 30 >/dev/null 2>&1 || true
    rm -rf "$base/data"
    if [ "$base" != "$dir" ]; then
        rm -rf "$base" "$dir/base"
    fi
}

# A fast shutdown (sessions are cut, as in a database failover), then the
# same server again on the same port, after `down` seconds without one.
restart() {
    local dir=$1 down=${2:-0} bin base port
    case "$down" in
    *[!0-9]* | "") die "restart: seconds must be a whole number, not '$down'" ;;
    esac
    [ -f "$dir/url" ] || die "no cluster in $dir (run: pg_cluster.sh start $dir)"
    bin=$(bindir)
    pick_owner
    base=$(base_of "$dir")
    if [ "$down" = 0 ]; then
        as_owner "$bin/pg_ctl" -D "$base/data" -l "$base/server.log" -m fast -w -t 30 restart \
            >/dev/null ||
            die "restart failed (see $base/server.log)"
        return 0
    fi
    port=$(sed -e 's/.*://' "$dir/url")
    as_owner "$bin/pg_ctl" -D "$base/data" -m fast -w -t 30 stop >/dev/null ||
        die "stop failed (see $base/server.log)"
    sleep "$down"
    as_owner "$bin/pg_ctl" -D "$base/data" -l "$base/server.log" -w -t 30 \
        -o "$(server_options "$port" "$base")" start >/dev/null ||
        die "the server did not start again (see $base/server.log)"
}

run() {
    local dir=$1 db=$2
    shift 2
    [ -f "$dir/url" ] || die "no cluster in $dir (run: pg_cluster.sh start $dir)"
    case "$db" in
    *[!a-z0-9_]* | "") die "database name '$db' must be [a-z0-9_]+" ;;
    esac
    local base bin
    base=$(cat "$dir/url")
    bin=$(bindir)
    "$bin/psql" -X -q -v ON_ERROR_STOP=1 -d "$base/postgres" \
        -c "SET client_min_messages TO warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" \
        -c "CREATE DATABASE $db" >/dev/null
    BATON_TEST_STORE="$base/$db" exec "$@"
}

[ $# -ge 2 ] || die "usage: pg_cluster.sh start|stop DIR | restart DIR [S] | run DIR DB CMD..."
cmd=$1
shift
case "$cmd" in
start) start "$1" ;;
stop) stop "$1" ;;
restart) restart "$@" ;;
run)
    [ $# -ge 3 ] || die "usage: pg_cluster.sh run DIR DB CMD..."
    run "$@"
    ;;
*) die "unknown command '$cmd'" ;;
esac
