#!/usr/bin/env bash
# Real PostgreSQL and Redis servers on loopback for the adapter tests and the real-workload benchmark
# (issue 15). Installs Debian's `postgresql` and `redis-server` if missing (apt-get, as root), keeps
# every file under the project's own directory (target/services by default), and never touches a
# system-wide cluster or service.
#
#   scripts/services.sh start            install if needed, start both (idempotent)
#   scripts/services.sh stop             stop both (idempotent)
#   scripts/services.sh status           say what runs
#   scripts/services.sh env              print `export SHARDPOOL_PG_URL=... SHARDPOOL_REDIS_URL=...`
#   scripts/services.sh restart pg|redis restart one server (the tests' "server restarted mid-run")
#   scripts/services.sh pids pg|redis    every process id of one server (the tests' SIGSTOP/SIGCONT)
#
# Knobs (environment): SHARDPOOL_SERVICES_DIR (default: <repo>/target/services),
# SHARDPOOL_PG_PORT (55432), SHARDPOOL_REDIS_PORT (56379), SHARDPOOL_PG_MAX_CONNECTIONS (40: the
# server's max_connections; 3 of them are reserved for superusers), SHARDPOOL_REDIS_MAX_CLIENTS (40).
# Test credentials (loopback only, throw-away data): user `shardpool`, password `shardpool`,
# database `shardpool_test`; Redis `requirepass shardpool`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${SHARDPOOL_SERVICES_DIR:-$repo/target/services}"
pg_port="${SHARDPOOL_PG_PORT:-55432}"
redis_port="${SHARDPOOL_REDIS_PORT:-56379}"
pg_max="${SHARDPOOL_PG_MAX_CONNECTIONS:-40}"
redis_max="${SHARDPOOL_REDIS_MAX_CLIENTS:-40}"
pg_data="$dir/pg/data"
pg_sock="$dir/pg/sock"
redis_dir="$dir/redis"
user=shardpool
password=shardpool
db=shardpool_test

log() { echo "services.sh: $*" >&2; }

