"""Seconds per pre-validation score with the validator's models (THREEGEN_SCORER=models), beside the proxy.

Scores the SPZ of one embedded-pipeline generation (50,000 gaussians): the validator-style load
and zero-score checks, the 16-view ring at 518 px, OpenCLIP on the views and the prompt, DINOv2 and
its head. Three ways to get models:

- configured: THREEGEN_CLIP_MODEL, THREEGEN_DINO_MODEL, THREEGEN_QUALITY_HEAD (real weights);
- ``--arch real``: random weights in the real architectures (convnext_large_d, dinov2-small), so
  the compute cost is real and the scores are meaningless;
- ``--tiny``: the tests' tiny random models (a smoke run).

Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402


def real_architectures(root: Path) -> dict[str, str]:
    """convnext_large_d and dinov2-small with random weights, saved in the layouts the scorer loads."""
    import torch
    from safetensors.torch import save_file
    from transformers import Dinov2Config, Dinov2Model

    from threegen_dagster.backends.validator_models import import_open_clip
    from threegen_dagster_tests.tiny_scorer import build_score_head

    open_clip = import_open_clip()
    clip_dir = root / "clip"
    clip_dir.mkdir()
    config = {"model_cfg": open_clip.get_model_config("convnext_large_d"),
              "preprocess_cfg": {"interpolation": "bicubic", "resize_mode": "shortest"}}
    (clip_dir / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    model = open_clip.create_model("convnext_large_d")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(clip_dir / "open_clip_model.safetensors"))
    del model
    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                             patch_size=14, image_size=518)).save_pretrained(root / "dino")
    return {"THREEGEN_CLIP_MODEL": str(clip_dir), "THREEGEN_DINO_MODEL": str(root / "dino"),
            "THREEGEN_QUALITY_HEAD": str(build_score_head(root / "head.safetensors", hidden=384))}


def tiny(root: Path) -> dict[str, str]:
    from threegen_dagster_tests.tiny_scorer import build_score_head, build_tiny_clip, build_tiny_dino

    return {"THREEGEN_CLIP_MODEL": str(build_tiny_clip(root / "clip")),
            "THREEGEN_DINO_MODEL": str(build_tiny_dino(root / "dino")),
            "THREEGEN_QUALITY_HEAD": str(build_score_head(root / "head.safetensors"))}


def one_generation(root: Path, prompt: str) -> tuple[bytes, object]:
    """The SPZ and foreground of one embedded-pipeline generation."""
    from threegen_dagster.backends.registry import engine
    from threegen_dagster.splats import spz
    from threegen_dagster.splats.mesh import mesh_to_gaussians
    from threegen_dagster.splats.validate import normalize_for_validator

    image = engine("text_to_image", "procedural")(prompt, 42)
    cut = engine("background", "flood_fill")(image)
    mesh = engine("refine", "decimate")(engine("image_to_mesh", "inflate")(cut, 42))
    return spz.encode(normalize_for_validator(mesh_to_gaussians(mesh, 50_000, seed=42))), cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny random models")
    parser.add_argument("--arch", choices=("configured", "real"), default="configured",
                        help="'real': random weights in the real architectures")
    parser.add_argument("--prompt", default="a wooden chair")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        label = "configured models"
        t = time.perf_counter()
        if args.tiny:
            os.environ.update(tiny(root))
            label = "tiny random models"
        elif args.arch == "real":
            os.environ.update(real_architectures(root))
            label = "convnext_large_d + dinov2-small, random weights"
        built = time.perf_counter() - t
        from threegen_dagster.backends.registry import engine
        from threegen_dagster.backends.validator_models import ValidatorModels, ValidatorModelsConfig
        from threegen_dagster.splats import spz as codec

        data, cut = one_generation(root, args.prompt)
        print(f"pre-validation score ({machine()}; {label}; {len(codec.decode(data)):,} gaussians)")
        if built > 1:
            print(f"  building the models took {built:.1f} s (not counted)")
        config = ValidatorModelsConfig(clip_model=os.environ.get("THREEGEN_CLIP_MODEL", ""),
                                       dino_model=os.environ.get("THREEGEN_DINO_MODEL", "facebook/dinov2-small"),
                                       quality_head=os.environ.get("THREEGEN_QUALITY_HEAD", ""),
                                       device=os.environ.get("THREEGEN_DEVICE", "auto"),
                                       dtype=os.environ.get("THREEGEN_SCORER_DTYPE", "float32"))
        models = ValidatorModels(config)
        t = time.perf_counter()
        models.load()
        print(f"  cold load        {time.perf_counter() - t:7.2f} s  on {models.describe()['device']}")
        rows = []
        for _ in range(args.repeat + 1):  # the first call warms up kernels and caches
            t = time.perf_counter()
            result, _ = models(data, None, args.prompt)
            rows.append((time.perf_counter() - t, models.last_stats))
        warm = rows[1:]
        total = statistics.median(r[0] for r in warm)
        render = statistics.median(r[1]["render_seconds"] for r in warm)
        model = statistics.median(r[1]["model_seconds"] for r in warm)
        print(f"  first score      {rows[0][0]:7.2f} s")
        print(f"  warm score       {total:7.2f} s  median of {len(warm)}: checks + validator load + 16-view ring "
              f"{render:.2f} s, CLIP + DINOv2 {model:.2f} s, SPZ decode + SSIM + preview {total - render - model:.2f} s; "
              f"peak GPU {max(r[1].get('gpu_peak_mb', 0.0) for r in warm):.0f} MB")
        print(f"  score {result['score']}  parts {result['parts']}")
        proxy = engine("score", "proxy")
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            proxy(data, cut)
            times.append(time.perf_counter() - t)
        print(f"  proxy scorer     {statistics.median(times):7.2f} s  (for comparison; no models)")


if __name__ == "__main__":
    main()
