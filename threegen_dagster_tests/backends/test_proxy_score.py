"""The proxy scorer: validator checks plus silhouette IoU, colour agreement and ring consistency."""

import io
import json

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw, ImageOps

from threegen_dagster.backends.inflate import inflate
from threegen_dagster.backends.proxy_score import WEIGHTS, ProxyScore, score_splat
from threegen_dagster.splats.cloud import GaussianCloud
from threegen_dagster.splats.mesh import mesh_to_gaussians
from threegen_dagster.splats.validate import normalize_for_validator

RED, BLUE = (200, 40, 40), (40, 40, 200)
GAUSSIANS = 8000  # just over the validator's 7,000 minimum
FRONT, RING = 128, 48  # small renders keep this fast


def cutout(draw_shapes, size: int = 128) -> Image.Image:
    image = Image.new("RGBA", (size, size), (255, 255, 255, 0))
    draw_shapes(ImageDraw.Draw(image))
    return image


def disc(colour=RED, box=(20, 20, 108, 108), size: int = 128) -> Image.Image:
    return cutout(lambda d: d.ellipse(box, fill=colour + (255,)), size)


def bar(width: int, height: int, colour=RED) -> Image.Image:
    return cutout(lambda d: d.rectangle((64 - width // 2, 64 - height // 2, 64 + width // 2, 64 + height // 2),
                                        fill=colour + (255,)))


def l_shape() -> Image.Image:
    def draw(d):
        d.rectangle((20, 10, 50, 118), fill=RED + (255,))
        d.rectangle((51, 88, 110, 118), fill=RED + (255,))
    return cutout(draw)


def splat_of(foreground: Image.Image) -> GaussianCloud:
    """The pipeline's path: inflate the cut-out, sample discs on the mesh, normalise as the validator does."""
    return normalize_for_validator(mesh_to_gaussians(inflate(foreground, resolution=48), GAUSSIANS, seed=0))


def score(cloud: GaussianCloud, foreground: Image.Image) -> ProxyScore:
    return score_splat(cloud, foreground, front_size=FRONT, ring_size=RING)


@pytest.fixture(scope="module")
def disc_splat() -> GaussianCloud:
    return splat_of(disc())


@pytest.fixture(scope="module")
def disc_score(disc_splat) -> ProxyScore:
    return score(disc_splat, disc())


def test_splat_of_its_own_cutout_scores_high(disc_score):
    assert disc_score.kind == "proxy"
    assert disc_score.checks["ok"] is True and disc_score.checks["failures"] == []
    assert disc_score.score >= 0.6
    assert disc_score.silhouette_iou > 0.85
    assert disc_score.colour_similarity > 0.85
    assert 0.0 < disc_score.ring_consistency <= 1.0


def test_score_is_the_weighted_sum_of_its_parts(disc_score):
    parts = {k: getattr(disc_score, k) for k in WEIGHTS}
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    assert disc_score.score == pytest.approx(sum(WEIGHTS[k] * v for k, v in parts.items()), abs=2e-4)


def test_result_dict_is_json_ready_and_says_proxy(disc_score):
    out = disc_score.to_dict()
    assert "ring_png" not in out
    assert out["kind"] == "proxy" and "not the validator" in out["note"]
    assert json.loads(json.dumps(out))["score"] == disc_score.score


def test_ring_png_is_a_four_by_four_grid_of_views(disc_score):
    grid = Image.open(io.BytesIO(disc_score.ring_png))
    assert grid.format == "PNG"
    assert grid.size == (4 * RING, 4 * RING)
    tiles = np.asarray(grid.convert("RGB")).reshape(4, RING, 4, RING, 3).swapaxes(1, 2).reshape(16, RING, RING, 3)
    for tile in tiles:  # every view shows the object (red) on white corners
        assert (tile[0, 0] == 255).all()
        red = (tile[..., 0] > 120) & (tile[..., 2] < 100)
        assert red.mean() > 0.02


def test_scale_and_position_in_the_cutout_do_not_matter(disc_splat, disc_score):
    moved = score(disc_splat, disc(box=(5, 60, 55, 110), size=160))
    assert moved.silhouette_iou == pytest.approx(disc_score.silhouette_iou, abs=0.03)


def test_a_different_shape_gets_a_lower_iou():
    wide = splat_of(bar(100, 24))
    same = score(wide, bar(100, 24))
    other = score(wide, bar(24, 100))  # a tall bar: its bounding box is stretched the other way
    assert same.silhouette_iou > 0.8
    assert other.silhouette_iou < same.silhouette_iou - 0.3
    assert other.score < same.score


def test_mirrored_cutout_gets_a_lower_iou():
    # the front render (azimuth 0) must see the cut-out as drawn, not mirrored
    cut = l_shape()
    cloud = splat_of(cut)
    same = score(cloud, cut).silhouette_iou
    mirrored = score(cloud, ImageOps.mirror(cut)).silhouette_iou
    flipped = score(cloud, ImageOps.flip(cut)).silhouette_iou
    assert same > 0.85
    assert mirrored < same - 0.15
    assert flipped < same - 0.15


def test_a_different_colour_gets_a_lower_colour_similarity(disc_splat, disc_score):
    blue = score(disc_splat, disc(BLUE))
    assert blue.silhouette_iou == pytest.approx(disc_score.silhouette_iou, abs=1e-6)
    assert blue.colour_similarity < disc_score.colour_similarity - 0.2
    assert blue.score < disc_score.score


def test_ring_consistency_is_high_for_a_round_object_and_lower_for_a_flat_one(disc_score):
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    ball.visual.vertex_colors = np.tile(RED + (255,), (len(ball.vertices), 1))
    ball_score = score(normalize_for_validator(mesh_to_gaussians(ball, GAUSSIANS, seed=0)), disc())
    assert ball_score.ring_consistency > 0.95  # every view of a uniform ball looks the same
    assert disc_score.ring_consistency < ball_score.ring_consistency - 0.1  # a lens seen edge-on does not


def test_too_few_gaussians_scores_zero_with_the_failure_listed(disc_splat):
    small = disc_splat.subset(np.arange(6000))
    result = score(small, disc())
    assert result.score == 0.0
    assert result.checks["ok"] is False
    assert len(result.checks["failures"]) == 1 and result.checks["failures"][0].startswith("min_gaussians")
    assert result.silhouette_iou > 0.8  # the parts are still measured and reported


def test_identity_rotations_score_zero(disc_splat):
    c = disc_splat
    rotations = np.tile(np.array([1, 0, 0, 0], np.float32), (len(c), 1))
    identity = GaussianCloud(c.positions, c.log_scales, rotations, c.opacity_logits, c.sh_dc)
    result = score(identity, disc())
    assert result.score == 0.0
    assert any(f.startswith("identity_rotations") for f in result.checks["failures"])


def test_transparent_cutout_has_no_overlap(disc_splat):
    empty = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
    result = score(disc_splat, empty)
    assert result.silhouette_iou == 0.0
    assert result.colour_similarity == 0.0
