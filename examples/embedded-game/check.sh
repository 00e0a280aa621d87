#!/usr/bin/env bash
# Builds and runs the embedded game as a game's own crate is built (a path
# dependency on sessiondb with default features, outside its workspace),
# and fails if its dependencies hold a registry `sled` (the unfixed one)
# or anything of the Redis engine (redis, rustls, ring). CI runs it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

cargo run --locked --quiet
cargo metadata --locked --format-version 1 | python3 -c '
import json, sys
packages = json.load(sys.stdin)["packages"]
bad = []
for p in packages:
    if p["name"] == "sled" and p["source"]:
        bad.append("sled %s from %s (the unfixed sled: sessiondb must bring sessiondb-sled)" % (p["version"], p["source"]))
    if p["name"] in ("redis", "rustls", "ring"):
        bad.append("%s %s (the Redis engine, which needs the `redis` feature)" % (p["name"], p["version"]))
sled = [p for p in packages if p["name"] == "sessiondb-sled"]
if not sled:
    bad.append("no sessiondb-sled: where does sled come from?")
for b in bad:
    print("embedded-game: " + b, file=sys.stderr)
if bad:
    sys.exit(1)
print("embedded-game: %d packages; sled is %s %s; no redis, rustls or ring" % (len(packages), sled[0]["name"], sled[0]["version"]))
'
