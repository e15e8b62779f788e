#!/usr/bin/env bash
# Refresh the judge-style renderer's vendored three.js (threegen_dagster/rounds/judge_page/vendor/) from the
# npm registry. Needs npm (only here, never at render time). Pinned: three r183 (0.183.2), the version SN17's
# render service (render-service-js) draws with. Change the version here, run this, then run
# threegen_dagster_tests/rounds/test_render.py and commit the result with the version in vendor/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

THREE=0.183.2
DEST=threegen_dagster/rounds/judge_page/vendor
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && npm pack --silent "three@$THREE" >/dev/null && mkdir three && tar xzf three-*.tgz -C three)
rm -rf "$DEST/three"
for f in LICENSE build/three.core.min.js build/three.module.min.js examples/jsm/loaders/GLTFLoader.js \
         examples/jsm/utils/BufferGeometryUtils.js examples/jsm/utils/SkeletonUtils.js; do
  mkdir -p "$(dirname "$DEST/three/$f")" && cp "$WORK/three/package/$f" "$DEST/three/$f"
done
(cd "$DEST" && find three -type f | sort | xargs sha256sum > SHA256SUMS)
echo "vendored three@$THREE into $DEST"
du -sh "$DEST"
