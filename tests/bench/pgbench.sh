#!/usr/bin/env bash
# pgbench comparison: PostgreSQL direct vs pgbouncer vs shadowproxy (old-only, dual-write in
# sync and in async consistency).
#
# Everything runs on loopback against the PostgreSQL server on 127.0.0.1:${PG_PORT:-5432}
# (trust auth, user postgres). The script
#   1. installs pgbouncer from apt when it is missing and starts a private instance
#      (session pooling, trust auth) on a free port in a temp dir;
#   2. (re)creates databases bench_old and bench_new with `pgbench -i -s $SCALE`;
#   3. starts `.venv/bin/shadowproxy serve` three times: old-only, dual-write with
#      SHADOW_MIRROR_CONSISTENCY=sync (dual-sync) and with async (dual-async);
#   4. runs ROUNDS rounds of every workload against every target, rotating the target
#      order, and records TPS and average latency in a raw CSV;
#   5. around every dual-write write workload: copies bench_old into bench_new before
#      the run, waits for the proxy's mirror to drain after it, then compares the two
#      databases table by table (EQUAL / DIFFERENT);
#   6. prints a Markdown table of medians with ratios to direct and to pgbouncer, and
#      the CPU the process in the middle (pgbouncer or the proxy) spent per transaction;
#      then the CPU per transaction of every process on the cores (the old and new
#      stores' backends and pgbench, sampled over a window inside each run of 5 s or
#      more, and the middle process).
#
# Environment (defaults in brackets):
#   SCALE [10]  DURATION [20] seconds per run  ROUNDS [2]  CLIENTS [8]  THREADS [2]
#   TARGETS   ["direct pgbouncer old-only dual-sync dual-async"]  any subset, any order;
#             also shadow-read (mode shadow-read, sync, 10 % of reads shadowed),
#             read-new (reads served by the new store) and write-new (writes
#             authoritative on the new store, mirrored to the old one in lock-step)
#   WORKLOADS ["select-simple select-extended select-prepared tpcb-extended"]
#               select-simple   = -S -M simple      select-extended = -S -M extended
#               select-prepared = -S -M prepared    tpcb-extended   = built-in tpcb-like, -M extended
#   PG_PORT [5432]  DRAIN_TIMEOUT [60]  READY_TIMEOUT [60] seconds
#   SHADOWPROXY_BIN [<repo>/.venv/bin/shadowproxy]
#   DROP_DBS [0]  set to 1 to drop bench_old/bench_new at the end
#
# Exit status: 0 all good; 1 the stores differ after a dual-write run; 2 another failure
# (a pgbench run failed, the mirror did not drain, a process could not start).
# The temp dir (raw CSV, every pgbench log, pgbouncer and proxy logs) is kept; its path
# is printed at the end.
#
# Example (quick): TARGETS="direct pgbouncer" DURATION=5 ROUNDS=1 SCALE=1 bash tests/bench/pgbench.sh

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
REPORT="$SCRIPT_DIR/report.py"
SHADOWPROXY_BIN=${SHADOWPROXY_BIN:-$REPO_ROOT/.venv/bin/shadowproxy}

SCALE=${SCALE:-10}
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
TARGETS=${TARGETS:-direct pgbouncer old-only dual-sync dual-async}
WORKLOADS=${WORKLOADS:-select-simple select-extended select-prepared tpcb-extended}
PG_PORT=${PG_PORT:-5432}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-60}
READY_TIMEOUT=${READY_TIMEOUT:-60}
DROP_DBS=${DROP_DBS:-0}

HOST=127.0.0.1
PGUSER_NAME=postgres
OLD_DB=bench_old
NEW_DB=bench_new
STOP_TIMEOUT=15
PGB_SYSTEM_USER=shadowbench
PGBENCH_TABLES=(pgbench_branches pgbench_tellers pgbench_accounts pgbench_history)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }

# --------------------------------------------------------------------------- options

