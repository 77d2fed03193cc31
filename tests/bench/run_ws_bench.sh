#!/usr/bin/env bash
# run_ws_bench.sh BUILD_DIR - the WebSocket half of `make bench` (issue #4).
#
# Runs the same closed-loop load (ws_load) against a bare libwebsockets echo
# server (ws_echo, the baseline) and against `baton serve`, then measures
# baton's memory idle and with 10,000 signed-in idle connections, and prints
# a summary with PASS/MISS against the four targets. A MISS is a finding,
# not a failure: the script fails (non-zero) only when a run breaks.
#
# Builds nothing: BUILD_DIR must hold bot/baton, tests/bench/ws_echo and
# tests/bench/ws_load (Release). Everything listens on 127.0.0.1 only.
#
# Knobs (environment): BENCH_CONNS (100), BENCH_MESSAGES (20000),
# BENCH_WARMUP (2000), BENCH_ECHO_MESSAGES (200000), BENCH_IDLE_CONNS (10000),
# BENCH_TIMEOUT (240 s per ws_load run), BENCH_RATE (100: the offered load, in
# messages per second over all connections, of the paced run).
set -euo pipefail

BUILD=${1:?usage: run_ws_bench.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BATON=$BUILD/bot/baton
ECHO=$BUILD/tests/bench/ws_echo
LOAD=$BUILD/tests/bench/ws_load
for b in "$BATON" "$ECHO" "$LOAD"; do
    [[ -x $b ]] || { echo "run_ws_bench: $b is missing; build it first" >&2; exit 1; }
done

CONNS=${BENCH_CONNS:-100}
MESSAGES=${BENCH_MESSAGES:-20000}
WARMUP=${BENCH_WARMUP:-2000}
# The echo server answers a message in about 10 us of CPU: 20,000 messages
# would be a quarter of a second, ~25 clock ticks of /proc/PID/stat, too
# coarse for a ratio. Same connections, same message, more of them.
ECHO_MESSAGES=${BENCH_ECHO_MESSAGES:-200000}
IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
RATE=${BENCH_RATE:-100}
TIMEOUT=${BENCH_TIMEOUT:-240}
TEXT="how many assets do we have?"
USERS=(alice bob carol dave erin)

TMP=$(mktemp -d "${TMPDIR:-/tmp}/baton-ws-bench.XXXXXX")
SERVER_PID=""
SERVER_LOG=""
PORT=""

# Stop the server started last: SIGTERM, then wait a bounded time (baton
# lets running requests finish, at most 30 s), then SIGKILL.
stop_server() {
    local pid=$SERVER_PID
    SERVER_PID=""
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 350); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "run_ws_bench: server $pid did not stop on SIGTERM; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop_server
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
    echo "run_ws_bench: $*" >&2
    if [[ -n $SERVER_LOG && -s $SERVER_LOG ]]; then
        echo "--- last lines of the server's log ($SERVER_LOG)" >&2
        tail -n 20 "$SERVER_LOG" >&2
    fi
    exit 1
}

# A port nobody listens on (a connect to it is refused), below Linux's
# ephemeral range (32768 and up) so no outgoing connection holds it.
free_port() {
    local p
    for _ in $(seq 1 100); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

# GET PATH answers 200 (plain bash: no curl needed).
http_ok() {
    local port=$1 path=$2 line
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$path" >&3
        IFS= read -r -t 2 line <&3 || exit 1
        [[ $line == "HTTP/1.1 200"* ]]
    ) 2>/dev/null
}

# start_server PATH CMD...: run CMD (its @PORT@ replaced by a free port) in
# the background and wait until PATH answers 200. Sets PORT, SERVER_PID.
# Another process may take the port between the check and the bind: then
# the server exits at once and the next port is tried.
start_server() {
    local path=$1 attempt arg
    shift
    for attempt in 1 2 3; do
        PORT=$(free_port)
        local cmd=()
        for arg in "$@"; do cmd+=("${arg//@PORT@/$PORT}"); done
        SERVER_LOG=$TMP/server-$PORT.log
        "${cmd[@]}" >"$SERVER_LOG" 2>&1 &
        SERVER_PID=$!
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            http_ok "$PORT" "$path" && return 0
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            die "the server did not answer $path within 10 s: ${cmd[*]}"
        fi
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
        echo "run_ws_bench: the server exited at start (attempt $attempt): ${cmd[*]}" >&2
        tail -n 3 "$SERVER_LOG" >&2
    done
    die "the server would not start"
}