pg_bin() {
    local b
    for b in /usr/lib/postgresql/*/bin; do
        [[ -x "$b/pg_ctl" ]] && { echo "$b"; return 0; }
    done
    return 1
}

install_missing() {
    local need=()
    pg_bin >/dev/null || need+=(postgresql)
    command -v redis-server >/dev/null || need+=(redis-server)
    ((${#need[@]} == 0)) && return 0
    if [[ $(id -u) != 0 ]]; then
        log "missing ${need[*]} and not root: install them (apt-get install ${need[*]}) and rerun"
        return 1
    fi
    log "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    # Debian's packages start a system-wide cluster/service; we use our own and leave theirs alone.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# Runs a command as the postgres user (PostgreSQL refuses to run as root).
as_pg() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

pg_running() {
    local bin
    bin="$(pg_bin)" || return 1
    [[ -f "$pg_data/PG_VERSION" ]] && as_pg "$bin/pg_ctl" -D "$pg_data" status >/dev/null 2>&1
}

pg_start() {
    local bin
    bin="$(pg_bin)"
    mkdir -p "$pg_sock"
    if [[ $(id -u) == 0 ]]; then
        chown -R postgres:postgres "$dir/pg"
        # The postgres user must be able to reach the data directory.
        chmod o+x "$dir" "$(dirname "$dir")" 2>/dev/null || true
    fi
    if [[ ! -f "$pg_data/PG_VERSION" ]]; then
        log "initdb in $pg_data"
        local pwfile="$dir/pg/pwfile"
        echo "$password" >"$pwfile"
        [[ $(id -u) == 0 ]] && chown postgres:postgres "$pwfile"
        as_pg "$bin/initdb" -D "$pg_data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
            --pwfile="$pwfile" -E UTF8 >"$dir/pg/initdb.log" 2>&1
        rm -f "$pwfile"
    fi
    if pg_running; then
        return 0
    fi
    as_pg "$bin/pg_ctl" -D "$pg_data" -l "$dir/pg/server.log" -w -t 30 \
        -o "-p $pg_port -k $pg_sock -c listen_addresses=127.0.0.1 -c max_connections=$pg_max -c fsync=off -c synchronous_commit=off" \
        start >/dev/null
    # The test role and database (idempotent).
    local psql=("$bin/psql" -h "$pg_sock" -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt)
    if [[ -z "$(as_pg "${psql[@]}" -c "select 1 from pg_roles where rolname = '$user'")" ]]; then
        as_pg "${psql[@]}" -c "create role $user login password '$password'"
    fi
    if [[ -z "$(as_pg "${psql[@]}" -c "select 1 from pg_database where datname = '$db'")" ]]; then
        as_pg "${psql[@]}" -c "create database $db owner $user"
    fi
    log "PostgreSQL on 127.0.0.1:$pg_port (max_connections=$pg_max)"
}

pg_stop() {
    local bin
    bin="$(pg_bin)" || return 0
    if pg_running; then
        as_pg "$bin/pg_ctl" -D "$pg_data" -m fast -w -t 30 stop >/dev/null
        log "PostgreSQL stopped"
    fi
}

redis_pid() {
    [[ -f "$redis_dir/redis.pid" ]] || return 1
    local pid
    pid="$(cat "$redis_dir/redis.pid")"
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

redis_start() {
    mkdir -p "$redis_dir"
    redis_pid >/dev/null && return 0
    redis-server --port "$redis_port" --bind 127.0.0.1 --daemonize yes --dir "$redis_dir" \
        --pidfile "$redis_dir/redis.pid" --logfile "$redis_dir/redis.log" --save "" \
        --appendonly no --requirepass "$password" --maxclients "$redis_max" >/dev/null
    local i
    for i in $(seq 1 100); do
        if REDISCLI_AUTH="$password" redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG; then
            log "Redis on 127.0.0.1:$redis_port (maxclients=$redis_max)"
            return 0
        fi
        sleep 0.05
    done
    log "Redis did not answer; see $redis_dir/redis.log"
    return 1
}

redis_stop() {
    local pid
    pid="$(redis_pid)" || return 0
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid"
    local i
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { log "Redis stopped"; return 0; }
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# The postmaster and its children.
pg_pids() {
    local master
    master="$(head -1 "$pg_data/postmaster.pid")"
    echo "$master"
    local p
    for p in /proc/[0-9]*; do
        [[ "$(awk '{print $4}' "$p/stat" 2>/dev/null)" == "$master" ]] && echo "${p#/proc/}"
    done
    return 0
}

case "${1:-}" in
start)
    install_missing
    mkdir -p "$dir"
    pg_start
    redis_start
    ;;
stop)
    pg_stop
    redis_stop
    ;;
status)
    if pg_running; then echo "postgres: running on 127.0.0.1:$pg_port"; else echo "postgres: stopped"; fi
    if redis_pid >/dev/null; then echo "redis: running on 127.0.0.1:$redis_port"; else echo "redis: stopped"; fi
    ;;
env)
    echo "export SHARDPOOL_PG_URL=postgres://$user:$password@127.0.0.1:$pg_port/$db"
    echo "export SHARDPOOL_PG_MAX_CONNECTIONS=$pg_max"
    echo "export SHARDPOOL_REDIS_URL=redis://:$password@127.0.0.1:$redis_port/0"
    echo "export SHARDPOOL_REDIS_MAX_CLIENTS=$redis_max"
    ;;
restart)
    case "${2:-}" in
    pg)
        # Fast mode: the server closes every client connection, as a crash-restart would.
        as_pg "$(pg_bin)/pg_ctl" -D "$pg_data" -m fast -w -t 30 stop >/dev/null
        pg_start
        ;;
    redis)
        redis_stop
        redis_start
        ;;
    *) log "usage: $0 restart pg|redis"; exit 2 ;;
    esac
    ;;
pids)
    case "${2:-}" in
    pg) pg_pids ;;
    redis) redis_pid ;;
    *) log "usage: $0 pids pg|redis"; exit 2 ;;
    esac
    ;;
*)
    log "usage: $0 start|stop|status|env|restart pg|redis|pids pg|redis"
    exit 2
    ;;
esac
