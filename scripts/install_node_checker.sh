#!/usr/bin/env bash
# The SN17 comp 2 module checker's Node packages (threegen_dagster/rounds/node_checker/: acorn,
# eslint-scope, estraverse and three@0.183.2, pinned in its package-lock.json), installed from the npm
# registry with `npm ci`. Needs Node 20+ and npm; `make test` runs this. Does nothing when the
# installed packages already match the lock file.
set -euo pipefail
dir="$(cd "$(dirname "$0")/.." && pwd)/threegen_dagster/rounds/node_checker"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "install_node_checker: Node 20+ and npm are needed (Debian: apt-get install nodejs npm)" >&2
  exit 1
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "install_node_checker: Node $(node --version) is too old; the checker needs Node 20+" >&2
  exit 1
fi
stamp="$dir/node_modules/.installed-lock"
if [ -f "$stamp" ] && cmp -s "$stamp" "$dir/package-lock.json"; then
  exit 0
fi
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
cp "$dir/package-lock.json" "$stamp"
echo "install_node_checker: installed $(cd "$dir" && node -p 'require("./node_modules/three/package.json").version' 2>/dev/null || echo three) into $dir/node_modules" >&2
