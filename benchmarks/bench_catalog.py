"""The catalog and `threegen stats` as the store grows: 100, 1,000 and 10,000 generations.

Run: .venv/bin/python benchmarks/bench_catalog.py [MAX]   (MAX: the largest store, default 10000)
A synthetic local store (real ledger entries, version records and blobs, written directly: seven
stages per generation, the initial mesh with its PLY, one blob shared by every generation) grows to
each size; at each size it prints, medians of 5 (printed, never asserted):
  refresh      one new generation written (7 versions through ArtifactStore.record, which leaves its
               change markers), then the catalog index's refresh: what follows every run
  stats        `threegen stats` from the index: the 256 shards' totals only, never their rows (it also
               reconciles the index with the change journal)
  catalog      `threegen catalog`'s rows from the index
  full scan    the whole-store scan that used to follow every generation (build_catalog + stats),
               once per size, for comparison (`threegen catalog --rebuild` / `stats --full`)
  rebuild      the index built from nothing on a store that never had one (once per store)
and the per-tick reads of the inbox sensor on an empty inbox (it lists the inbox folder only).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from threegen_dagster.artifacts import ArtifactStore, Manifest, blob_path  # noqa: E402
from threegen_dagster.catalog import STAGES, build_catalog, statuses  # noqa: E402
from threegen_dagster.catalog_index import CatalogIndex  # noqa: E402
from threegen_dagster.keys import Prompt, candidate_keys  # noqa: E402
from threegen_dagster.ledger import Generation, Ledger  # noqa: E402
from threegen_dagster.storage import LocalStore  # noqa: E402

FORMATS = {"generated_image": "png", "foreground_image": "png", "initial_mesh": "glb", "refined_mesh": "glb",
           "gaussian_splat": "ply", "compressed_splat": "spz", "validation_score": "json"}
SHARED = b"the same bytes in every generation"


def _write(root: Path, relative: str, data: bytes) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def add_synthetic(root: Path, start: int, stop: int) -> None:
    """Generations ``start`` .. ``stop - 1``, written as the pipeline would leave them (no fsync)."""
    shared = hashlib.sha256(SHARED).hexdigest()
    _write(root, blob_path(shared), SHARED)
    for i in range(start, stop):
        prompt = Prompt.from_text(f"a synthetic thing number {i}")
        key = candidate_keys(prompt, i)[0]
        entry = Generation(key=key, kind="text", prompt=prompt.text, seed=i, source="bench", created_at=1.7e9 + i)
        _write(root, f"ledger/{key}.json", json.dumps(asdict(entry)).encode())
        for asset, fmt in FORMATS.items():
            data = SHARED if asset == "foreground_image" else f"{asset} of {key}".encode() * 20
            sha = hashlib.sha256(data).hexdigest()
            _write(root, blob_path(sha), data)
            extras = {}
            if asset == "initial_mesh":
                ply = f"ply of {key}".encode()
                extras = {"ply": {"sha256": hashlib.sha256(ply).hexdigest(), "bytes": len(ply)}}
                _write(root, blob_path(extras["ply"]["sha256"]), ply)
            meta = {"seconds": 0.5, **({"score": 0.7, "passed": True} if asset == "validation_score" else {})}
            m = Manifest(asset=asset, key=key, version=1, sha256=sha, bytes=len(data), format=fmt, run_id="bench",
                         written_at=1.7e9 + i, metadata=meta, extras=extras)
            _write(root, m.path, m.to_json())


def new_generation(artifacts: ArtifactStore, ledger: Ledger, n: int) -> None:
    entry, _ = ledger.add(Prompt.from_text(f"a fresh generation {n}"), n, "bench")
    for asset, fmt in FORMATS.items():
        artifacts.record(entry.key, asset, f"{asset} {n}".encode() * 50, fmt, "bench",
                         metadata={"seconds": 0.5, "score": 0.7, "passed": True})


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(largest: int = 10_000) -> None:
    print(f"catalog index and stats as the store grows; {machine()}")
    print(f"  {'generations':>11} {'refresh':>10} {'stats':>9} {'catalog':>9} {'full scan':>10} {'rebuild':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = LocalStore(root)
        artifacts, ledger = ArtifactStore(store), Ledger(store)
        index = CatalogIndex(artifacts, ledger)
        have, fresh = 0, 0
        for size in (100, 1_000, 10_000):
            if size > largest:
                break
            add_synthetic(root, have, size)
            have = size
            rebuild = timed(index.rebuild)  # the synthetic generations were never indexed
            refresh = []
            for _ in range(5):
                new_generation(artifacts, ledger, fresh)
                fresh += 1
                refresh.append(timed(index.refresh))
            stats = statistics.median(timed(index.stats) for _ in range(5))
            rows = statistics.median(timed(index.rows) for _ in range(5))
            full = timed(lambda: artifacts.stats(statuses(build_catalog(artifacts, ledger)), artifacts.snapshot()))
            print(f"  {size + fresh:>11,} {statistics.median(refresh) * 1e3:8.1f} ms {stats:7.2f} s {rows:7.2f} s "
                  f"{full:8.2f} s {rebuild:7.2f} s")
        assert index.stats()["generations"] == have + fresh  # the figures above describe a real store
        print("  refresh: per generation, after its run; stats: every shard's totals; catalog: every row "
              "(one per generation); full scan: what every generation cost before")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
