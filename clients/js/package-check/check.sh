#!/usr/bin/env bash
# Checks @sessiondb/client as npm would publish it: the packed file list
# holds only what a user needs (the sources, their type declarations, the
# README and the manifest), and a small TypeScript consumer compiles
# against the packed package's declarations (`tsc --noEmit`, TypeScript
# from npm, in a temporary project). CI runs it.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
package="$here/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$package"
npm pack --dry-run --json 2>/dev/null | node -e '
const [pack] = JSON.parse(require("fs").readFileSync(0, "utf8"));
const files = pack.files.map((f) => f.path).sort();
const allowed = /^(README\.md|package\.json|src\/[a-z]+\.(js|d\.ts))$/;
const extra = files.filter((f) => !allowed.test(f));
const needed = ["package.json", "README.md", "src/index.js", "src/index.d.ts", "src/server.js", "src/server.d.ts"];
const missing = needed.filter((f) => !files.includes(f));
if (extra.length || missing.length) {
  console.error(`npm pack: unexpected ${JSON.stringify(extra)}, missing ${JSON.stringify(missing)}`);
  process.exit(1);
}
console.log(`npm pack: ${files.length} files, ${pack.size} bytes packed: ${files.join(", ")}`);
'
npm pack --pack-destination "$work" >/dev/null 2>&1
cp "$here/consumer.ts" "$here/tsconfig.json" "$work/"
cd "$work"
npm init -y >/dev/null
npm install --no-audit --no-fund --silent ./sessiondb-client-*.tgz typescript@5.9.3
npx --no-install tsc -p tsconfig.json
echo "TypeScript $(npx --no-install tsc --version | cut -d' ' -f2): the consumer compiles against the packed declarations"
