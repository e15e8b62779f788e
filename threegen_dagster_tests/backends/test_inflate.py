"""Silhouette inflation: closed meshes in the validator's frame, coloured from the image."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from threegen_dagster.backends.inflate import InflationError, inflate
from threegen_dagster.backends.matting import remove_background

RED, BLUE = (200, 40, 40), (40, 40, 200)
RES = 48  # grid cells along the longer side: small keeps the tests fast


def cutout(draw_shapes, size: int = 128) -> Image.Image:
    """An RGBA cut-out: transparent white background, opaque shapes drawn by ``draw_shapes(draw)``."""
    image = Image.new("RGBA", (size, size), (255, 255, 255, 0))
    draw_shapes(ImageDraw.Draw(image))
    return image


def disc(colour=RED) -> Image.Image:
    return cutout(lambda d: d.ellipse((20, 20, 108, 108), fill=colour + (255,)))


def l_shape() -> Image.Image:
    """A blue upright bar on the left and a red foot along the bottom to its right."""
    def draw(d):
        d.rectangle((10, 10, 40, 118), fill=BLUE + (255,))
        d.rectangle((41, 88, 118, 118), fill=RED + (255,))
    return cutout(draw)


def is_red(c: np.ndarray) -> np.ndarray:
    return (c[:, 0] > 150) & (c[:, 2] < 100)


def is_blue(c: np.ndarray) -> np.ndarray:
    return (c[:, 2] > 150) & (c[:, 0] < 100)


@pytest.fixture(scope="module")
def disc_mesh():
    return inflate(disc(), resolution=RES)


def test_disc_gives_a_closed_consistently_wound_mesh(disc_mesh):
    assert len(disc_mesh.faces) > 100
    assert disc_mesh.is_watertight
    assert disc_mesh.is_winding_consistent
    assert disc_mesh.euler_number == 2  # one closed sphere-like shell


def test_disc_is_sphere_like_with_the_longer_image_side_one_unit(disc_mesh):
    x, y, z = disc_mesh.extents
    assert x == pytest.approx(y, rel=0.03)
    assert max(x, y) == pytest.approx(1.0, abs=0.05)
    assert 0.2 < z < x  # inflated, but flatter than wide at the default depth ratio
    assert np.allclose(disc_mesh.bounds.mean(axis=0), 0, atol=0.03)
    assert abs(disc_mesh.bounds[0, 2] + disc_mesh.bounds[1, 2]) < 1e-3  # front and back mirror


def test_normals_point_outward(disc_mesh):
    assert disc_mesh.volume > 0
    outward = np.einsum("ij,ij->i", disc_mesh.vertex_normals, disc_mesh.vertices - disc_mesh.centroid)
    assert np.mean(outward > 0) > 0.98


def test_depth_ratio_controls_thickness():
    thin = inflate(disc(), resolution=RES, depth_ratio=0.3).extents
    thick = inflate(disc(), resolution=RES, depth_ratio=0.9).extents
    assert thick[2] > 1.5 * thin[2]
    assert thick[0] == pytest.approx(thin[0], rel=0.05)


def test_image_up_is_plus_y_and_image_right_is_plus_x():
    mesh = inflate(l_shape(), resolution=RES)
    v, c = mesh.vertices, mesh.visual.vertex_colors
    red, blue = is_red(c), is_blue(c)
    assert red.sum() > 100 and blue.sum() > 100
    assert v[red, 0].mean() > v[blue, 0].mean() + 0.25  # the foot is to the right
    assert v[red, 1].mean() < v[blue, 1].mean() - 0.2  # and at the bottom
    # geometry alone: the bottom rows are wide, the top rows are only the narrow bar
    top = v[:, 1] > v[:, 1].max() - 0.1
    bottom = v[:, 1] < v[:, 1].min() + 0.1
    assert np.ptp(v[top, 0]) < 0.4 < np.ptp(v[bottom, 0])
    assert v[top, 0].mean() < v[bottom, 0].mean()


def test_transparent_hole_becomes_a_through_hole():
    def ring(d):
        d.ellipse((14, 14, 114, 114), fill=RED + (255,))
        d.ellipse((44, 44, 84, 84), fill=(255, 255, 255, 0))
    mesh = inflate(cutout(ring), resolution=RES)
    assert mesh.is_watertight
    assert mesh.euler_number == 0  # genus 1, a torus
    assert mesh.volume > 0


def test_vertex_colours_come_from_the_image():
    mesh = inflate(disc(BLUE), resolution=RES)
    c = mesh.visual.vertex_colors
    assert c.shape == (len(mesh.vertices), 4)
    assert np.abs(c[:, :3].astype(int) - BLUE).max() <= 2
    assert (c[:, 3] == 255).all()


def antialiased_on_white(size: int, colour=(40, 90, 200)) -> Image.Image:
    """An outline-free disc on white whose edge pixels blend into the white (supersampled)."""
    big = Image.new("RGB", (4 * size, 4 * size), (255, 255, 255))
    ImageDraw.Draw(big).ellipse((0.6 * size, 0.8 * size, 3.4 * size, 3.6 * size), fill=colour)
    return big.resize((size, size), Image.LANCZOS)


@pytest.mark.parametrize("image_size, resolution", [(128, 64), (128, 128), (48, 128)])
def test_no_background_colour_bleeds_into_the_rim(image_size, resolution):
    colour = np.array([40, 90, 200])
    mesh = inflate(remove_background(antialiased_on_white(image_size, tuple(colour))), resolution=resolution)
    c = mesh.visual.vertex_colors[:, :3].astype(float)
    to_object = np.linalg.norm(c - colour, axis=1)
    assert (c.min(axis=1) < 200).all()  # nothing near-white
    assert to_object.max() < 0.25 * np.linalg.norm(255 - colour)  # every vertex much nearer the object's colour


@pytest.mark.parametrize("alpha_box", [None, (60, 60, 61, 61)])
def test_empty_or_tiny_silhouette_raises(alpha_box):
    rgba = np.zeros((64, 64, 4), np.uint8)
    if alpha_box:
        r0, c0, r1, c1 = alpha_box
        rgba[r0: r1 + 1, c0: c1 + 1] = (200, 40, 40, 255)  # 4 pixels: fewer than 16
    with pytest.raises(InflationError, match=r"the cut-out's silhouette is empty \(fewer than 16 opaque pixels\)"):
        inflate(Image.fromarray(rgba, "RGBA"))