# One ws_load run; its JSON line goes to FILE. A failed run ends the script.
load() {
    local out=$1
    shift
    # Tokens are secrets: never echoed.
    echo "  ws_load $(printf '%q ' "$@" | sed -E 's/--token [^ ]+/--token .../g')" >&2
    "$LOAD" --json --timeout "$TIMEOUT" "$@" >"$out" || die "ws_load failed: see above"
}

# Value of KEY in ws_load's flat JSON line.
jget() {
    sed -nE "s/.*\"$2\":\"?([^,\"}]*).*/\1/p" "$1"
}

rss_kb() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# The process's own memory: RSS less the pages of shared libraries and
# other mapped files (RssAnon).
anon_kb() {
    awk '/^RssAnon:/ {print $2}' "/proc/$1/status"
}

# 10,000 connections need 10,000 descriptors in the server and in ws_load.
need_fds=$((IDLE_CONNS + 1024))
if (($(ulimit -Sn) < need_fds)); then
    hard=$(ulimit -Hn)
    if [[ $hard == unlimited ]] || ((hard >= need_fds)); then
        ulimit -Sn "$need_fds"
    elif ! ulimit -n "$need_fds" 2>/dev/null; then
        die "cannot raise the open-file limit to $need_fds (hard limit $(ulimit -Hn)); run as root"
    fi
fi

echo "run_ws_bench: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), open-file limit $(ulimit -Sn)"

# ---- baseline: the bare libwebsockets echo server ----------------------------
echo "echo baseline (ws_echo)"
start_server / "$ECHO" --port @PORT@
load "$TMP/echo.json" --port "$PORT" --conns "$CONNS" --messages "$ECHO_MESSAGES" \
    --warmup "$WARMUP" --text "$TEXT" --server-pid "$SERVER_PID"
load "$TMP/echo_idle.json" --port "$PORT" --conns "$IDLE_CONNS" --idle --server-pid "$SERVER_PID"
stop_server

# ---- baton serve -----------------------------------------------------------------
# The shipped configuration with the per-user rate limit at its maximum
# (10,000 a minute). The load signs in as five users, round-robin over the
# connections, so no user comes near the limit: the bench measures the
# answers, never `rate_limited` errors.
cp -r "$SRC/config" "$TMP/config"
sed -i -E 's/^(  rate_limit:) *[0-9]+/\1 10000/' "$TMP/config/baton.yaml"
grep -qE '^  rate_limit: 10000' "$TMP/config/baton.yaml" || die "could not set server.rate_limit"
STORE=$TMP/baton.db
B=("$BATON" --config "$TMP/config" --store "$STORE")
"${B[@]}" check >/dev/null || die "the bench configuration is invalid"
TOKENS=()
for u in "${USERS[@]}"; do
    TOKENS+=(--token "$("${B[@]}" token "$u" 2>/dev/null)")
done

echo "baton serve (audit log on, as always; rate_limit 10000, ${#USERS[@]} users)"
start_server /healthz "${B[@]}" serve --listen 127.0.0.1:@PORT@
sleep 1 # let start-up allocations settle before reading the idle RSS
idle_rss_kb=$(rss_kb "$SERVER_PID")
idle_anon_kb=$(anon_kb "$SERVER_PID")
# First the connections at an offered load (--rate): what a person waits
# for while the team keeps baton busy, rather than the queue of a saturated
# server (run before the saturating run, whose gigabyte of write-ahead log
# the checkpoints would still be working through).
load "$TMP/batonr.json" --port "$PORT" --conns "$CONNS" --messages $((RATE * 30)) \
    --warmup "$RATE" --rate "$RATE" --text "$TEXT" --server-pid "$SERVER_PID" "${TOKENS[@]}"
load "$TMP/baton.json" --port "$PORT" --conns "$CONNS" --messages "$MESSAGES" \
    --warmup "$WARMUP" --text "$TEXT" --server-pid "$SERVER_PID" "${TOKENS[@]}"
# The same request on one connection: the latency of a request alone.
load "$TMP/baton1.json" --port "$PORT" --conns 1 --messages 1000 --warmup 200 \
    --text "$TEXT" --server-pid "$SERVER_PID" "${TOKENS[@]}"
stop_server

# A fresh process for the idle connections, so the load's heap is not counted.
echo "baton serve: $IDLE_CONNS idle signed-in connections"
start_server /healthz "${B[@]}" serve --listen 127.0.0.1:@PORT@
load "$TMP/baton_idle.json" --port "$PORT" --conns "$IDLE_CONNS" --idle \
    --server-pid "$SERVER_PID" "${TOKENS[@]}"
stop_server

