"""SN17's scoring in process (OpenCLIP + DINOv2 quality head + SSIM), on tiny random models loaded
through the real open_clip and transformers code, and the scoring arithmetic on its own."""

import importlib.util
import io
import math
import sys

import numpy as np
import pytest
from PIL import Image

from threegen_dagster.backends.gpu import BackendError
from threegen_dagster.backends.validator_models import (
    ValidatorModels,
    ValidatorModelsConfig,
    alignment_from_cosines,
    final_score,
)
from threegen_dagster.splats import spz
from threegen_dagster.splats.cloud import GaussianCloud
from threegen_dagster.splats.render import render_views, to_uint8, validator_cameras
from threegen_dagster.splats.validate import as_validator_loads

from ..splats.conftest import random_cloud

HAVE_MODELS = all(importlib.util.find_spec(m) for m in ("torch", "open_clip", "timm", "transformers"))
if HAVE_MODELS:
    import torch

    from ..tiny_scorer import build_score_head, build_tiny_clip, build_tiny_dino
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason="open_clip / transformers not installed (README, GPU)")

SIZE = 96  # ring views; the validator's 518 is the default, exercised by the benchmark


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ----------------------------------------------------------------------------- the arithmetic


def test_alignment_is_the_geometric_mean_of_clipped_scaled_cosines():
    assert alignment_from_cosines([0.35] * 16) == pytest.approx(1.0)
    assert alignment_from_cosines([0.7] * 16) == pytest.approx(1.0)  # clipped at 1
    assert alignment_from_cosines([0.175] * 16) == pytest.approx(0.5)
    assert alignment_from_cosines([0.35, 0.0875]) == pytest.approx(0.5)  # sqrt(1 * 0.25)
    assert alignment_from_cosines([0.35] * 15 + [-0.1]) == 0.0  # one view at or below 0 zeroes it


def test_final_score_follows_the_validator_formula():
    assert final_score(0.29, 1.0, 1.0) == 0.0  # below the alignment floor
    assert final_score(0.5, 0.8, 0.83) == pytest.approx(0.75 * 0.8 + 0.2 * 0.5 + 0.025 * 0.5)
    assert final_score(0.5, 0.8, 0.83, lpips=0.7) == pytest.approx(0.7125 + 0.025 * 0.7 * 0.5)
    # the LPIPS term left out is tiny where neighbouring views are alike
    assert final_score(1, 1, 1, lpips=0.5) - final_score(1, 1, 1) < 3.2e-5


def test_the_validator_load_centres_on_the_scalar_mean_and_fixes_opacity():
    base = random_cloud(2000, seed=3)
    shifted = GaussianCloud(base.positions * 2 + np.array([1.0, 2.0, 3.0]), base.log_scales, base.rotations,
                            np.full(len(base), -1.0), base.sh_dc, base.sh_rest)
    loaded = as_validator_loads(shifted)
    positions = loaded.positions.astype(np.float64)
    sides = positions.max(axis=0) - positions.min(axis=0)
    assert sides.max() == pytest.approx(1.5, rel=1e-5)
    factor = 1.5 / float((shifted.positions.max(axis=0) - shifted.positions.min(axis=0)).max())
    assert factor < 1
    assert abs(positions.mean()) < 1e-5  # all coordinates together, not each axis:
    before = shifted.positions.astype(np.float64)
    np.testing.assert_allclose(positions.mean(axis=0), (before.mean(axis=0) - before.mean()) * factor, atol=1e-5)
    assert abs(positions.mean(axis=0)[2] - positions.mean(axis=0)[0]) > 0.3
    expected = np.minimum(sigmoid(-1.0) / factor, 1.0)
    np.testing.assert_allclose(loaded.opacities, expected, rtol=1e-5)
    np.testing.assert_allclose(loaded.log_scales, shifted.log_scales + np.log(factor), atol=1e-5)


# ----------------------------------------------------------------------------- the models


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        root = tmp_path_factory.mktemp("scorer")
        yield {"clip": build_tiny_clip(root / "clip"), "dino": build_tiny_dino(root / "dino"),
               "head": build_score_head(root / "head.safetensors"),
               "flat_head": build_score_head(root / "flat.safetensors", bias=0.3), "root": root}


def scorer(folders, head="head", **kw) -> ValidatorModels:
    config = ValidatorModelsConfig(clip_model=str(folders["clip"]), dino_model=str(folders["dino"]),
                                   quality_head=str(folders[head]), device="cpu", render_size=SIZE, **kw)
    return ValidatorModels(config)


@pytest.fixture(scope="module")
def models(folders):
    m = scorer(folders)
    m.load()
    return m


@pytest.fixture(scope="module")
def cloud():
    return random_cloud(8000, seed=11)


@needs_models
def test_loading_leaves_no_torchvision_behind(models):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("a real torchvision is installed: no shim involved")
    assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules)
    assert models.describe()["backend"] == "models" and models.loaded


