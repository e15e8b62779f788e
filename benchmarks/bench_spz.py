"""SPZ codec and PLY I/O speed, beside the C++ pyspz figures from SN17.md (2-core machine).

Run: .venv/bin/python benchmarks/bench_spz.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent)]
from _common import machine, median_ms, peak_rss_mb, row  # noqa: E402

from threegen_dagster.splats import ply, spz  # noqa: E402
from threegen_dagster_tests.splats.conftest import random_cloud  # noqa: E402


def main() -> None:
    n = 100_000
    print(f"SPZ codec, {n:,} gaussians, level 1, single-threaded zstd; {machine()}")
    sh0 = ply.write_ply(random_cloud(n, 0))
    sh3n = ply.write_ply(random_cloud(n, 3), include_normals=True)
    sh3_spz = spz.compress(sh3n)
    sh0_spz = spz.compress(sh0)
    cases = [
        ("compress SH0, no normals   (pyspz ~19 ms)", lambda: spz.compress(sh0)),
        ("compress SH3 + normals     (pyspz 73-115 ms)", lambda: spz.compress(sh3n)),
        ("decompress SH3             (pyspz ~44 ms)", lambda: spz.decompress(sh3_spz)),
        ("decompress SH0", lambda: spz.decompress(sh0_spz)),
        ("read_ply SH3 + normals", lambda: ply.read_ply(sh3n)),
        ("write_ply SH3", lambda: ply.write_ply(random_cloud(10, 3))),
    ]
    for label, fn in cases:
        row(label, median_ms(fn), n if "write_ply" not in label else 10)
    print(f"  sizes: SH0 PLY {len(sh0) / 1e6:.2f} MB -> SPZ {len(sh0_spz) / 1e6:.2f} MB; "
          f"SH3 PLY {len(sh3n) / 1e6:.2f} MB -> SPZ {len(sh3_spz) / 1e6:.2f} MB")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.ply"
        path.write_bytes(ply.write_ply(random_cloud(1_000_000, 3)))
        setup = f"from threegen_dagster.splats import spz; data = open({str(path)!r}, 'rb').read();"
        base = peak_rss_mb(setup)
        packed = peak_rss_mb(setup + "s = spz.compress(data)")
        both = peak_rss_mb(setup + "s = spz.compress(data); del data; out = spz.decompress(s)")
    print(f"  peak RSS, 1M SH3 gaussians (a 248 MB PLY) in a fresh process: {base:.0f} MB after reading the "
          f"file, {packed:.0f} MB with compress, {both:.0f} MB with compress then decompress")

if __name__ == "__main__":
    main()
