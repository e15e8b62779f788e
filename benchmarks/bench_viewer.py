"""What a generation's viewer page costs (figures printed, never asserted): the time to build
``viewer.html`` from the store, its size and what it is made of, with the splat embedded as the
re-wrapped SN17 SPZ (what the page does) against the 3DGS PLY, for a 50,000-gaussian generation
made by ``threegen generate`` on the embedded CPU backends in a temporary store.

    .venv/bin/python benchmarks/bench_viewer.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median_ms  # noqa: E402

from threegen_dagster.artifacts import ArtifactStore  # noqa: E402
from threegen_dagster.ledger import Ledger  # noqa: E402
from threegen_dagster.storage import LocalStore  # noqa: E402
from threegen_dagster.viewer import load_generation, render_page, viewer_html  # noqa: E402
from threegen_dagster.viewer.niantic import sn17_to_niantic  # noqa: E402
from threegen_dagster.viewer.source import MAX_EMBED_BYTES, Shown  # noqa: E402
from threegen_dagster.viewer.vendor_modules import import_map  # noqa: E402


def main() -> None:
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("THREEGEN_")}
        env.update(DAGSTER_HOME=f"{tmp}/dagster", THREEGEN_STORE=f"{tmp}/store", THREEGEN_GAUSSIANS="50000")
        done = subprocess.run([sys.executable, "-m", "threegen_dagster.cli", "generate", "a red mug", "--seed", "3",
                               "--json"], cwd=tmp, env=env, capture_output=True, text=True, check=True)
        key = json.loads(done.stdout)["key"]
        store = LocalStore(f"{tmp}/store")
        artifacts, ledger = ArtifactStore(store), Ledger(store)
        import_map()  # built once per process
        data = load_generation(artifacts, ledger, key)
        page = viewer_html(artifacts, ledger, key)
        ply = artifacts.load(key, "gaussian_splat")[1]
        sn17 = artifacts.load(key, "compressed_splat")[1]
        with_ply = render_page(replace(data, splat=Shown(ply, "gaussian_splat", 1, file_type="ply")))
        print(f"{key}: 50,000 gaussians")
        print(f"  build viewer.html from the store     {median_ms(lambda: viewer_html(artifacts, ledger, key), 5, 1):9.1f} ms")
        print(f"  SN17 SPZ -> Niantic SPZ               {median_ms(lambda: sn17_to_niantic(sn17, MAX_EMBED_BYTES), 10):9.1f} ms")
        print(f"  page {len(page):,} bytes (splat as Niantic SPZ, {len(data.splat.data):,} bytes); "
              f"with the PLY ({len(ply):,} bytes) instead: {len(with_ply):,} bytes")
        print(f"  of which JavaScript (import map) {len(import_map()):,}, mesh {len(data.mesh.data):,}, "
              f"image {len(data.image.data):,} (before base64)")


if __name__ == "__main__":
    main()