for v in SCALE DURATION ROUNDS CLIENTS THREADS PG_PORT DRAIN_TIMEOUT READY_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
((THREADS <= CLIENTS)) || die "THREADS ($THREADS) must not exceed CLIENTS ($CLIENTS)"

read -r -a TARGET_LIST <<<"$TARGETS"
read -r -a WORKLOAD_LIST <<<"$WORKLOADS"
((${#TARGET_LIST[@]} > 0)) || die "TARGETS is empty"
((${#WORKLOAD_LIST[@]} > 0)) || die "WORKLOADS is empty"
for t in "${TARGET_LIST[@]}"; do
    case $t in direct | pgbouncer | old-only | dual-sync | dual-async | shadow-read | read-new | write-new) ;;
    *) die "unknown target '$t' (direct pgbouncer old-only dual-sync dual-async shadow-read read-new write-new)" ;;
    esac
done

# pgbench arguments of a workload, one per line.
workload_args() {
    case $1 in
    select-simple) printf '%s\n' -S -M simple ;;
    select-extended) printf '%s\n' -S -M extended ;;
    select-prepared) printf '%s\n' -S -M prepared ;;
    tpcb-extended) printf '%s\n' -b tpcb-like -M extended ;;
    *) return 1 ;;
    esac
}
is_write_workload() { [[ $1 == tpcb-* ]]; }
for w in "${WORKLOAD_LIST[@]}"; do
    workload_args "$w" >/dev/null || die "unknown workload '$w' (select-simple select-extended select-prepared tpcb-extended)"
done

has_target() {
    local t
    for t in "${TARGET_LIST[@]}"; do [[ $t == "$1" ]] && return 0; done
    return 1
}

for cmd in pgbench psql pg_isready createdb dropdb python3; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found on PATH"
done
is_proxy_target() { [[ $1 == old-only || $1 == dual-* || $1 == shadow-read || $1 == read-new || $1 == write-new ]]; }
is_mirrored_target() { [[ $1 == dual-* || $1 == shadow-read || $1 == read-new || $1 == write-new ]]; }
uses_proxy=0
for t in "${TARGET_LIST[@]}"; do is_proxy_target "$t" && uses_proxy=1; done
if ((uses_proxy)); then
    command -v curl >/dev/null || die "'curl' not found on PATH"
    [[ -x $SHADOWPROXY_BIN ]] || die "$SHADOWPROXY_BIN not found (run 'make' / pip install -e . first)"
fi

# --------------------------------------------------------------------------- processes

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shadowbench.XXXXXX")
# pgbouncer may run as an unprivileged user and must reach its own subdirectory.
chmod 755 "$WORK"
mkdir -p "$WORK/runs"
RESULTS_CSV="$WORK/results.csv"
EQUALITY_CSV="$WORK/equality.csv"
echo "round,workload,target,port,tps,latency_ms,failed,txns,cpu_s,status,log,window_s,old_cpu_s,new_cpu_s,pgbench_cpu_s" >"$RESULTS_CSV"
echo "round,table,old,new,verdict" >"$EQUALITY_CSV"

STARTED_PIDS=()
PGBENCH_PID=""

stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not stop after ${STOP_TIMEOUT}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    [[ -n $PGBENCH_PID ]] && stop_pid "$PGBENCH_PID"
    for pid in "${STARTED_PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ $DROP_DBS == 1 ]]; then
        dropdb -h "$HOST" -p "$PG_PORT" -U "$PGUSER_NAME" --if-exists --force "$OLD_DB" 2>/dev/null || true
        dropdb -h "$HOST" -p "$PG_PORT" -U "$PGUSER_NAME" --if-exists --force "$NEW_DB" 2>/dev/null || true
    fi
    log "work dir kept: $WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Print N distinct free loopback TCP ports (all held open together while choosing).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Wait until something answers the PostgreSQL protocol on $port (or the admin /healthz).
