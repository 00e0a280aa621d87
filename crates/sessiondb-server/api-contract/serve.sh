# Sourced by the scripts beside it: starts the servers they test, in a
# scratch directory, and stops them when the script ends, however it ends.
#
#   start_sessiondb sled|redis [more serve flags]
#
# sets SESSIONDB_URL (http://127.0.0.1:<port>) and SESSIONDB_ADMIN_TOKEN.
# `redis` starts a redis-server of its own ($SESSIONDB_TEST_REDIS_SERVER,
# or redis-server on PATH) on a unix socket in the scratch directory.
# The binary: $SESSIONDB_BIN, else the repository's target/debug/sessiondb.

contract_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$contract_dir/../../.." && pwd)"
work="$(mktemp -d -t sessiondb-api-contract.XXXXXX)"
pids=()
stop_servers() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap stop_servers EXIT

start_sessiondb() {
    local engine="$1"
    shift
    local store
    case "$engine" in
    sled)
        store=(--data-dir "$work/data")
        ;;
    redis)
        local redis="${SESSIONDB_TEST_REDIS_SERVER:-$(command -v redis-server || true)}"
        if [ -z "$redis" ]; then
            echo "$0: the redis engine needs redis-server (apt-get install redis-server)" >&2
            exit 1
        fi
        "$redis" --port 0 --unixsocket "$work/redis.sock" --dir "$work" --save '' \
            >"$work/redis.log" 2>&1 &
        pids+=($!)
        for _ in $(seq 200); do
            [ -S "$work/redis.sock" ] && break
            sleep 0.05
        done
        [ -S "$work/redis.sock" ] || { cat "$work/redis.log" >&2; exit 1; }
        store=(--redis-url "redis+unix://$work/redis.sock")
        ;;
    *)
        echo "$0: the engine is sled or redis, not $engine" >&2
        exit 2
        ;;
    esac
    export SESSIONDB_ADMIN_TOKEN="api-contract-admin-token"
    env -u SESSIONDB_DATA_DIR -u SESSIONDB_REDIS_URL "${SESSIONDB_BIN:-$root/target/debug/sessiondb}" \
        serve --listen 127.0.0.1:0 "${store[@]}" --log-level warn "$@" \
        >"$work/serve.out" 2>"$work/serve.log" &
    pids+=($!)
    for _ in $(seq 600); do
        grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break
        kill -0 "${pids[-1]}" 2>/dev/null || break
        sleep 0.05
    done
    local address
    address="$(sed -n 's/^listening on //p' "$work/serve.out")"
    if [ -z "$address" ]; then
        echo "$0: sessiondb did not start:" >&2
        cat "$work/serve.log" >&2
        exit 1
    fi
    export SESSIONDB_URL="http://$address"
    echo "$0: sessiondb on $SESSIONDB_URL ($engine)"
}

# The server's log, when something failed.
show_server_log() {
    echo "$0: the server's log (warnings and errors):" >&2
    tail -n 50 "$work/serve.log" >&2
}
