"""The toolkit end to end: coloured mesh -> gaussians -> validator normalisation -> SPZ -> decode
-> checks, and a preview grid that shows the object."""

import io

import numpy as np
import pytest
import trimesh
from PIL import Image

from threegen_dagster.splats import ply, spz
from threegen_dagster.splats.mesh import mesh_to_gaussians
from threegen_dagster.splats.render import orbit_camera, preview_grid_png, render_rgba
from threegen_dagster.splats.validate import check_for_validator, normalize_for_validator


def two_tone_box() -> trimesh.Trimesh:
    """A box, red on its +X half and blue on its -X half (vertex colours)."""
    box = trimesh.creation.box(extents=(1.0, 0.6, 0.4)).subdivide().subdivide()
    red, blue = np.array([220, 30, 30, 255], np.uint8), np.array([30, 30, 220, 255], np.uint8)
    box.visual.vertex_colors = np.where(box.vertices[:, :1] > 0, red, blue)
    return box


@pytest.mark.parametrize("frame", ["y_up", "y_down"])
def test_mesh_to_validator_and_back(frame: str) -> None:
    cloud = normalize_for_validator(mesh_to_gaussians(two_tone_box(), 20_000, seed=1), frame=frame)
    wire = spz.compress(ply.write_ply(cloud))
    decoded = spz.decode(wire)
    verdict = check_for_validator(decoded)
    assert verdict.ok, verdict.failures
    assert len(decoded) == 20_000
    extent = decoded.positions.max(0) - decoded.positions.min(0)
    assert abs(extent.max() - 1.5) < 1e-3 and np.allclose(decoded.positions.mean(0), 0, atol=1e-3)
    assert extent[0] == pytest.approx(1.5, abs=1e-3) and extent[1] == pytest.approx(0.9, abs=0.02)
    right_half = decoded.positions[:, 0] > 0.2
    assert (decoded.colors[right_half, 0] > decoded.colors[right_half, 2]).mean() > 0.99  # red stays red
    assert (decoded.colors[~right_half & (decoded.positions[:, 0] < -0.2), 2] > 0.6).all()


def test_front_render_shows_red_right_blue_left_and_y_down_flips_it() -> None:
    cloud = normalize_for_validator(mesh_to_gaussians(two_tone_box(), 20_000, seed=1))
    front = render_rgba(spz.decode(spz.encode(cloud)), orbit_camera(0, 0), 128, 128)
    row = front[64]
    covered = np.nonzero(row[:, 3] > 0.5)[0]
    left, right = row[covered[:5], :3].mean(0), row[covered[-5:], :3].mean(0)
    assert right[0] > 0.6 > right[2] and left[2] > 0.6 > left[0]
    upside_down = normalize_for_validator(cloud, frame="y_down")
    flipped = render_rgba(upside_down, orbit_camera(0, 0), 128, 128)  # rotated 180 deg about X
    column = np.nonzero(flipped[:, :, 3].max(axis=0) > 0.5)[0]
    assert flipped[64, column[-3], 0] > 0.6  # about X: +X stays on the right


def test_preview_grid_looks_like_the_object() -> None:
    cloud = normalize_for_validator(mesh_to_gaussians(two_tone_box(), 20_000, seed=1))
    png = preview_grid_png(spz.decode(spz.encode(cloud)), size=96, grid=4)
    grid = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), np.float32) / 255
    assert grid.shape == (384, 384, 3)
    tiles = grid.reshape(4, 96, 4, 96, 3).transpose(0, 2, 1, 3, 4).reshape(16, 96, 96, 3)
    covered = [(t.min(axis=2) < 0.9).mean() for t in tiles]
    assert min(covered) > 0.05  # the box is in every view
    red = [((t[..., 0] > 0.6) & (t[..., 2] < 0.4)).mean() for t in tiles]
    blue = [((t[..., 2] > 0.6) & (t[..., 0] < 0.4)).mean() for t in tiles]
    assert red[4] > 4 * blue[4] and blue[12] > 4 * red[12]  # azimuth 90 sees +X (red), 270 sees -X (blue)