wait_ready() {
    local name=$1 pid=$2 port=$3 admin_port=${4:-} logfile=$5
    local deadline=$((SECONDS + READY_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$name (pid $pid) exited during startup; last lines of $logfile:"
            tail -n 30 "$logfile" >&2 || true
            die "$name failed to start"
        fi
        if pg_isready -q -h "$HOST" -p "$port" -U "$PGUSER_NAME" -d "$OLD_DB" -t 2; then
            return 0
        fi
        if [[ -n $admin_port ]] && curl -sf --max-time 2 "http://$HOST:$admin_port/healthz" >/dev/null; then
            return 0
        fi
        sleep 0.3
    done
    tail -n 30 "$logfile" >&2 || true
    die "$name not ready on port $port after ${READY_TIMEOUT}s"
}

# A real round trip through the target before measuring it.
smoke_query() {
    local name=$1 port=$2 logfile=$3 out
    if ! out=$(psql -X -At -h "$HOST" -p "$port" -U "$PGUSER_NAME" -d "$OLD_DB" \
        -c 'SELECT count(*) FROM pgbench_branches' 2>&1); then
        log "$name: smoke query failed: $out"
        tail -n 30 "$logfile" >&2 || true
        die "$name does not serve queries"
    fi
}

find_pgbouncer() {
    local p
    p=$(command -v pgbouncer 2>/dev/null || true)
    [[ -z $p && -x /usr/sbin/pgbouncer ]] && p=/usr/sbin/pgbouncer
    printf '%s' "$p"
}

install_pgbouncer() {
    log "pgbouncer not found; installing it from apt"
    local -a sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "pgbouncer is missing and neither root nor sudo is available"
        sudo=(sudo -n)
    fi
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq pgbouncer >&2
}

PGB_PID=""
start_pgbouncer() {
    local bin dir=$WORK/pgbouncer pool=$((CLIENTS > 20 ? CLIENTS : 20))
    local maxconn=$((CLIENTS + 10 > 100 ? CLIENTS + 10 : 100))
    bin=$(find_pgbouncer)
    if [[ -z $bin ]]; then
        install_pgbouncer
        bin=$(find_pgbouncer)
        [[ -n $bin ]] || die "pgbouncer still not found after apt-get install"
    fi
    mkdir -p "$dir"
    printf '"%s" ""\n' "$PGUSER_NAME" >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=$HOST port=$PG_PORT

[pgbouncer]
listen_addr = $HOST
listen_port = $PGB_PORT
unix_socket_dir =
pidfile =
logfile = $dir/pgbouncer.log
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = $PGUSER_NAME
pool_mode = session
default_pool_size = $pool
max_client_conn = $maxconn
ignore_startup_parameters = extra_float_digits
EOF
    touch "$dir/pgbouncer.log"
    local -a as_user=()
    if ((EUID == 0)); then
        # pgbouncer refuses to run as root; its own -u switches to an unprivileged user
        # and the process stays our direct child, so we can stop it by its pid.
        if ! id -u "$PGB_SYSTEM_USER" >/dev/null 2>&1; then
            log "creating system user $PGB_SYSTEM_USER for pgbouncer"
            useradd --system --user-group --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin "$PGB_SYSTEM_USER"
        fi
        chown -R "$PGB_SYSTEM_USER" "$dir"
        as_user=(-u "$PGB_SYSTEM_USER")
    fi
    chmod 755 "$dir"
    "$bin" "${as_user[@]}" "$dir/pgbouncer.ini" >"$dir/pgbouncer.stderr" 2>&1 &
    PGB_PID=$!
    STARTED_PIDS+=("$PGB_PID")
    wait_ready pgbouncer "$PGB_PID" "$PGB_PORT" "" "$dir/pgbouncer.stderr"
    PGB_VERSION=$("$bin" --version | head -n 1)
    log "pgbouncer (pid $PGB_PID) on $HOST:$PGB_PORT: $PGB_VERSION, pool_mode=session, default_pool_size=$pool"
}

declare -A PROXY_PID=() PROXY_PORT=() PROXY_ADMIN=()
start_proxy() {
    # target name, mode, consistency, ports
    local target=$1 mode=$2 consistency=$3 port=$4 admin=$5 dir=$WORK/proxy-$1
    mkdir -p "$dir/journal"
    # Own working directory per instance, so nothing relative (state file, journal) is shared.
    (
        cd "$dir"
        exec env \
            SHADOW_LISTEN="$HOST:$port" \
            SHADOW_ADMIN_LISTEN="$HOST:$admin" \
            SHADOW_OLD_DSN="postgresql://$PGUSER_NAME@$HOST:$PG_PORT/$OLD_DB" \
            SHADOW_NEW_DSN="postgresql://$PGUSER_NAME@$HOST:$PG_PORT/$NEW_DB" \
            SHADOW_MODE="$mode" \
            SHADOW_MIRROR_CONSISTENCY="$consistency" \
            SHADOW_JOURNAL_DIR="$dir/journal" \
            SHADOW_DIVERGENCE_LOG="$dir/div.jsonl" \
            "$SHADOWPROXY_BIN" serve
    ) >"$dir/proxy.log" 2>&1 &
    PROXY_PID[$target]=$!
    PROXY_PORT[$target]=$port
    PROXY_ADMIN[$target]=$admin
    STARTED_PIDS+=("${PROXY_PID[$target]}")
    wait_ready "proxy $target" "${PROXY_PID[$target]}" "$port" "$admin" "$dir/proxy.log"
    smoke_query "proxy $target" "$port" "$dir/proxy.log"
    log "proxy $target: $mode, $consistency (pid ${PROXY_PID[$target]}) on $HOST:$port, admin $HOST:$admin"
}

target_port() {
    case $1 in
    direct) echo "$PG_PORT" ;;
    pgbouncer) echo "$PGB_PORT" ;;
    *) echo "${PROXY_PORT[$1]}" ;;
    esac
}

