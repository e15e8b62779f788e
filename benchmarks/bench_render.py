"""Benchmark the CPU splat renderer.

Run as ``.venv/bin/python benchmarks/bench_render.py``. Renders the 16 SN17 validator views of a
50k-gaussian cloud (flat gaussians on a sphere of radius 0.6) at 256x256, single views at 512x512
and 518x518, and the memory of rendering one 256x256 view of 1M gaussians in a fresh child
process: its peak RSS (``ru_maxrss``, which includes the interpreter, numpy and the cloud itself)
before and after the render, and ``tracemalloc``'s peak over the render call alone.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threegen_dagster.splats.cloud import SH_C0, GaussianCloud  # noqa: E402
from threegen_dagster.splats.render import render, render_views, validator_cameras  # noqa: E402


def sphere_cloud(n: int, radius: float = 0.6, opacity: float = 0.9, seed: int = 0) -> GaussianCloud:
    """``n`` flat gaussians tangent to a sphere, coloured by their normal (float32 throughout)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32
    normals = rng.standard_normal((n, 3), dtype=f32)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    sigma = np.sqrt(4.0 * np.pi * radius**2 / n)
    log_scales = np.log(np.array([sigma, sigma, 0.1 * sigma], f32)) + 0.2 * rng.standard_normal((n, 3), dtype=f32)
    # Quaternion rotating local z onto the normal, then a random spin about the normal.
    tilt = np.empty((n, 4), f32)
    tilt[:, 0] = 1.0 + normals[:, 2]
    tilt[:, 1] = -normals[:, 1]
    tilt[:, 2] = normals[:, 0]
    tilt[:, 3] = 0.0
    tilt[tilt[:, 0] < 1e-6] = (0.0, 1.0, 0.0, 0.0)
    tilt /= np.linalg.norm(tilt, axis=1, keepdims=True)
    spin = rng.uniform(0.0, np.pi, n).astype(f32)
    spin_q = np.zeros((n, 4), f32)
    spin_q[:, 0] = np.cos(spin)
    spin_q[:, 3] = np.sin(spin)
    return GaussianCloud(
        positions=radius * normals,
        log_scales=log_scales,
        rotations=quat_mul(tilt, spin_q),
        opacity_logits=np.full(n, np.log(opacity / (1.0 - opacity)), f32),
        sh_dc=(0.45 * normals) / SH_C0,  # rgb = 0.5 + 0.45 * normal
    )


def quat_mul(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton product of (N, 4) quaternions, w first."""
    pw, px, py, pz = p.T
    qw, qx, qy, qz = q.T
    return np.stack(
        [
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ],
        axis=1,
    )


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_views(n: int, size: int, repeats: int) -> None:
    cloud = sphere_cloud(n)
    cams = validator_cameras()
    render_views(cloud, cams[:2], size, size)  # warm-up
    total = best_of(repeats, lambda: render_views(cloud, cams, size, size))
    print(f"16 views, {n} gaussians, {size}x{size}: {total:.3f} s total (best of {repeats}), "
          f"{1000 * total / len(cams):.1f} ms/view, {n * len(cams) / total / 1e6:.2f} M gaussian-views/s")
    serial = best_of(min(repeats, 2), lambda: render_views(cloud, cams, size, size, workers=1))
    print(f"  same, one thread: {serial:.3f} s total, {1000 * serial / len(cams):.1f} ms/view")


def bench_single(n: int, size: int, repeats: int) -> None:
    cloud = sphere_cloud(n)
    cam = validator_cameras()[0]
    secs = best_of(repeats, lambda: render(cloud, cam, size, size))
    print(f"1 view, {n} gaussians, {size}x{size}: {1000 * secs:.1f} ms (best of {repeats})")


def _child_memory(n: int, size: int, results: mp.Queue) -> None:  # type: ignore[type-arg]
    """In a fresh process: build the cloud, then render one view, recording memory high-water marks."""
    cloud = sphere_cloud(n)
    camera = validator_cameras()[0]
    rss_cloud = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB
    start = time.perf_counter()
    render(cloud, camera, size, size)
    secs = time.perf_counter() - start
    rss_render = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    tracemalloc.start()
    render(cloud, camera, size, size)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    results.put((rss_cloud, rss_render, traced_peak, secs))


def bench_memory(n: int, size: int) -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_child_memory, args=(n, size, results))
    proc.start()
    rss_cloud, rss_render, traced_peak, secs = results.get()
    proc.join()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    print(f"1 view, {n} gaussians, {size}x{size}: {secs:.2f} s")
    print(f"  peak RSS of the child process (ru_maxrss): {rss_cloud:.0f} MiB after building the cloud, "
          f"{rss_render:.0f} MiB after rendering (RUSAGE_CHILDREN: {children:.0f} MiB)")
    print(f"  tracemalloc peak of a second render call alone (numpy buffers included): {traced_peak:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    print(f"CPU cores: {os.cpu_count()}, numpy {np.__version__}")
    bench_views(50_000, 256, args.repeats)
    for size in (512, 518):
        bench_single(50_000, size, args.repeats)
    if not args.skip_memory:
        bench_memory(1_000_000, 256)


if __name__ == "__main__":
    main()
