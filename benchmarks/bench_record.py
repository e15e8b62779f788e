"""What one version write (``ArtifactStore.record``) costs, new bytes against bytes already stored
(de-duplication), on a local folder and on a local S3 server (SeaweedFS ``weed mini``).

A de-duplicating write checks the stored copy (locally it re-hashes the file; on S3 one HEAD reads
the server's SHA-256) and every write then looks for a blob collection's lock and checks its blobs
are still there: these are the figures to watch. Printed, not asserted.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402
from threegen_dagster.artifacts import ArtifactStore  # noqa: E402
from threegen_dagster.storage import LocalStore, S3Store  # noqa: E402
from threegen_dagster_tests.s3_server import BUCKET, S3Server  # noqa: E402

REPEAT = 15


def median_ms(artifacts: ArtifactStore, payloads: list[bytes], key: str) -> float:
    times = []
    for n, data in enumerate(payloads):
        t = time.perf_counter()
        artifacts.record(f"{key}{n}-0123456789-s1", "gaussian_splat", data, "ply", "bench")
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[2:])


def bench(name: str, artifacts: ArtifactStore) -> None:
    for mb in (1, 12):
        fresh = [os.urandom(mb * 2**20) for _ in range(REPEAT)]
        new = median_ms(artifacts, fresh, f"new{mb}x")
        same = median_ms(artifacts, fresh, f"dup{mb}x")  # the same bytes again: de-duplicated
        print(f"  {name:<6} {mb:>3} MB   new bytes {new:8.1f} ms   already stored {same:8.1f} ms")


def main() -> None:
    print(f"ArtifactStore.record, median of {REPEAT - 2} ({machine()})")
    with tempfile.TemporaryDirectory() as tmp:
        bench("local", ArtifactStore(LocalStore(Path(tmp) / "store")))
        (Path(tmp) / "s3").mkdir()
        with S3Server(Path(tmp) / "s3") as server:
            bench("s3", ArtifactStore(S3Store(server.client(), BUCKET, "bench", multipart_threshold=64 * 2**20)))


if __name__ == "__main__":
    main()
