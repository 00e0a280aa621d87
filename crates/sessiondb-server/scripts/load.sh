#!/usr/bin/env bash
# A loopback load figure for the two hottest routes, isValid and restore:
# requests per second and latency percentiles, measured with wrk against
# the release build of `sessiondb serve` on a free 127.0.0.1 port with a
# fresh temporary store. Installs wrk from Debian's packages if missing.
#
#   crates/sessiondb-server/scripts/load.sh
#   DURATION=30s THREADS=2 CONNECTIONS=64 DURABILITY=immediate crates/sessiondb-server/scripts/load.sh
#
# The server and wrk share the machine, so the figures are a floor for a
# dedicated host, not a benchmark of one.
set -euo pipefail

DURATION=${DURATION:-10s}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
DURABILITY=${DURABILITY:-periodic}

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk is missing; installing it from Debian's packages" >&2
  apt-get update >&2 && apt-get install -y wrk >&2
fi
command -v curl >/dev/null 2>&1 || { apt-get update >&2 && apt-get install -y curl >&2; }

(cd "$root" && cargo build --release -p sessiondb-server)
bin="$root/target/release/sessiondb"

tmp=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    wait "$pid" || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$bin" serve --listen 127.0.0.1:0 --data-dir "$tmp/data" --durability "$DURABILITY" \
  --log-level warn >"$tmp/stdout" 2>"$tmp/stderr" &
pid=$!

addr=
for _ in $(seq 1 300); do
  addr=$(sed -n 's/^listening on //p' "$tmp/stdout")
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$tmp/stderr" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start" >&2; cat "$tmp/stderr" >&2; exit 1; }

key=$(curl -sf -X POST "http://$addr/v1/sessions" -d '{"actorId":"load-1"}' |
  sed -n 's/.*"key":"\([^"]*\)".*/\1/p')
[ -n "$key" ] || { echo "registering the session failed" >&2; exit 1; }

echo "sessiondb $("$bin" --version | cut -d' ' -f2) on $addr, durability $DURABILITY;" \
  "wrk -t$THREADS -c$CONNECTIONS -d$DURATION; $(nproc) cores shared by server and wrk"
for route in isValid restore; do
  SESSION_KEY=$key LABEL=$route wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" \
    -s "$here/post.lua" "http://$addr/v1/session/$route" | grep '^RESULT'
done
# Both answered as they should throughout (wrk counts non-2xx as errors).
curl -sf -X POST "http://$addr/v1/session/isValid" -d "{\"sessionKey\":\"$key\"}"
echo
