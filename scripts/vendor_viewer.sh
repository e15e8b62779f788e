#!/usr/bin/env bash
# Refresh the viewer's vendored JavaScript (threegen_dagster/viewer/vendor/) from the npm registry.
# Needs npm (only here, never at view time). Pinned versions: Spark 2.2.0 is built and documented
# against three 0.180.0 (its devDependency and README import map); fflate is bundled inside Spark's
# build, so only its licence is copied. Change a version here, run this, then run the viewer tests
# (threegen_dagster_tests/viewer/) and commit the result with the new versions in vendor/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

THREE=0.180.0
SPARK=2.2.0
FFLATE=0.8.2
DEST=threegen_dagster/viewer/vendor
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

(cd "$WORK" && npm pack --silent "three@$THREE" "@sparkjsdev/spark@$SPARK" "fflate@$FFLATE" >/dev/null)
for pkg in three sparkjsdev-spark fflate; do
  mkdir -p "$WORK/$pkg" && tar xzf "$WORK"/$pkg-*.tgz -C "$WORK/$pkg"
done

rm -rf "$DEST/three" "$DEST/spark" "$DEST/fflate"
copy() {  # copy SRC DST, relative to the unpacked package and the vendor folder
  mkdir -p "$(dirname "$DEST/$2")" && cp "$WORK/$1" "$DEST/$2"
}
copy three/package/LICENSE three/LICENSE
for f in build/three.core.min.js build/three.module.min.js examples/jsm/loaders/GLTFLoader.js \
         examples/jsm/controls/OrbitControls.js examples/jsm/utils/BufferGeometryUtils.js \
         examples/jsm/postprocessing/Pass.js; do
  copy "three/package/$f" "three/$f"
done
copy sparkjsdev-spark/package/LICENSE spark/LICENSE
copy sparkjsdev-spark/package/dist/spark.module.min.js spark/dist/spark.module.min.js
copy fflate/package/LICENSE fflate/LICENSE

(cd "$DEST" && find three spark fflate -type f | sort | xargs sha256sum > SHA256SUMS)
echo "vendored three@$THREE, @sparkjsdev/spark@$SPARK (fflate@$FFLATE licence) into $DEST"
du -sh "$DEST"
