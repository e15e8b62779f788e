#!/usr/bin/env bash
# Installs the lock files into a fresh venv as the image does (hash-checked, --no-deps: the lock is the whole
# closure; `pip check` on it), then the --no-deps three and the project itself, then an import of the serve command and the GPU libraries.
# Usage: docker/check_lock.sh [VENV_DIR] [--dry-run]   (pip's own config is ignored: PyPI only, no local wheels)
set -euo pipefail
venv="${1:-/tmp/threegen-lock-check}"
dry="${2:-}"
here="$(cd "$(dirname "$0")/.." && pwd)"
rm -rf "$venv"
python3 -m venv "$venv"
pip=("$venv/bin/pip" --isolated --disable-pip-version-check)
"${pip[@]}" install --quiet --require-hashes --no-deps $dry -r "$here/requirements.lock"
if [ -z "$dry" ]; then "${pip[@]}" check; fi  # the lock is a closed set (before the --no-deps three, which are not)
"${pip[@]}" install --quiet --require-hashes --no-deps $dry -r "$here/requirements-nodeps.lock"
if [ -n "$dry" ]; then echo "check_lock: the lock files resolve (dry run)"; exit 0; fi
"${pip[@]}" install --quiet --no-deps --no-build-isolation -e "$here"  # editable, as the image: node_checker/ stays in the tree
"$venv/bin/python" -c "import threegen_dagster.serve.command, torch, diffusers, transformers, hy3dgen, open_clip, timm; print('check_lock: installed and imported, torch', torch.__version__)"
"$venv/bin/threegen" serve --help >/dev/null && echo "check_lock: threegen serve --help runs"