@needs_models
def test_a_score_has_every_part_in_range_and_repeats(models, cloud):
    a, b = models.score_cloud(cloud, text="a wooden chair"), models.score_cloud(cloud, text="a wooden chair")
    assert a.to_dict() == b.to_dict()
    assert len(a.view_cosine) == len(a.view_quality) == 16
    assert all(-1 <= c <= 1 for c in a.view_cosine) and all(0 < q < 1 for q in a.view_quality)
    assert 0 <= a.ssim <= 1 and a.lpips is None and a.checks["ok"]
    assert a.alignment == pytest.approx(alignment_from_cosines(a.view_cosine), abs=1e-3)
    assert a.quality == pytest.approx(np.mean(a.view_quality), abs=1e-3)
    assert a.score == pytest.approx(final_score(a.alignment, a.quality, a.ssim), abs=1e-3)
    assert len(set(a.view_quality)) > 1  # a random head tells the views apart
    assert Image.open(io.BytesIO(a.ring_png)).size == (4 * SIZE, 4 * SIZE)
    other = models.score_cloud(cloud, text="a red sports car")
    assert other.view_cosine != a.view_cosine  # the text reaches the text tower


@needs_models
def test_a_zero_weight_head_scores_every_view_at_the_sigmoid_of_its_bias(folders, cloud):
    m = scorer(folders, head="flat_head")
    result = m.score_cloud(cloud, text="a lamp")
    assert result.view_quality == pytest.approx([sigmoid(0.3)] * 16, abs=1e-4)


@needs_models
def test_an_image_prompt_matches_the_view_it_was_taken_from(models, cloud):
    views = render_views(as_validator_loads(cloud), validator_cameras(16), SIZE, SIZE)
    buf = io.BytesIO()
    Image.fromarray(to_uint8(views[0])).save(buf, format="PNG")
    cosines = models.clip_cosines(views, image=buf.getvalue())
    assert cosines[0] > 0.999 and int(np.argmax(cosines)) == 0


@needs_models
def test_the_engine_call_decodes_the_spz_as_the_validator_does(models, cloud):
    out, ring = models(spz.encode(cloud), None, "a wooden chair")
    direct = models.score_cloud(spz.decode(spz.encode(cloud)), text="a wooden chair")
    assert out["score"] == direct.score and out["kind"] == "models" and ring
    assert out["parts"] == {"alignment": direct.alignment, "quality": direct.quality, "ssim": direct.ssim}


@needs_models
def test_a_cloud_the_checks_reject_scores_zero_with_its_parts(models):
    result = models.score_cloud(random_cloud(3000, seed=2), text="a lamp")
    assert result.score == 0.0 and not result.checks["ok"]
    assert "min_gaussians" in " ".join(result.checks["failures"]) and 0 < result.quality < 1


@needs_models
def test_a_prompt_is_required(models, cloud):
    with pytest.raises(BackendError, match="needs the prompt"):
        models.score_cloud(cloud)
    with pytest.raises(BackendError, match="image prompt cannot be read"):
        models.score_cloud(cloud, image=b"not an image")


@needs_models
def test_missing_or_wrong_files_are_clear_errors(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackendError, match="THREEGEN_QUALITY_HEAD"):
        ValidatorModelsConfig(quality_head="")
    with pytest.raises(BackendError, match="not found"):
        scorer({**folders, "clip": tmp_path / "nope"}).load()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "open_clip_config.json").write_text("{}")
    with pytest.raises(BackendError, match="has no weights"):
        scorer({**folders, "clip": tmp_path / "empty"}).load()
    with pytest.raises(BackendError, match="DINOv2 model folder .* not found"):
        scorer({**folders, "dino": tmp_path / "nodino"}).load()
    with pytest.raises(BackendError, match="cannot load DINOv2 facebook/nothing-here"):
        scorer({**folders, "dino": "facebook/nothing-here"}).load()
    with pytest.raises(BackendError, match="score head .* not found"):
        scorer({**folders, "head": tmp_path / "nohead.safetensors"}).load()
    wide = build_score_head(tmp_path / "wide.safetensors", hidden=64)
    with pytest.raises(BackendError, match="width 64"):
        scorer({**folders, "head": wide}).load()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(BackendError, match="cannot read the score head"):
        scorer({**folders, "head": tmp_path / "junk.pt"}).load()
    hub_named = build_score_head(tmp_path / "hub.safetensors",
                                 extra={"backbone.blocks.0.attn.qkv.weight": torch.zeros(96, 32)})
    with pytest.raises(BackendError, match="torch-hub naming"):
        scorer({**folders, "head": hub_named}).load()


@needs_models
def test_a_head_with_backbone_weights_loads_them(folders, tmp_path, cloud):
    from transformers import Dinov2Model

    backbone = Dinov2Model.from_pretrained(str(folders["dino"]))
    tuned = {f"backbone.{k}": v.clone() + 0.05 for k, v in backbone.state_dict().items()
             if k.endswith("layernorm.weight")}
    head = build_score_head(tmp_path / "tuned.safetensors", extra=tuned)
    plain, changed = scorer(folders), scorer({**folders, "head": head})
    assert plain.score_cloud(cloud, text="x").view_quality != changed.score_cloud(cloud, text="x").view_quality
