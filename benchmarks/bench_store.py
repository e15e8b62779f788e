"""The artifact I/O manager against raw boto3, on one local S3 server (SeaweedFS ``weed mini``).

For 1 MB and 20 MB artifacts: the I/O manager's write (hash, blob PUT with a server-verified
SHA-256, version record, download link) and read (latest version lookup, GET, re-hash) beside a
bare ``put_object`` / ``get_object`` of the same bytes, through the same boto3 client. Every write carries fresh bytes, so
de-duplication never skips an upload. Then the de-duplication ratio of re-materializing a
generation. Figures are printed, not asserted.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402
from dagster_aws.s3 import S3Resource  # noqa: E402

from benchmarks._common import machine  # noqa: E402
from threegen_dagster.defs.io_manager import ArtifactIOManager  # noqa: E402
from threegen_dagster.defs.resources import StoreResource  # noqa: E402
from threegen_dagster_tests.s3_server import ACCESS_KEY, BUCKET, SECRET_KEY, S3Server  # noqa: E402

REPEAT = {1: 30, 20: 10}


def timed(fn, payloads) -> list[float]:
    out = []
    for payload in payloads:
        t = time.perf_counter()
        fn(payload)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, S3Server(tmp) as server:
        print(f"artifact store vs raw boto3 on SeaweedFS {server.endpoint} ({machine()})")
        store = StoreResource(uri=f"s3://{BUCKET}/bench", s3=S3Resource(
            endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY))
        io_manager = ArtifactIOManager(store=store)
        raw = store.store().client  # the same boto3 client, so only the code path differs
        asset = dg.AssetKey("compressed_splat")

        # Dagster builds these contexts in a real run; building them by hand costs ~40 ms, so it
        # happens outside the timed region
        # each payload is its own generation, as in a real run (one version each, not dozens)
        out_contexts, in_contexts, keys = [], [], {}

        def io_write(data: bytes) -> None:
            io_manager.handle_output(out_contexts.pop(), data)

        def io_read(data: bytes) -> None:  # another run's read: find the latest version, fetch, verify
            io_manager.load_input(in_contexts.pop())

        def in_run_read(data: bytes) -> None:  # a step reading what its run just wrote: fetch, verify
            store.artifacts().load(keys[id(data)], "compressed_splat", run_id="bench")

        def raw_write(data: bytes) -> None:
            raw.put_object(Bucket=BUCKET, Key=f"raw/{hash(data)}", Body=data)

        def raw_read(_: bytes) -> None:
            raw.get_object(Bucket=BUCKET, Key=raw_read.key)["Body"].read()

        print(f"  {'size':>5}  {'op':<6} {'raw boto3 MB/s':>15} {'I/O manager MB/s':>17} {'overhead':>9}")
        for mb, repeat in REPEAT.items():
            payloads = [os.urandom(mb * 2**20) for _ in range(repeat + 2)]
            raw_w = timed(raw_write, payloads)[2:]
            keys.update({id(p): f"bench{mb}x{n}-0123456789-s1" for n, p in enumerate(payloads)})
            out_contexts[:] = [dg.build_output_context(asset_key=asset, partition_key=keys[id(p)], run_id="bench")
                               for p in reversed(payloads)]
            in_contexts[:] = [dg.build_input_context(asset_key=asset, partition_key=keys[id(p)])
                              for p in reversed(payloads)]
            io_w = timed(io_write, payloads)[2:]
            raw_read.key = f"raw/{hash(payloads[-1])}"
            raw_r = timed(raw_read, payloads)[2:]
            io_r = timed(io_read, payloads)[2:]
            run_r = timed(in_run_read, payloads)[2:]
            for op, r, i in (("write", raw_w, io_w), ("read", raw_r, io_r), ("read*", raw_r, run_r)):
                rm, im = statistics.median(r), statistics.median(i)
                print(f"  {mb:>3} MB  {op:<6} {mb / rm:15.1f} {mb / im:17.1f} {(im / rm - 1) * 100:+8.1f}%")

        print("  read: latest version looked up (another run's output); read*: the version this run wrote")
        # re-materializing a generation: every stage's bytes again, as a rerun of a seeded job writes
        artifacts = StoreResource(uri=f"s3://{BUCKET}/dedup", s3=store.s3).artifacts()
        stages = {name: os.urandom(size) for name, size in (
            ("generated_image", 400_000), ("foreground_image", 300_000), ("initial_mesh", 2_000_000),
            ("refined_mesh", 1_000_000), ("gaussian_splat", 12_000_000), ("compressed_splat", 2_500_000))}
        for run in range(3):
            for name, data in stages.items():
                artifacts.record("rerun-0123456789-s7", name, data, "bin", f"run-{run}")
        stats = artifacts.stats()
        logical = sum(r["logical_bytes"] for n, r in stats["by_asset"].items() if n in stages)
        stored = sum(r["stored_bytes"] for n, r in stats["by_asset"].items() if n in stages)
        print(f"  re-materializing one generation 3 times: {logical / 1e6:.1f} MB referenced, "
              f"{stored / 1e6:.1f} MB stored: de-duplication {logical / stored:.2f}x")


if __name__ == "__main__":
    main()
