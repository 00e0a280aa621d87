#!/usr/bin/env bash
# Builds every fuzz target and replays its committed corpus (no fuzzing):
# each seed and each kept regression input must run without a crash.
# Called by CI; runs on the stable toolchain without sanitizers.
set -euo pipefail
cd "$(dirname "$0")"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cargo fuzz build -s none
for target in $(cargo fuzz list); do
    echo "replaying corpus/$target ($(ls "corpus/$target" | wc -l) inputs)"
    cargo fuzz run -s none "$target" "corpus/$target" -- -runs=0
done
echo "fuzz corpora replayed: $(cargo fuzz list | wc -l) targets"
