"""Tests of the CPU splat renderer: cameras, projection, compositing and previews."""

from __future__ import annotations

import math
from io import BytesIO

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from threegen_dagster.splats.cloud import SH_C0, GaussianCloud
from threegen_dagster.splats.render import (
    Camera,
    look_at,
    orbit_camera,
    preview_grid,
    preview_grid_png,
    render,
    render_rgba,
    render_views,
    validator_cameras,
)

FRONT = orbit_camera(0.0, 0.0, 2.5)
WHITE = (1.0, 1.0, 1.0)
"""On +Z at eye height, looking at the origin along -Z."""
GREY = (0.2, 0.4, 0.6)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def make_cloud(
    positions: npt.ArrayLike,
    scales: npt.ArrayLike,
    colors: npt.ArrayLike,
    opacity: float | npt.ArrayLike = 0.999,
    rotations: npt.ArrayLike | None = None,
) -> GaussianCloud:
    """Gaussians from world scales (sigmas), RGB colours and opacities."""
    pos = np.atleast_2d(np.asarray(positions, np.float64))
    n = len(pos)
    opacity = np.broadcast_to(np.asarray(opacity, np.float64), (n,))
    rot = np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)) if rotations is None else np.atleast_2d(rotations)
    return GaussianCloud(
        positions=pos,
        log_scales=np.log(np.broadcast_to(np.asarray(scales, np.float64), (n, 3))),
        rotations=rot,
        opacity_logits=np.log(opacity / (1.0 - opacity)),
        sh_dc=(np.broadcast_to(np.asarray(colors, np.float64), (n, 3)) - 0.5) / SH_C0,
    )


def concat(*clouds: GaussianCloud) -> GaussianCloud:
    fields = ("positions", "log_scales", "rotations", "opacity_logits", "sh_dc")
    return GaussianCloud(*(np.concatenate([getattr(c, f) for c in clouds]) for f in fields))


def coverage(cloud: GaussianCloud, camera: Camera = FRONT, width: int = 128, height: int = 128) -> np.ndarray:
    return render_rgba(cloud, camera, width, height)[..., 3]


def centroid(weights: np.ndarray) -> tuple[float, float]:
    """Weighted mean pixel centre (u, v) = (column + 0.5, row + 0.5)."""
    rows, cols = np.indices(weights.shape)
    total = weights.sum()
    return float(((cols + 0.5) * weights).sum() / total), float(((rows + 0.5) * weights).sum() / total)


def principal_axis(weights: np.ndarray) -> np.ndarray:
    """Unit (du, dv) direction of the largest second moment of a weight image."""
    rows, cols = np.indices(weights.shape)
    u0, v0 = centroid(weights)
    du, dv = cols + 0.5 - u0, rows + 0.5 - v0
    cov = np.array([[(weights * du * du).sum(), (weights * du * dv).sum()], [(weights * du * dv).sum(), (weights * dv * dv).sum()]])
    return np.linalg.eigh(cov)[1][:, -1]


def reference_render(cloud: GaussianCloud, camera: Camera, width: int, height: int, background: tuple[float, float, float]) -> np.ndarray:
    """Brute force: every gaussian evaluated on every pixel, composited one by one in depth order."""
    focal = camera.focal(height)
    rows, cols = np.indices((height, width))
    pu, pv = cols + 0.5, rows + 0.5
    image = np.zeros((height, width, 3))
    trans = np.ones((height, width))
    cam_pts = (cloud.positions.astype(np.float64) - camera.position) @ camera.rotation.T
    rot = Rotation.from_quat(cloud.rotations.astype(np.float64), scalar_first=True).as_matrix()
    opacity = 1.0 / (1.0 + np.exp(-cloud.opacity_logits.astype(np.float64)))
    colors = np.clip(0.5 + SH_C0 * cloud.sh_dc.astype(np.float64), 0, 1)
    for i in np.argsort(cam_pts[:, 2], kind="stable"):
        x, y, z = cam_pts[i]
        if z <= 0.01:
            continue
        cov3 = rot[i] @ np.diag(np.exp(2.0 * cloud.log_scales[i].astype(np.float64))) @ rot[i].T
        jac = np.array([[focal / z, 0.0, -focal * x / z**2], [0.0, focal / z, -focal * y / z**2]])
        cov2 = jac @ camera.rotation @ cov3 @ camera.rotation.T @ jac.T + 0.3 * np.eye(2)
        inv = np.linalg.inv(cov2)
        du, dv = pu - (focal * x / z + width / 2), pv - (focal * y / z + height / 2)
        maha = inv[0, 0] * du * du + 2 * inv[0, 1] * du * dv + inv[1, 1] * dv * dv
        alpha = np.minimum(opacity[i] * np.exp(-0.5 * maha), 0.99)
        alpha[(alpha < 1 / 255) | (maha > 9.0)] = 0.0
        image += (alpha * trans)[..., None] * colors[i]
        trans *= 1.0 - alpha
    return image + trans[..., None] * np.asarray(background)


