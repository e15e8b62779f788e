"""Per-stage seconds and peak GPU memory of the configured model backends, cold and warm.

On a GPU box, configure the backends as for the worker (THREEGEN_TEXT_TO_IMAGE=flux,
THREEGEN_FLUX_MODEL=..., THREEGEN_IMAGE_TO_MESH=hunyuan, ...) and run it; the whole-generation
warm figure is what a warm worker adds per generation. ``--tiny`` builds the tests' tiny random
models and measures those instead (a CPU smoke run: the figures say nothing about real models).
Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402


def tiny_env(root: Path) -> dict[str, str]:
    from threegen_dagster_tests.tiny_flux import build_tiny_flux
    from threegen_dagster_tests.tiny_hunyuan import build_tiny_hunyuan
    from threegen_dagster_tests.tiny_segmenter import build_tiny_segmenter

    build_tiny_segmenter(root / "u2net" / "u2netp.onnx")
    return {"THREEGEN_TEXT_TO_IMAGE": "flux", "THREEGEN_FLUX_MODEL": str(build_tiny_flux(root / "flux")),
            "THREEGEN_FLUX_DTYPE": "float32", "THREEGEN_FLUX_SIZE": "64", "THREEGEN_DEVICE": "cpu",
            "THREEGEN_BACKGROUND": "rembg", "THREEGEN_REMBG_HOME": str(root / "u2net"),
            "THREEGEN_IMAGE_TO_MESH": "hunyuan", "THREEGEN_HUNYUAN_MODEL": str(build_tiny_hunyuan(root / "hy")),
            "THREEGEN_HUNYUAN_STEPS": "2", "THREEGEN_HUNYUAN_OCTREE": "32", "THREEGEN_HUNYUAN_DTYPE": "float32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="measure the tests' tiny random models")
    parser.add_argument("--prompt", default="a wooden chair")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            os.environ.update(tiny_env(Path(tmp)))
        from threegen_dagster.backends.gpu import gpu_memory
        from threegen_dagster.settings import Settings
        from threegen_dagster.worker import BODIES, StageRunner

        runner = StageRunner(Settings.from_env().models)

        def call(stage: str, body: dict) -> dict:  # as POST /v1/<stage> runs it, without HTTP
            status, out = runner.call(stage, BODIES[stage].model_validate(body))
            if status != 200:
                raise SystemExit(f"{stage}: HTTP {status}: {out['error']}")
            return out

        print(f"model stages ({machine()}{', tiny random models' if args.tiny else ''})")
        t = time.perf_counter()
        loads = runner.load_all()
        print(f"  cold load: {time.perf_counter() - t:.2f} s ({', '.join(f'{k} {v:.2f} s' for k, v in loads.items())})")
        for label in ("first call", "warm"):
            total, peak = 0.0, 0.0
            image = call("text_to_image", {"prompt": args.prompt, "seed": 42})
            cut = call("background", {"png_b64": image["png_b64"]})
            mesh = call("image_to_mesh", {"png_b64": cut["png_b64"], "seed": 42})
            refined = call("refine", {"glb_b64": mesh["glb_b64"]})
            for stage, out in zip(("text_to_image", "background", "image_to_mesh", "refine"),
                                  (image, cut, mesh, refined)):
                meta = out["meta"]
                total += meta["seconds"]
                peak = max(peak, meta["gpu_peak_mb"])
                print(f"  {label:<10} {stage:<14} {meta['backend']:<12} {meta['seconds']:7.2f} s  "
                      f"peak GPU {meta['gpu_peak_mb']:8.1f} MB")
            print(f"  {label:<10} {'generation':<14} {'':<12} {total:7.2f} s  peak GPU {peak:8.1f} MB "
                  f"(in use now {gpu_memory()['gpu_mb']:.1f} MB)")


if __name__ == "__main__":
    main()
