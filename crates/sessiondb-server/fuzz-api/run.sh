#!/usr/bin/env bash
# Fuzzes a running `sessiondb serve` from docs/openapi.json with
# Schemathesis: every operation but the two event streams (an open stream
# never ends, so a request for one never completes), the stateful links
# between them (register, then isValid, restore, resolve, extend, data,
# logout, expire, ...), every check. Exits non-zero on any failure.
#
#   ENGINE=sled|redis SCHEMATHESIS=path/to/schemathesis SESSIONDB_BIN=... \
#       crates/sessiondb-server/fuzz-api/run.sh
#
# ENGINE=redis starts its own redis-server ($SESSIONDB_TEST_REDIS_SERVER, or
# redis-server on PATH) on a unix socket in a temporary directory. Both
# servers are stopped when the script ends, however it ends.
# MAX_EXAMPLES (default 40) bounds the cases per operation.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
engine="${ENGINE:-sled}"
schemathesis="${SCHEMATHESIS:-schemathesis}"
bin="${SESSIONDB_BIN:-$root/target/debug/sessiondb}"
work="$(mktemp -d -t sessiondb-fuzz-api.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

case "$engine" in
sled)
    store=(--data-dir "$work/data")
    ;;
redis)
    redis="${SESSIONDB_TEST_REDIS_SERVER:-$(command -v redis-server || true)}"
    if [ -z "$redis" ]; then
        echo "fuzz-api: ENGINE=redis needs redis-server (apt-get install redis-server)" >&2
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
    echo "fuzz-api: ENGINE is sled or redis, not $engine" >&2
    exit 2
    ;;
esac

export SESSIONDB_ADMIN_TOKEN="fuzz-api-admin-token"
env -u SESSIONDB_DATA_DIR -u SESSIONDB_REDIS_URL "$bin" serve --listen 127.0.0.1:0 "${store[@]}" \
    --log-level warn >"$work/serve.out" 2>"$work/serve.log" &
pids+=($!)
for _ in $(seq 600); do
    grep -q '^listening on ' "$work/serve.out" 2>/dev/null && break
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.05
done
address="$(sed -n 's/^listening on //p' "$work/serve.out")"
if [ -z "$address" ]; then
    echo "fuzz-api: sessiondb did not start:" >&2
    cat "$work/serve.log" >&2
    exit 1
fi
export SESSIONDB_URL="http://$address"
echo "fuzz-api: sessiondb on $SESSIONDB_URL ($engine)"

status=0
# From the scratch directory: Schemathesis leaves its state there.
cd "$work"
SCHEMATHESIS_HOOKS="$here/hooks.py" "$schemathesis" --config-file "$here/schemathesis.toml" run "$root/docs/openapi.json" \
    --url "$SESSIONDB_URL" \
    --checks all \
    --exclude-operation-id events --exclude-operation-id sessionEvents \
    --max-examples "${MAX_EXAMPLES:-40}" \
    --request-timeout 10 \
    --seed "${SEED:-7420}" \
    --generation-database none \
    --generation-with-security-parameters false \
    --no-color || status=$?
if [ "$status" != 0 ] || grep -q 'panicked' "$work/serve.log"; then
    echo "fuzz-api: the server's log (warnings and errors):" >&2
    tail -n 50 "$work/serve.log" >&2
    [ "$status" != 0 ] || status=1
fi
exit "$status"