def random_cloud(n: int, seed: int) -> GaussianCloud:
    """Modest random gaussians in front of the front camera (none near the edge of the FOV)."""
    rng = np.random.default_rng(seed)
    return GaussianCloud(
        positions=rng.uniform(-0.5, 0.5, (n, 3)),
        log_scales=rng.uniform(np.log(0.01), np.log(0.15), (n, 3)),
        rotations=rng.normal(size=(n, 4)),
        opacity_logits=rng.uniform(-3.0, 4.0, n),
        sh_dc=rng.normal(0.0, 1.5, (n, 3)),
    )


# --------------------------------------------------------------------------- cameras


def test_validator_ring_has_16_cameras_at_radius_and_elevation_looking_at_origin() -> None:
    cams = validator_cameras()
    assert len(cams) == 16
    azimuths = []
    for cam in cams:
        assert np.linalg.norm(cam.position) == pytest.approx(2.5)
        assert math.degrees(math.asin(cam.position[1] / 2.5)) == pytest.approx(15.0)
        np.testing.assert_allclose(cam.forward, -cam.position / 2.5, atol=1e-12)
        np.testing.assert_allclose(cam.rotation @ cam.rotation.T, np.eye(3), atol=1e-12)
        assert cam.up[1] > 0 and abs(cam.right[1]) < 1e-12  # upright, no roll
        assert cam.fov_y_deg == pytest.approx(49.1)
        azimuths.append(math.degrees(math.atan2(cam.position[0], cam.position[2])) % 360.0)
    np.testing.assert_allclose(azimuths, np.arange(16) * 22.5, atol=1e-9)