# The process between pgbench and PostgreSQL (none for direct): its CPU per
# transaction is the table's least noisy column on a shared machine.
middle_pid() {
    case $1 in
    direct) echo "" ;;
    pgbouncer) echo "$PGB_PID" ;;
    *) echo "${PROXY_PID[$1]}" ;;
    esac
}

# utime + stime of a process in clock ticks (fields 14 and 15 of /proc/PID/stat,
# counted after the command name, which may hold spaces).
cpu_ticks() {
    [[ -n $1 && -r /proc/$1/stat ]] || { echo ""; return; }
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# --------------------------------------------------------------------------- databases

psql_db() { psql -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U "$PGUSER_NAME" -d "$@"; }

setup_databases() {
    local db
    for db in "$OLD_DB" "$NEW_DB"; do
        log "creating $db (pgbench -i -s $SCALE)"
        PGOPTIONS='-c client_min_messages=warning' \
            dropdb -h "$HOST" -p "$PG_PORT" -U "$PGUSER_NAME" --if-exists --force "$db"
        createdb -h "$HOST" -p "$PG_PORT" -U "$PGUSER_NAME" "$db"
        pgbench -i -q -s "$SCALE" -h "$HOST" -p "$PG_PORT" -U "$PGUSER_NAME" "$db" \
            >"$WORK/init-$db.log" 2>&1 || { tail -n 20 "$WORK/init-$db.log" >&2; die "pgbench -i failed for $db"; }
    done
}

# Make bench_new an exact copy of bench_old's pgbench tables. Row copies (TRUNCATE + COPY)
# rather than `createdb -T`: no exclusive access to bench_old is needed (pgbouncer and the
# proxies may keep server connections open) and the dual-write proxy keeps running.
reset_new_from_old() {
    local t
    for t in "${PGBENCH_TABLES[@]}"; do
        psql_db "$OLD_DB" -c "\\copy $t TO pstdout" |
            PGOPTIONS='-c lock_timeout=30s' psql_db "$NEW_DB" \
                -c 'BEGIN' -c "TRUNCATE $t" -c "\\copy $t FROM pstdin" -c 'COMMIT'
    done
    local tables
    tables=$(IFS=,; echo "${PGBENCH_TABLES[*]}")
    psql_db "$NEW_DB" -c "VACUUM ANALYZE $tables"
    # Do not let the copy's dirty pages be flushed during the measured run.
    psql_db "$NEW_DB" -c 'CHECKPOINT'
}

# One checksum per table; pgbench_history has no key, so it is compared as a multiset of
# whole rows, mtime (CURRENT_TIMESTAMP, pinned by the proxy) included. The keyed tables are hashed per block of
# 100000 keys and the block hashes hashed again, which bounds memory at any scale (a single
# string_agg over all accounts passes PostgreSQL's 1 GB value limit from about scale 80).
table_checksum() {
    local db=$1 t=$2 pk sql
    case $t in
    pgbench_accounts) pk=aid ;;
    pgbench_branches) pk=bid ;;
    pgbench_tellers) pk=tid ;;
    esac
    if [[ $t == pgbench_history ]]; then
        sql="SELECT count(*) || ' ' || coalesce(md5(string_agg(ROW(tid, bid, aid, delta, mtime)::text,
                ',' ORDER BY tid, bid, aid, delta, mtime)), '-') FROM pgbench_history"
    else
        sql="SELECT coalesce(md5(string_agg(h, ',' ORDER BY blk)), '-') FROM (
                SELECT $pk / 100000 AS blk, md5(string_agg(t::text, ',' ORDER BY $pk)) AS h
                FROM $t t GROUP BY 1) s"
    fi
    psql_db "$db" -At -c "$sql"
}

