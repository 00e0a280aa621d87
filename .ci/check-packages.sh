#!/usr/bin/env bash
# Packages every crate that would be published (sessiondb-sled, sessiondb,
# sessiondb-server; the model and the harness are `publish = false`) and
# verifies each by building it from its own packaged tarball, the others
# taken from a temporary local registry as crates.io would give them; then
# checks what the tarballs hold: no tests, fixtures, benches, harness
# results or other large files. CI runs it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo package --workspace --exclude sessiondb-model --exclude sessiondb-bench "$@"

python3 - <<'PY'
import glob, os, re, sys, tarfile

# What a packaged crate may hold, path by path inside the crate.
allowed = re.compile(
    r"^(Cargo\.toml|Cargo\.toml\.orig|Cargo\.lock|\.cargo_vcs_info\.json|README\.md"
    r"|CHANGELOG\.md|LICENSE-(MIT|APACHE)|src/.*\.(rs|lua)|examples/[a-z_]+\.rs)$"
)
largest = 256 * 1024
crates = sorted(glob.glob("target/package/*.crate"))
wanted = {"sessiondb", "sessiondb-server", "sessiondb-sled"}
found = {re.sub(r"-\d+\.\d+\.\d+.*\.crate$", "", os.path.basename(c)) for c in crates}
problems = [f"no package for {name}" for name in sorted(wanted - found)]
for path in crates:
    with tarfile.open(path) as tar:
        members = [m for m in tar.getmembers() if m.isfile()]
        for m in members:
            inner = m.name.split("/", 1)[1]
            if not allowed.match(inner):
                problems.append(f"{os.path.basename(path)}: {inner} does not belong in a package")
            if m.size > largest:
                problems.append(f"{os.path.basename(path)}: {inner} is {m.size} bytes")
        size = os.path.getsize(path)
        print(f"{os.path.basename(path)}: {len(members)} files, {size // 1024} KiB packed")
for p in problems:
    print("package check: " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