def test_azimuth_zero_is_on_plus_z_and_azimuth_grows_counter_clockwise_from_above() -> None:
    np.testing.assert_allclose(orbit_camera(0.0, 0.0, 2.0).position, [0, 0, 2], atol=1e-12)
    np.testing.assert_allclose(orbit_camera(90.0, 0.0, 2.0).position, [2, 0, 0], atol=1e-12)
    np.testing.assert_allclose(orbit_camera(270.0, 60.0, 2.0).position, [-1, math.sqrt(3), 0], atol=1e-12)
    np.testing.assert_allclose(FRONT.right, [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(FRONT.up, [0, 1, 0], atol=1e-12)


def test_look_at_rejects_view_parallel_to_up() -> None:
    with pytest.raises(ValueError, match=r"the view direction is parallel to the up vector"):
        look_at((0.0, 3.0, 0.0))


def test_focal_length_follows_vertical_fov() -> None:
    cam = orbit_camera(30.0, 15.0, 2.5, fov_y_deg=60.0)
    # A point on the top edge of the vertical FOV projects onto the image's top edge.
    edge = cam.position + cam.forward + math.tan(math.radians(30.0)) * cam.up
    np.testing.assert_allclose(cam.project(edge, 200, 100)[0], [100.0, 0.0], atol=1e-9)


# --------------------------------------------------------------------------- rendering


def test_empty_and_transparent_clouds_render_background() -> None:
    empty = make_cloud(np.zeros((0, 3)), 0.1, (1, 0, 0))
    clear = make_cloud(np.zeros((5, 3)), 0.3, (1, 0, 0), opacity=1e-4)
    for cloud in (empty, clear):
        rgba = render(cloud, FRONT, 40, 30, background=GREY, return_alpha=True)
        assert rgba.shape == (30, 40, 4) and rgba.dtype == np.float32
        np.testing.assert_allclose(rgba[..., :3], np.broadcast_to(GREY, (30, 40, 3)), atol=1e-6)
        assert np.all(rgba[..., 3] == 0)


def test_single_gaussian_colour_at_centre_background_at_corners() -> None:
    image = render(make_cloud([0, 0, 0], 0.25, (0.9, 0.2, 0.1)), validator_cameras()[5], 64, 64, background=GREY)
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    # Alpha is clamped at 0.99, so 1% of the background shows through.
    expected = 0.99 * np.array([0.9, 0.2, 0.1]) + 0.01 * np.array(GREY)
    np.testing.assert_allclose(image[31:33, 31:33].reshape(-1, 3), np.tile(expected, (4, 1)), atol=2e-3)
    for corner in (image[0, 0], image[0, -1], image[-1, 0], image[-1, -1]):
        np.testing.assert_allclose(corner, GREY, atol=1e-6)


def test_footprint_size_matches_scale_and_focal_length() -> None:
    sigma, size = 0.2, 128
    alpha = coverage(make_cloud([0, 0, 0], sigma, (1, 1, 1), opacity=0.9), width=size, height=size)
    focal = (size / 2) / math.tan(math.radians(49.1 / 2))
    sigma_px = math.sqrt((focal * sigma / 2.5) ** 2 + 0.3)
    # Inside one sigma, alpha exceeds opacity * exp(-1/2): the disc has area pi sigma_px^2.
    inside = (alpha > 0.9 * math.exp(-0.5)).sum()
    assert inside == pytest.approx(math.pi * sigma_px**2, rel=0.05)
    # The footprint is cut at 3 sigma.
    rows, cols = np.indices(alpha.shape)
    radius = np.hypot(cols + 0.5 - size / 2, rows + 0.5 - size / 2)
    assert radius[alpha > 0].max() == pytest.approx(3 * sigma_px, abs=1.0)
    # Seen head-on an isotropic gaussian is a circular screen gaussian of that sigma.
    inner = radius < 2.95 * sigma_px
    np.testing.assert_allclose(alpha[inner], 0.9 * np.exp(-0.5 * (radius[inner] / sigma_px) ** 2), rtol=1e-3)
    assert np.all(alpha[radius > 3.05 * sigma_px] == 0)


def test_elongated_gaussian_follows_its_rotation() -> None:
    scales = (0.3, 0.03, 0.03)  # long along local x
    quarter_z = Rotation.from_euler("z", 90, degrees=True).as_quat(scalar_first=True)
    eighth_z = Rotation.from_euler("z", 45, degrees=True).as_quat(scalar_first=True)
    cases = {
        "identity": ([1, 0, 0, 0], (1.0, 0.0)),  # world +X: screen right
        "90 about z": (quarter_z, (0.0, 1.0)),  # world +Y: screen vertical
        "45 about z": (eighth_z, (1 / math.sqrt(2), -1 / math.sqrt(2))),  # up and to the right (v grows down)
        "unnormalised, negated": (-3.0 * eighth_z, (1 / math.sqrt(2), -1 / math.sqrt(2))),
    }
    for name, (quat, expected) in cases.items():
        alpha = coverage(make_cloud([0, 0, 0], scales, (0, 0, 0), rotations=[quat]))
        axis = principal_axis(alpha)
        assert abs(axis @ np.array(expected)) > 0.999, name
    # Extents: about 10:1 (the low-pass filter adds a little to the short axis).
    rows, cols = np.nonzero(coverage(make_cloud([0, 0, 0], scales, (0, 0, 0))) > 0.1)
    assert np.ptp(cols) > 5 * np.ptp(rows)
    rows, cols = np.nonzero(coverage(make_cloud([0, 0, 0], scales, (0, 0, 0), rotations=[quarter_z])) > 0.1)
    assert np.ptp(rows) > 5 * np.ptp(cols)


def test_gaussian_long_along_depth_is_foreshortened_until_seen_from_the_side() -> None:
    along_z = Rotation.from_euler("y", 90, degrees=True).as_quat(scalar_first=True)  # local x -> world -z
    cloud = make_cloud([0, 0, 0], (0.3, 0.03, 0.03), (0, 0, 0), rotations=[along_z])
    rows, cols = np.nonzero(coverage(cloud) > 0.1)
    assert max(np.ptp(rows), np.ptp(cols)) < 1.5 * min(np.ptp(rows), np.ptp(cols)) + 2  # end-on: a small blob
    side = coverage(cloud, orbit_camera(90.0, 0.0, 2.5))
    assert abs(principal_axis(side) @ np.array([1.0, 0.0])) > 0.999  # from +X it lies horizontally
    rows, cols = np.nonzero(side > 0.1)
    assert np.ptp(cols) > 5 * np.ptp(rows)


def test_zero_quaternion_renders_as_identity() -> None:
    scales = (0.3, 0.05, 0.05)
    zero = render(make_cloud([0, 0, 0], scales, (1, 0, 0), rotations=[[0, 0, 0, 0]]), FRONT, 40, 40)
    identity = render(make_cloud([0, 0, 0], scales, (1, 0, 0)), FRONT, 40, 40)
    np.testing.assert_array_equal(zero, identity)


def test_rejects_empty_image_size() -> None:
    with pytest.raises(ValueError, match=r"image size must be positive, got 0x10"):
        render(make_cloud([0, 0, 0], 0.1, (1, 0, 0)), FRONT, 0, 10)


def test_depth_order_front_gaussian_hides_back_one() -> None:
    red = make_cloud([0, 0, 0.5], 0.15, (1, 0, 0))
    blue = make_cloud([0, 0, -0.5], 0.15, (0, 0, 1))
    for cloud in (concat(red, blue), concat(blue, red)):
        front = render(cloud, orbit_camera(0.0, 0.0, 2.5), 48, 48)[24, 24]
        back = render(cloud, orbit_camera(180.0, 0.0, 2.5), 48, 48)[24, 24]
        np.testing.assert_allclose(front, [1, 0, 0], atol=0.02)
        np.testing.assert_allclose(back, [0, 0, 1], atol=0.02)


def test_translucent_layers_composite_front_to_back() -> None:
    near = make_cloud([0, 0, 0.5], 1.0, (1, 0, 0), opacity=0.5)
    far = make_cloud([0, 0, -0.5], 1.0, (0, 0, 1), opacity=0.5)
    pixel = render(concat(far, near), FRONT, 32, 32, background=(0, 1, 0))[16, 16]
    # Big gaussians: alpha is close to the opacity at the centre pixel.
    np.testing.assert_allclose(pixel, [0.5, 0.25, 0.25], atol=0.01)


def test_plus_x_right_and_plus_y_up_in_azimuth_zero_view() -> None:
    cam = validator_cameras()[0]
    cloud = concat(make_cloud([0.6, 0, 0], 0.05, (1, 0, 0)), make_cloud([0, 0.6, 0], 0.05, (0, 1, 0)))
    image = render(cloud, cam, 96, 96, background=(0, 0, 0))
    red_u, red_v = centroid(image[..., 0])
    green_u, green_v = centroid(image[..., 1])
    assert red_u > 48 + 10 and green_v < 48 - 10
    # Each blob sits where the camera projects its centre.
    np.testing.assert_allclose((red_u, red_v), cam.project([0.6, 0, 0], 96, 96)[0], atol=0.3)
    np.testing.assert_allclose((green_u, green_v), cam.project([0, 0.6, 0], 96, 96)[0], atol=0.3)
    # From behind (azimuth 180) +X is on the left.
    assert centroid(render(cloud, validator_cameras()[8], 96, 96, background=(0, 0, 0))[..., 0])[0] < 48 - 10


@pytest.mark.parametrize(("width", "height"), [(96, 48), (40, 90), (1, 1)])
def test_non_square_resolutions(width: int, height: int) -> None:
    cloud = concat(make_cloud([0, 0, 0], 0.05, (1, 0, 0)), make_cloud([0.3, -0.2, 0], 0.05, (0, 1, 0)))
    rgba = render_rgba(cloud, FRONT, width, height, background=(0, 0, 0))
    assert rgba.shape == (height, width, 4)
    if width > 1:
        for channel, point in ((0, [0, 0, 0]), (1, [0.3, -0.2, 0])):
            expected = FRONT.project(point, width, height)[0]
            np.testing.assert_allclose(centroid(rgba[..., channel]), expected, atol=0.3)
        # The vertical FOV fixes the scale: the centred blob has the same footprint at any width.
        centred = make_cloud([0, 0, 0], 0.05, (1, 0, 0))
        area = render_rgba(centred, FRONT, width, height)[..., 3].sum()
        assert area == pytest.approx(render_rgba(centred, FRONT, 2 * width, height)[..., 3].sum(), rel=1e-5)
        assert area != pytest.approx(render_rgba(centred, FRONT, width, 2 * height)[..., 3].sum(), rel=0.5)


def test_matches_brute_force_reference() -> None:
    cloud = random_cloud(40, seed=3)
    for cam, (w, h) in ((FRONT, (48, 40)), (validator_cameras()[3], (37, 52))):
        fast = render(cloud, cam, w, h, background=GREY)
        np.testing.assert_allclose(fast, reference_render(cloud, cam, w, h, GREY), atol=2e-3)


def test_wide_image_spans_several_bands_and_matches_reference() -> None:
    cloud = random_cloud(25, seed=7)
    fast = render(cloud, FRONT, 300, 250, background=GREY)  # 75000 px: more than one uint16 band
    np.testing.assert_allclose(fast, reference_render(cloud, FRONT, 300, 250, GREY), atol=2e-3)


def test_chunking_and_early_termination_do_not_change_the_image() -> None:
    # Near-opaque layers in front saturate the centre; the random gaussians behind still show
    # around them, and are skipped where the layers cover them.
    depths = np.linspace(0.6, 0.8, 5)
    layers = make_cloud(np.stack([0.03 * np.sin(7 * depths), 0.03 * np.cos(7 * depths), depths], 1), 0.25, (0.1, 0.8, 0.3), 0.995)
    cloud = concat(random_cloud(150, seed=11), layers)
    whole = render_rgba(cloud, FRONT, 64, 64, chunk_fragments=1 << 30)
    tiny = render_rgba(cloud, FRONT, 64, 64, chunk_fragments=1)  # one gaussian per chunk
    assert (tiny[..., 3] > 1 - 1e-4).sum() > 50  # early termination kicks in
    np.testing.assert_allclose(tiny, whole, atol=1e-3)
    np.testing.assert_allclose(tiny[..., :3], reference_render(cloud, FRONT, 64, 64, WHITE), atol=2e-3)


def test_huge_gaussian_covers_whole_image() -> None:
    cloud = make_cloud([0, 0, 0], 50.0, (1, 0, 0), opacity=0.6)
    image = render(cloud, FRONT, 40, 30, background=(0, 0, 1))
    np.testing.assert_allclose(image, np.broadcast_to([0.6, 0, 0.4], image.shape), atol=1e-3)


def test_gaussians_behind_camera_or_off_screen_are_invisible() -> None:
    behind = make_cloud([0, 0, 3.0], 0.2, (1, 0, 0))
    beside = make_cloud([5.0, 0, 0], 0.1, (1, 0, 0))
    for cloud in (behind, beside):
        assert coverage(cloud, width=32, height=32).max() == 0.0


def test_opacity_scales_coverage() -> None:
    for opacity in (0.3, 0.7):
        alpha = coverage(make_cloud([0, 0, 0], 1.0, (1, 1, 1), opacity=opacity), width=32, height=32)
        assert alpha.max() == pytest.approx(opacity, rel=0.01)
    assert coverage(make_cloud([0, 0, 0], 1.0, (1, 1, 1), opacity=0.9999), width=32, height=32).max() == pytest.approx(0.99)


def test_render_views_matches_single_renders() -> None:
    cloud = random_cloud(60, seed=5)
    cams = validator_cameras(4)
    threaded = render_views(cloud, cams, 24, 20, return_alpha=True)
    serial = render_views(cloud, cams, 24, 20, return_alpha=True, workers=1)
    for cam, a, b in zip(cams, threaded, serial):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, render(cloud, cam, 24, 20, return_alpha=True))


# --------------------------------------------------------------------------- previews


def test_preview_grid_tiles_images_in_row_major_order() -> None:
    tiles = [np.full((10, 12, 3), v, np.float32) for v in (0.0, 0.25, 0.5)]
    grid = np.asarray(preview_grid(tiles, cols=2))
    assert grid.shape == (20, 24, 3)
    assert grid[5, 5, 0] == 0 and grid[5, 17, 0] == 64 and grid[15, 5, 0] == 128
    assert np.all(grid[10:, 12:] == 255)  # the missing fourth tile stays white


@pytest.mark.parametrize(("grid", "size"), [(2, 48), (4, 24)])
def test_preview_grid_png_decodes_with_expected_size(grid: int, size: int) -> None:
    cloud = concat(make_cloud([0.5, 0, 0], 0.1, (1, 0, 0)), make_cloud([0, 0, 0.5], 0.1, (0, 0, 1)))
    png = preview_grid_png(cloud, size=size, grid=grid)
    image = Image.open(BytesIO(png))
    assert image.format == "PNG" and image.size == (grid * size, grid * size)
    pixels = np.asarray(image.convert("RGB"))
    first = pixels[:size, :size]
    second = pixels[:size, size : 2 * size]
    assert not np.array_equal(first, second)  # different azimuths
    # The azimuth-0 tile shows the blue (+Z) gaussian where the ring's first camera projects it.
    u, v = validator_cameras(grid * grid)[0].project([0, 0, 0.5], size, size)[0]
    r, g, b = first[int(v), int(u)]
    assert b > 240 and r < 40 and g < 40


def test_preview_grid_png_rejects_other_grids() -> None:
    with pytest.raises(ValueError, match=r"grid must be 2 or 4, got 3"):
        preview_grid_png(make_cloud([0, 0, 0], 0.1, (1, 0, 0)), grid=3)
