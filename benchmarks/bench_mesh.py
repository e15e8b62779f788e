"""Benchmark mesh_to_gaussians, normalize_for_validator and check_for_validator.

Run: .venv/bin/python benchmarks/bench_mesh.py

Timings are wall-clock medians (time.perf_counter) over several runs after one warm-up run.
mesh_to_gaussians is timed on a freshly built Trimesh each run (built outside the timed region),
so trimesh's per-mesh caches (face areas, cross products, visual hashes) are computed inside it.
Peak memory is the peak RSS of a child process running the whole job, read by a wrapper process
with resource.getrusage(RUSAGE_CHILDREN).ru_maxrss, next to a child that only imports and builds
the mesh.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from trimesh.visual.material import PBRMaterial
from trimesh.visual.texture import TextureVisuals

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threegen_dagster.splats.cloud import GaussianCloud  # noqa: E402
from threegen_dagster.splats.mesh import mesh_to_gaussians  # noqa: E402
from threegen_dagster.splats.validate import check_for_validator, normalize_for_validator  # noqa: E402

MAJOR_RADIUS, MINOR_RADIUS = 1.0, 0.3


def torus_arrays() -> tuple[np.ndarray, np.ndarray]:
    """A 10,000-face torus."""
    torus = trimesh.creation.torus(MAJOR_RADIUS, MINOR_RADIUS, major_sections=100, minor_sections=50)
    return torus.vertices.copy(), torus.faces.copy()


def vertex_coloured(vertices: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    span = np.ptp(vertices, axis=0)
    rgba = np.c_[(vertices - vertices.min(axis=0)) / span, np.ones(len(vertices))]
    return trimesh.Trimesh(vertices, faces, vertex_colors=(rgba * 255).astype(np.uint8), process=False)


def textured(vertices: np.ndarray, faces: np.ndarray, image: Image.Image) -> trimesh.Trimesh:
    """The torus with angle-based UVs and a PBR base colour texture (as a GLB loads)."""
    ring = np.hypot(vertices[:, 0], vertices[:, 1])
    u = np.arctan2(vertices[:, 1], vertices[:, 0]) / (2 * np.pi) + 0.5
    v = np.arctan2(vertices[:, 2], ring - MAJOR_RADIUS) / (2 * np.pi) + 0.5
    visual = TextureVisuals(uv=np.c_[u, v], material=PBRMaterial(baseColorTexture=image))
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def texture_image(size: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def median_ms(
    job: Callable[..., object], runs: int, setup: Callable[[], object] | None = None
) -> tuple[float, float]:
    """Median and minimum wall time in ms; ``setup`` (untimed) builds the argument for each run."""
    job_with: Callable[[object], object] = (lambda arg: job(arg)) if setup else (lambda _arg: job())
    job_with(setup() if setup else None)  # warm-up: imports, first-call numpy paths
    times = []
    for _ in range(runs):
        arg = setup() if setup else None
        start = time.perf_counter()
        job_with(arg)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), min(times)


def bench_mesh_to_gaussians() -> None:
    vertices, faces = torus_arrays()
    count = 100_000
    print(f"mesh_to_gaussians, {count:,} gaussians from a {len(faces):,}-face torus (fresh mesh each run, 15 runs):")
    cases = {
        "vertex colours": lambda: vertex_coloured(vertices, faces),
        "PBR texture 1024^2": lambda: textured(vertices, faces, texture_image(1024)),
        "PBR texture 2048^2": lambda: textured(vertices, faces, texture_image(2048)),
    }
    for name, build in cases.items():
        median, best = median_ms(lambda mesh: mesh_to_gaussians(mesh, count), 15, setup=build)
        print(f"  {name:20s} median {median:7.1f} ms  min {best:7.1f} ms  ({count / median * 1e3:,.0f} gaussians/s)")
    warm = vertex_coloured(vertices, faces)
    median, best = median_ms(lambda: mesh_to_gaussians(warm, count), 15)
    label = "vertex colours, warm"
    print(f"  {label:20s} median {median:7.1f} ms  min {best:7.1f} ms  (same mesh reused: trimesh caches kept)")


def bench_validate() -> None:
    vertices, faces = torus_arrays()
    for count, runs in ((100_000, 9), (1_000_000, 3)):
        cloud = mesh_to_gaussians(vertex_coloured(vertices, faces), count)
        shifted = GaussianCloud(
            cloud.positions * 3.0 + 5.0, cloud.log_scales, cloud.rotations, cloud.opacity_logits, cloud.sh_dc
        )
        print(f"{count:,} gaussians ({runs} runs, median / min):")
        jobs: dict[str, Callable[[], object]] = {
            "normalize_for_validator": lambda: normalize_for_validator(shifted),
            "normalize, y_down": lambda: normalize_for_validator(shifted, frame="y_down"),
            "normalize, remove_floaters": lambda: normalize_for_validator(shifted, remove_floaters=True),
            "check_for_validator": lambda: check_for_validator(shifted),
        }
        for name, job in jobs.items():
            median, best = median_ms(job, runs)
            print(f"  {name:28s} {median:8.1f} ms  {best:8.1f} ms")


CHILD_JOBS = {
    "baseline": "",
    "mesh_to_gaussians": "cloud = mesh_to_gaussians(mesh, 1_000_000)",
    "mesh_to_gaussians+normalize+check": (
        "cloud = mesh_to_gaussians(mesh, 1_000_000); out = normalize_for_validator(cloud); check_for_validator(out)"
    ),
    "mesh_to_gaussians+normalize(floaters)+check": (
        "cloud = mesh_to_gaussians(mesh, 1_000_000); "
        "out = normalize_for_validator(cloud, remove_floaters=True); check_for_validator(out)"
    ),
}


def child_peak_rss_mib(job: str) -> float:
    """Peak RSS of a child running ``job``, via RUSAGE_CHILDREN in a fresh wrapper process."""
    root = Path(__file__).resolve().parents[1]
    child = (
        f"import sys; sys.path.insert(0, {str(root)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from bench_mesh import *; mesh = vertex_coloured(*torus_arrays()); " + job
    )
    wrapper = (
        "import resource, subprocess, sys; "
        f"subprocess.run([sys.executable, '-c', {child!r}], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", wrapper], check=True, capture_output=True, text=True).stdout
    return int(out.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def bench_memory() -> None:
    print("peak RSS of a child process (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss), 1,000,000 gaussians:")
    for name, job in CHILD_JOBS.items():
        print(f"  {name:45s} {child_peak_rss_mib(job):8.1f} MiB")


def main() -> None:
    print(f"numpy {np.__version__}, trimesh {trimesh.__version__}, python {sys.version.split()[0]}")
    bench_mesh_to_gaussians()
    bench_validate()
    bench_memory()


if __name__ == "__main__":
    main()