# Compare bench_old and bench_new; print EQUAL / DIFFERENT per table. Returns 1 on any difference.
check_equal() {
    local label=$1 t a b pid verdict rc=0
    log "equality check ($label): $OLD_DB vs $NEW_DB"
    for t in pgbench_accounts pgbench_branches pgbench_tellers pgbench_history; do
        # Both databases at once (one backend each).
        table_checksum "$OLD_DB" "$t" >"$WORK/checksum.old" &
        pid=$!
        b=$(table_checksum "$NEW_DB" "$t")
        wait "$pid"
        a=$(<"$WORK/checksum.old")
        if [[ $a == "$b" ]]; then verdict=EQUAL; else verdict=DIFFERENT; rc=1; fi
        printf '  %-18s %s\n' "$t" "$verdict"
        [[ $verdict == EQUAL ]] || printf '    old: %s\n    new: %s\n' "$a" "$b"
        echo "$label,$t,$a,$b,$verdict" >>"$EQUALITY_CSV"
    done
    return "$rc"
}

# Poll the proxy's /status until mirror_queue_depth and journal_backlog_units are both 0.
wait_drained() {
    local mode=$1 admin=${PROXY_ADMIN[$1]} body rc
    local deadline=$((SECONDS + DRAIN_TIMEOUT))
    while :; do
        body=$(curl -s --max-time 5 "http://$HOST:$admin/status" 2>/dev/null || true)
        rc=0
        printf '%s' "$body" | python3 "$REPORT" drained || rc=$?
        ((rc == 0)) && return 0
        if ((SECONDS >= deadline)); then
            if ((rc == 2)); then
                log "proxy $mode: /status has no usable mirror_queue_depth/journal_backlog_units"
            else
                log "proxy $mode: mirror not drained after ${DRAIN_TIMEOUT}s"
            fi
            log "last /status: ${body:0:2000}"
            return 1
        fi
        sleep 0.5
    done
}

# --------------------------------------------------------------------------- runs

RUN_FAILURES=0
DIVERGENCES=0
EQUALITY_CHECKS=0