# ---- summary ------------------------------------------------------------------------
e=$TMP/echo.json b=$TMP/baton.json b1=$TMP/baton1.json br=$TMP/batonr.json
ei=$TMP/echo_idle.json bi=$TMP/baton_idle.json
ratio=$(awk -v b="$(jget "$b" server_cpu_us_per_msg)" -v e="$(jget "$e" server_cpu_us_per_msg)" \
    'BEGIN { if (e > 0) printf "%.1f", b / e; else print "inf" }')
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v != "inf" && v + 0 <= t + 0) ? "PASS" : "MISS" }'; }
row() { printf '%-34s %12s %12s %12s %14s\n' "$@"; }

echo
echo "WebSocket load: $CONNS connections, closed loop, \"$TEXT\""
row "" "echo" "baton" "baton 1 conn" "baton $RATE/s"
row "messages measured (after warm-up)" "$(jget "$e" messages)" "$(jget "$b" messages)" "$(jget "$b1" messages)" "$(jget "$br" messages)"
row "msgs/s" "$(jget "$e" msgs_per_s)" "$(jget "$b" msgs_per_s)" "$(jget "$b1" msgs_per_s)" "$(jget "$br" msgs_per_s)"
row "p50 latency (ms)" "$(jget "$e" p50_ms)" "$(jget "$b" p50_ms)" "$(jget "$b1" p50_ms)" "$(jget "$br" p50_ms)"
row "p90 latency (ms)" "$(jget "$e" p90_ms)" "$(jget "$b" p90_ms)" "$(jget "$b1" p90_ms)" "$(jget "$br" p90_ms)"
row "p99 latency (ms)" "$(jget "$e" p99_ms)" "$(jget "$b" p99_ms)" "$(jget "$b1" p99_ms)" "$(jget "$br" p99_ms)"
row "max latency (ms)" "$(jget "$e" max_ms)" "$(jget "$b" max_ms)" "$(jget "$b1" max_ms)" "$(jget "$br" max_ms)"
row "server CPU (us/msg)" "$(jget "$e" server_cpu_us_per_msg)" "$(jget "$b" server_cpu_us_per_msg)" "$(jget "$b1" server_cpu_us_per_msg)" "$(jget "$br" server_cpu_us_per_msg)"
row "ws_load CPU (us/msg)" "$(jget "$e" client_cpu_us_per_msg)" "$(jget "$b" client_cpu_us_per_msg)" "$(jget "$b1" client_cpu_us_per_msg)" "$(jget "$br" client_cpu_us_per_msg)"
row "server VmHWM after (MiB)" "$(mib "$(jget "$e" server_hwm_kb)")" "$(mib "$(jget "$b" server_hwm_kb)")" "$(mib "$(jget "$b1" server_hwm_kb)")"
row "RSS idle, no connection (MiB)" "$(mib "$(jget "$ei" server_rss_before_kb)")" "$(mib "$idle_rss_kb")" "" ""
row "  of which its own (RssAnon, MiB)" "" "$(mib "$idle_anon_kb")" "" ""
row "RSS, $IDLE_CONNS idle conns (MiB)" "$(mib "$(jget "$ei" server_rss_kb)")" "$(mib "$(jget "$bi" server_rss_kb)")" "" ""
row "time to open them (s)" "$(jget "$ei" connect_s)" "$(jget "$bi" connect_s)" "" ""
echo "server CPU per message, baton / echo: ${ratio}x"
echo
echo "targets (a MISS is reported, not a failure):"
printf '  %-4s  server CPU per request <= 2x echo        %sx\n' "$(verdict "$ratio" 2)" "$ratio"
printf '  %-4s  p99 < 5 ms at %s connections, saturated  %s ms\n' \
    "$(verdict "$(jget "$b" p99_ms)" 4.999999)" "$CONNS" "$(jget "$b" p99_ms)"
printf '  %-4s  p99 < 5 ms at %s connections, %s msgs/s   %s ms\n' \
    "$(verdict "$(jget "$br" p99_ms)" 4.999999)" "$CONNS" "$RATE" "$(jget "$br" p99_ms)"
printf '  %-4s  %s idle connections < 100 MiB RSS     %s MiB\n' \
    "$(verdict "$(jget "$bi" server_rss_kb)" $((100 * 1024 - 1)))" "$IDLE_CONNS" \
    "$(mib "$(jget "$bi" server_rss_kb)")"
printf '  %-4s  idle RSS < 10 MiB                          %s MiB\n' \
    "$(verdict "$idle_rss_kb" $((10 * 1024 - 1)))" "$(mib "$idle_rss_kb")"
printf '  %-4s  idle RSS < 10 MiB, own memory (RssAnon)    %s MiB\n' \
    "$(verdict "$idle_anon_kb" $((10 * 1024 - 1)))" "$(mib "$idle_anon_kb")"
