#!/usr/bin/env bash
# Fuzzes a running `sessiondb serve` from docs/openapi.json with
# Schemathesis: every operation but the two event streams (an open stream
# never ends, so a request for one never completes), the stateful links
# between them (register, then isValid, restore, resolve, extend, data,
# logout, expire, ...), every check. Exits non-zero on any failure.
#
#   ENGINE=sled|redis SCHEMATHESIS=path/to/schemathesis \
#       crates/sessiondb-server/api-contract/schemathesis.sh
#
# MAX_EXAMPLES (default 40) bounds the cases per operation, SEED picks the
# run (default 7420). See serve.sh for the servers.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve.sh"

start_sessiondb "${ENGINE:-sled}"
# From the scratch directory: Schemathesis leaves its state there.
cd "$work"
status=0
SCHEMATHESIS_HOOKS="$contract_dir/hooks.py" "${SCHEMATHESIS:-schemathesis}" \
    --config-file "$contract_dir/schemathesis.toml" \
    run "$root/docs/openapi.json" \
    --url "$SESSIONDB_URL" \
    --checks all \
    --exclude-operation-id events --exclude-operation-id sessionEvents \
    --max-examples "${MAX_EXAMPLES:-40}" \
    --request-timeout 10 \
    --seed "${SEED:-7420}" \
    --generation-database none \
    --generation-with-security-parameters false \
    --no-color ${PHASES:+--phases "$PHASES"} >"$work/schemathesis.log" 2>&1 || status=$?
cat "$work/schemathesis.log"
# A run whose test cases errored (a request Schemathesis could not make,
# say) has not checked them: that fails too, whatever the exit code says.
if grep -Eq '^ +[0-9]+ generated,.* errored' "$work/schemathesis.log"; then
    echo "$0: some test cases errored; see above" >&2
    [ "$status" != 0 ] || status=1
fi
if [ "$status" != 0 ] || grep -q 'panicked' "$work/serve.log"; then
    show_server_log
    [ "$status" != 0 ] || status=1
fi
exit "$status"