run_one() {
    local round=$1 workload=$2 target=$3 port logf status parsed tps lat failed txns
    local pid ticks0 ticks1 cpu_s=""
    local -a wargs
    port=$(target_port "$target")
    pid=$(middle_pid "$target")
    ticks0=$(cpu_ticks "$pid")
    mapfile -t wargs < <(workload_args "$workload")
    logf="$WORK/runs/r$round-$workload-$target.log"
    # In the background + wait, so that an INT/TERM trap runs at once (and stops it).
    pgbench -n -c "$CLIENTS" -j "$THREADS" -T "$DURATION" "${wargs[@]}" \
        -h "$HOST" -p "$port" -U "$PGUSER_NAME" "$OLD_DB" >"$logf" 2>&1 &
    PGBENCH_PID=$!
    # The stores' backends and pgbench, over a window inside the run (they exit
    # with it): where the rest of the two cores' time goes.
    local split0="" split1="" t0 t1 window="" old_s="" new_s="" pgb_s=""
    if ((DURATION >= 5)); then
        sleep 2 & wait $! || true
        t0=$(date +%s.%N)
        split0=$(python3 "$REPORT" cpu "$OLD_DB" "$NEW_DB")
        sleep $((DURATION - 3)) & wait $! || true
        t1=$(date +%s.%N)
        split1=$(python3 "$REPORT" cpu "$OLD_DB" "$NEW_DB")
        window=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')
        IFS=, read -r old_s new_s pgb_s < <(awk -v a="$split0" -v b="$split1" 'BEGIN {
            n = split(a, x, ","); split(b, y, ",")
            for (i = 1; i <= n; i++) printf "%s%.2f", (i > 1 ? "," : ""), y[i] - x[i]
            print "" }')
    fi
    if wait "$PGBENCH_PID"; then
        status=ok
    else
        status="exit$?"
    fi
    PGBENCH_PID=""
    ticks1=$(cpu_ticks "$pid")
    if [[ -n $ticks0 && -n $ticks1 ]]; then
        cpu_s=$(awk -v a="$ticks0" -v b="$ticks1" -v hz="$(getconf CLK_TCK)" 'BEGIN {print (b - a) / hz}')
    fi
    parsed=$(python3 "$REPORT" parse "$logf")
    IFS=, read -r tps lat failed txns <<<"$parsed"
    if [[ $status == ok && (-z $tps || -z $lat) ]]; then status=unparsed; fi
    if [[ $status != ok ]]; then
        RUN_FAILURES=$((RUN_FAILURES + 1))
        log "run failed ($status), last lines of $logf:"
        tail -n 5 "$logf" >&2 || true
    fi
    echo "$round,$workload,$target,$port,$tps,$lat,$failed,$txns,$cpu_s,$status,$logf,$window,$old_s,$new_s,$pgb_s" >>"$RESULTS_CSV"
    log "round $round  $(printf '%-16s %-10s' "$workload" "$target") tps=${tps:-?}  latency=${lat:-?} ms  failed=${failed:-?}  [$status]"
}

# --------------------------------------------------------------------------- main

ports=$(free_ports 13)
read -r PGB_PORT P_OLD P_OLD_ADMIN P_SYNC P_SYNC_ADMIN P_ASYNC P_ASYNC_ADMIN P_SHADOW P_SHADOW_ADMIN \
    P_RNEW P_RNEW_ADMIN P_WNEW P_WNEW_ADMIN <<<"$ports"
PGB_VERSION="pgbouncer not used"

log "work dir: $WORK"
setup_databases
has_target pgbouncer && start_pgbouncer
has_target old-only && start_proxy old-only old-only sync "$P_OLD" "$P_OLD_ADMIN"
has_target dual-sync && start_proxy dual-sync dual-write sync "$P_SYNC" "$P_SYNC_ADMIN"
has_target dual-async && start_proxy dual-async dual-write async "$P_ASYNC" "$P_ASYNC_ADMIN"
has_target shadow-read && start_proxy shadow-read shadow-read sync "$P_SHADOW" "$P_SHADOW_ADMIN"
has_target read-new && start_proxy read-new read-new sync "$P_RNEW" "$P_RNEW_ADMIN"
has_target write-new && start_proxy write-new write-new sync "$P_WNEW" "$P_WNEW_ADMIN"

