"""The refiner: quadric decimation, Taubin smoothing, vertex colours carried over."""

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

from threegen_dagster.backends.decimate import RefineError, refine
from threegen_dagster.backends.inflate import inflate

RED, BLUE = (220, 30, 30, 255), (30, 30, 220, 255)


def two_colour_sphere() -> trimesh.Trimesh:
    """A unit-diameter icosphere (5120 faces), red where x > 0 and blue where x < 0."""
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    colours = np.where(sphere.vertices[:, :1] > 0, [RED], [BLUE]).astype(np.uint8)
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=colours)
    return sphere


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return two_colour_sphere()


@pytest.mark.parametrize("target", [500, 2000])
def test_face_count_drops_to_about_the_target(sphere, target):
    out = refine(sphere, target_faces=target)
    assert 0.9 * target <= len(out.faces) <= target


def test_watertight_input_stays_watertight(sphere):
    out = refine(sphere, target_faces=800)
    assert out.is_watertight
    assert out.is_winding_consistent
    assert out.volume > 0


def test_inflated_mesh_stays_closed_after_refining():
    image = Image.new("RGBA", (96, 96), (255, 255, 255, 0))
    ImageDraw.Draw(image).ellipse((10, 10, 86, 86), fill=(200, 40, 40, 255))
    mesh = inflate(image, resolution=48)
    out = refine(mesh, target_faces=len(mesh.faces) // 5)
    assert len(out.faces) <= len(mesh.faces) // 5
    assert out.is_watertight
    assert np.allclose(out.extents, mesh.extents, rtol=0.05)


def test_colours_stay_on_their_sides(sphere):
    out = refine(sphere, target_faces=1000)
    c, x = out.visual.vertex_colors, out.vertices[:, 0]
    assert c.shape == (len(out.vertices), 4)
    right, left = x > 0.05, x < -0.05
    assert right.sum() > 50 and left.sum() > 50
    assert (c[right] == RED).all()
    assert (c[left] == BLUE).all()


def test_bounds_nearly_unchanged(sphere):
    out = refine(sphere, target_faces=1000)
    assert np.allclose(out.bounds, sphere.bounds, atol=0.015)
    assert out.volume == pytest.approx(sphere.volume, rel=0.05)


def test_smoothing_moves_vertices_but_keeps_them_on_the_surface():
    rng = np.random.default_rng(0)
    noisy = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    radial = noisy.vertices / np.linalg.norm(noisy.vertices, axis=1, keepdims=True)
    noisy.vertices = noisy.vertices + radial * rng.normal(0, 0.01, (len(noisy.vertices), 1))
    before = np.std(np.linalg.norm(noisy.vertices, axis=1))
    out = refine(noisy, target_faces=10 * len(noisy.faces), smoothing_iterations=10)
    radius = np.linalg.norm(out.vertices, axis=1)
    assert len(out.faces) == len(noisy.faces)  # under the target: smoothing only
    assert np.std(radius) < 0.7 * before  # rougher surface smoothed out
    assert np.mean(radius) == pytest.approx(0.5, abs=0.01)  # without shrinking


def test_no_smoothing_and_no_decimation_leaves_geometry_alone(sphere):
    out = refine(sphere, target_faces=len(sphere.faces), smoothing_iterations=0)
    assert np.array_equal(out.vertices, sphere.vertices)
    assert np.array_equal(out.faces, sphere.faces)


@pytest.mark.parametrize("target", [600, 100_000])  # decimated, or smoothed only
def test_input_mesh_is_not_modified(target):
    sphere = two_colour_sphere()
    vertices, faces = sphere.vertices.copy(), sphere.faces.copy()
    colours = sphere.visual.vertex_colors.copy()
    refine(sphere, target_faces=target)
    assert np.array_equal(sphere.vertices, vertices)
    assert np.array_equal(sphere.faces, faces)
    assert np.array_equal(sphere.visual.vertex_colors, colours)


def test_face_coloured_mesh_keeps_its_colours():
    box = trimesh.creation.box(extents=(1, 1, 1)).subdivide().subdivide()
    box.visual.face_colors = np.where(box.triangles_center[:, :1] > 0.25, [RED], [BLUE]).astype(np.uint8)
    out = refine(box, target_faces=100, smoothing_iterations=0)
    c, x = out.visual.vertex_colors, out.vertices[:, 0]
    assert (c[x > 0.49, :3] == RED[:3]).all()
    assert (c[x < -0.49, :3] == BLUE[:3]).all()


def test_empty_mesh_raises():
    with pytest.raises(RefineError, match="no faces"):
        refine(trimesh.Trimesh())


@pytest.mark.parametrize("target", [0, 3])
def test_tiny_target_raises(sphere, target):
    with pytest.raises(RefineError, match="at least 4"):
        refine(sphere, target_faces=target)
    assert issubclass(RefineError, ValueError)
