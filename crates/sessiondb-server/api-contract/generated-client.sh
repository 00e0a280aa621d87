#!/usr/bin/env bash
# Generates a Python client from docs/openapi.json with a common
# generator (openapi-python-client, PyPI) and shows that it registers and
# resolves a session against a running `sessiondb serve` (on sled):
# generated_client.py.
#
#   GENERATOR=path/to/openapi-python-client PYTHON=path/to/python \
#       crates/sessiondb-server/api-contract/generated-client.sh
#
# PYTHON must have the generated client's dependencies (httpx, attrs,
# python-dateutil: openapi-python-client brings them).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/serve.sh"

generator="${GENERATOR:-openapi-python-client}"
echo "\$ $(basename "$generator") generate --path docs/openapi.json --meta none --output-path sessiondb_client"
(cd "$work" && "$generator" generate --path "$root/docs/openapi.json" --meta none \
    --output-path sessiondb_client 2>&1 | grep -v '^$' | grep -iv 'ruff is not in PATH\|Skipping Integration')
start_sessiondb sled
status=0
PYTHONPATH="$work" "${PYTHON:-python3}" "$contract_dir/generated_client.py" || status=$?
[ "$status" = 0 ] || show_server_log
exit "$status"