n_targets=${#TARGET_LIST[@]}
total_s=$((ROUNDS * ${#WORKLOAD_LIST[@]} * n_targets * DURATION))
log "running $ROUNDS round(s) x ${#WORKLOAD_LIST[@]} workload(s) x $n_targets target(s) x ${DURATION}s (~${total_s}s of pgbench)"

STORES_EQUAL=1 # both databases come from the same pgbench -i
for ((round = 1; round <= ROUNDS; round++)); do
    widx=0
    for workload in "${WORKLOAD_LIST[@]}"; do
        # Rotate the target order by round and workload so no target is always first/last.
        offset=$(((round - 1 + widx) % n_targets))
        for ((i = 0; i < n_targets; i++)); do
            target=${TARGET_LIST[$(((offset + i) % n_targets))]}
            mirrored=0
            if is_mirrored_target "$target" && { is_write_workload "$workload" || ((!STORES_EQUAL)); }; then
                # A write run starts from equal stores; so does a run with shadow reads
                # after writes that bypassed the mirror (else they report true differences).
                is_write_workload "$workload" && mirrored=1
                wait_drained "$target" || RUN_FAILURES=$((RUN_FAILURES + 1))
                log "copying $OLD_DB into $NEW_DB before the $target $workload run"
                reset_new_from_old
                STORES_EQUAL=1
            fi
            run_one "$round" "$workload" "$target"
            if ((mirrored)); then
                EQUALITY_CHECKS=$((EQUALITY_CHECKS + 1))
                wait_drained "$target" || RUN_FAILURES=$((RUN_FAILURES + 1))
                check_equal "round $round $workload" || DIVERGENCES=$((DIVERGENCES + 1))
            elif is_write_workload "$workload"; then
                STORES_EQUAL=0 # written without the mirror (direct, pgbouncer, old-only)
            fi
        done
        widx=$((widx + 1))
    done
done

# --------------------------------------------------------------------------- report

cpu_model=$(grep -m 1 -E '^(model name|Model|cpu model)[[:space:]]*:' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
pg_version=$(psql_db postgres -At -c 'SHOW server_version' || echo unknown)
machine="$(nproc) CPUs, $(uname -srm), CPU: ${cpu_model:-unknown}, PostgreSQL $pg_version"
config="scale=$SCALE, duration=${DURATION}s, rounds=$ROUNDS, clients=$CLIENTS, threads=$THREADS, $(pgbench --version), $PGB_VERSION"

echo
echo "## pgbench: direct vs pgbouncer vs shadowproxy"
echo
python3 "$REPORT" table "$RESULTS_CSV" --machine "$machine" --config "$config" \
    --date "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
echo
if ((EQUALITY_CHECKS == 0)); then
    echo "Equality check: skipped (no dual-write run of a write workload)."
elif ((DIVERGENCES == 0)); then
    echo "Equality check: EQUAL after all $EQUALITY_CHECKS dual-write write run(s)."
else
    echo "Equality check: DIFFERENT after $DIVERGENCES of $EQUALITY_CHECKS dual-write write run(s) (see $EQUALITY_CSV)."
fi
for mode in old-only dual-sync dual-async shadow-read read-new write-new; do
    has_target "$mode" || continue
    div="$WORK/proxy-$mode/div.jsonl"
    echo "Proxy $mode divergence log: $( [[ -f $div ]] && wc -l <"$div" || echo 0) event(s) ($div)"
done
# How many reads were actually shadowed (and shed): the sampling the ratios paid for.
for mode in shadow-read read-new write-new; do
    has_target "$mode" || continue
    shadow=$(curl -sf --max-time 5 "http://$HOST:${PROXY_ADMIN[$mode]}/status" | python3 -c '
import json, sys
s = json.load(sys.stdin).get("shadow_reads") or {}
print(json.dumps(s.get("outcomes", {}), sort_keys=True), "- shadow connections open:", s.get("connections"))
' 2>/dev/null || echo "unavailable")
    echo "Proxy $mode shadow reads by outcome: $shadow"
done
echo "Raw results: $RESULTS_CSV"
echo "Logs: $WORK"

if ((DIVERGENCES > 0)); then
    exit 1
fi
if ((RUN_FAILURES > 0)); then
    log "$RUN_FAILURES failure(s) during the runs (failed pgbench runs or undrained mirror)"
    exit 2
fi
