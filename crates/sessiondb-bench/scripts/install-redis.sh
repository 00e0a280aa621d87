#!/usr/bin/env bash
# Installs redis-server from Debian's packages so that `sessiondb-bench
# compare` can fill in its Redis rows. Without it those rows say "skipped".
#
# Usage (as root, or with sudo available):
#   crates/sessiondb-bench/scripts/install-redis.sh
#
# The harness starts its own redis-server on a free 127.0.0.1 port; the
# packaged service is neither needed nor started here.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server already installed: $(redis-server --version)"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "install-redis.sh: run as root (or install sudo)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends redis-server
echo "installed: $(redis-server --version)"
