#!/usr/bin/env bash
# Runs the cluster walk-through of docs/redis.md as it is written (the
# shell block under "A walk-through"), in a scratch directory, and checks
# what it prints: every session valid on the other node, and again after a
# primary was killed. The binary is $SESSIONDB_BIN when set (CI's debug
# build; the block's `cargo build --release` line is then skipped), else
# the block builds it. Needs redis-server, redis-cli and curl.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
scratch="$(mktemp -d)"
block="$scratch/walkthrough.sh"
awk '/^## A walk-through/ { on = 1 } on && /^```sh$/ { inside = 1; next }
     inside && /^```$/ { exit } inside { print }' "$root/docs/redis.md" > "$block"
[ -s "$block" ] || { echo "no walk-through block in docs/redis.md" >&2; exit 1; }

cleanup() {
    # Whatever the block left running.
    pkill -f "sessiondb serve --redis-cluster redis://127.0.0.1:700" 2>/dev/null || true
    for pid in "$scratch"/cluster/*/pid; do
        [ -f "$pid" ] && kill -9 "$(cat "$pid")" 2>/dev/null || true
    done
    rm -rf "$scratch"
}
trap cleanup EXIT

if [ -n "${SESSIONDB_BIN:-}" ]; then
    sed -i -e '/^cargo build --release -p sessiondb-server$/d' \
        -e "s|^SESSIONDB=target/release/sessiondb\$|SESSIONDB=$SESSIONDB_BIN|" "$block"
else
    sed -i -e "s|^cargo build --release -p sessiondb-server\$|(cd $root \\&\\& cargo build --release -p sessiondb-server)|" \
        -e "s|^SESSIONDB=target/release/sessiondb\$|SESSIONDB=$root/target/release/sessiondb|" "$block"
fi

cd "$scratch"
# The block's `kill %1 %2` needs job control.
out="$(timeout 180 bash -m -e "$block" 2>&1)" || {
    echo "$out"
    echo "the walk-through failed" >&2
    exit 1
}
echo "$out"
valid=$(grep -c '{"valid":true}' <<<"$out" || true)
if [ "$valid" -ne 40 ]; then
    echo "expected 40 valid sessions (20 on node B, 20 on node A after the failover), saw $valid" >&2
    exit 1
fi
echo "walk-through: 20 sessions valid on both nodes, before and after a primary was killed"
