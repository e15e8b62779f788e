from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
import pytest
import trimesh
from PIL import Image
from scipy.spatial.transform import Rotation
from trimesh.visual.material import PBRMaterial, SimpleMaterial
from trimesh.visual.texture import TextureVisuals

from threegen_dagster.splats.cloud import SH_C0, GaussianCloud, SplatError
from threegen_dagster.splats.mesh import (
    DEFAULT_OPACITY,
    DEFAULT_SCALE_FACTOR,
    DEFAULT_THICKNESS,
    NEUTRAL_GREY,
    linear_to_srgb,
    mesh_to_gaussians,
    quaternions_from_frames,
)
from threegen_dagster.splats.validate import PYSPZ_MAX_GAUSSIANS

RED = np.array([1.0, 0.0, 0.0])
BLUE = np.array([0.0, 0.0, 1.0])


def _rotation_matrices(cloud: GaussianCloud) -> npt.NDArray[np.float64]:
    return Rotation.from_quat(cloud.rotations.astype(np.float64), scalar_first=True).as_matrix()


def _closest_faces(mesh: trimesh.Trimesh, points: npt.NDArray[np.floating]) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the surface and the nearest face, brute force (trimesh's proximity needs rtree)."""
    n_faces = len(mesh.faces)
    pairs = np.repeat(np.asarray(points, np.float64), n_faces, axis=0)
    closest = trimesh.triangles.closest_point(np.tile(mesh.triangles, (len(points), 1, 1)), pairs)
    distances = np.linalg.norm(closest - pairs, axis=1).reshape(len(points), n_faces)
    face = distances.argmin(axis=1)
    return distances[np.arange(len(points)), face], face


def _quad(visual: object = None) -> trimesh.Trimesh:
    """The unit square in the z = 0 plane, facing +z, UVs equal to (x, y)."""
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    return trimesh.Trimesh(vertices, faces, visual=visual, process=False)


def _red_blue_image() -> Image.Image:
    """64 x 64: left half red, right half blue."""
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    return Image.fromarray(pixels)


def _uv() -> npt.NDArray[np.float64]:
    return np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


def _assert_red_left_blue_right(cloud: GaussianCloud, red: npt.ArrayLike = RED, blue: npt.ArrayLike = BLUE) -> None:
    x = cloud.positions[:, 0]
    left, right = x < 0.45, x > 0.55
    assert left.sum() > 100 and right.sum() > 100
    np.testing.assert_allclose(cloud.colors[left], np.broadcast_to(red, (left.sum(), 3)), atol=1 / 255)
    np.testing.assert_allclose(cloud.colors[right], np.broadcast_to(blue, (right.sum(), 3)), atol=1 / 255)


def test_samples_lie_on_the_surface() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=2)
    cloud = mesh_to_gaussians(mesh, 1000, seed=1)
    distance, _ = _closest_faces(mesh, cloud.positions)
    assert len(cloud) == 1000
    assert distance.max() < 1e-5


def test_density_is_proportional_to_area() -> None:
    big = [[0.0, 0, 0], [3, 0, 0], [0, 3, 0]]  # area 4.5
    small = [[0.0, 0, 1], [1, 0, 1], [0, 1, 1]]  # area 0.5, at z = 1
    mesh = trimesh.Trimesh(np.array(big + small), np.array([[0, 1, 2], [3, 4, 5]]), process=False)
    count = 40_000
    cloud = mesh_to_gaussians(mesh, count, seed=3)
    on_big = np.count_nonzero(np.abs(cloud.positions[:, 2]) < 1e-6)
    on_small = np.count_nonzero(np.abs(cloud.positions[:, 2] - 1) < 1e-6)
    assert on_big + on_small == count
    # binomial(40000, 0.9): standard deviation 60, allow 5 of them
    assert abs(on_big - 0.9 * count) < 300


def test_discs_lie_in_their_faces() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=2)
    cloud = mesh_to_gaussians(mesh, 1000, seed=2)
    _, face = _closest_faces(mesh, cloud.positions)
    local_z = _rotation_matrices(cloud)[:, :, 2]
    alignment = np.abs(np.einsum("ij,ij->i", local_z, mesh.face_normals[face]))
    assert alignment.min() > 1 - 1e-5
    scales = cloud.scales
    np.testing.assert_allclose(scales[:, 0], scales[:, 1], rtol=1e-6)
    np.testing.assert_allclose(scales[:, 2], DEFAULT_THICKNESS * scales[:, 0], rtol=1e-5)


def test_local_z_follows_the_winding_of_every_box_face() -> None:
    mesh = trimesh.creation.box()
    cloud = mesh_to_gaussians(mesh, 2000, seed=0)
    _, face = _closest_faces(mesh, cloud.positions)
    local_z = _rotation_matrices(cloud)[:, :, 2]
    np.testing.assert_allclose(local_z, mesh.face_normals[face], atol=1e-6)


def test_in_plane_sigma_follows_sampling_density() -> None:
    mesh = trimesh.creation.box(extents=(2.0, 3.0, 4.0))
    count = 10_000
    cloud = mesh_to_gaussians(mesh, count, thickness=0.2, scale_factor=0.8)
    expected = 0.8 * np.sqrt(mesh.area / count)
    np.testing.assert_allclose(cloud.scales[:, :2], expected, rtol=1e-6)
    np.testing.assert_allclose(cloud.scales[:, 2], 0.2 * expected, rtol=1e-5)
    default = mesh_to_gaussians(mesh, count)
    np.testing.assert_allclose(default.scales[:, 0], DEFAULT_SCALE_FACTOR * np.sqrt(mesh.area / count), rtol=1e-6)


def test_rotations_are_never_identity_even_on_a_flat_mesh() -> None:
    cloud = mesh_to_gaussians(_quad(), 1000)
    q = cloud.unit_rotations
    assert np.abs(q[:, 0]).max() < 0.99
    np.testing.assert_allclose(np.linalg.norm(cloud.rotations, axis=1), 1.0, atol=1e-6)


def test_quaternions_from_frames_match_scipy() -> None:
    matrices = Rotation.random(2000, random_state=7).as_matrix()
    q = quaternions_from_frames(matrices[:, :, 0], matrices[:, :, 1], matrices[:, :, 2])
    back = Rotation.from_quat(q.astype(np.float64), scalar_first=True).as_matrix()
    np.testing.assert_allclose(back, matrices, atol=1e-6)
    assert (q[:, 0] >= 0).all()


def test_opacity_is_a_high_logit() -> None:
    cloud = mesh_to_gaussians(trimesh.creation.box(), 100)
    np.testing.assert_allclose(cloud.opacities, DEFAULT_OPACITY, rtol=1e-6)
    assert cloud.sh_degree == 0 and cloud.sh_rest.shape == (100, 0, 3)
    custom = mesh_to_gaussians(trimesh.creation.box(), 100, opacity=0.6)
    np.testing.assert_allclose(custom.opacities, 0.6, rtol=1e-6)


def test_vertex_colours_are_interpolated_barycentrically() -> None:
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    colors = np.array([[255, 0, 0, 255], [0, 255, 0, 255], [0, 0, 255, 255]], np.uint8)
    mesh = trimesh.Trimesh(vertices, [[0, 1, 2]], vertex_colors=colors, process=False)
    cloud = mesh_to_gaussians(mesh, 2000, seed=5)
    barycentric = trimesh.triangles.points_to_barycentric(np.repeat(mesh.triangles, 2000, axis=0), cloud.positions)
    np.testing.assert_allclose(cloud.colors, barycentric, atol=1e-5)
    np.testing.assert_allclose(cloud.sh_dc, (barycentric - 0.5) / SH_C0, atol=1e-4)


def test_face_colours_colour_their_faces() -> None:
    mesh = trimesh.creation.box()
    face_colors = np.zeros((len(mesh.faces), 4), np.uint8)
    face_colors[:, :3] = np.random.default_rng(0).integers(0, 256, (len(mesh.faces), 3))
    face_colors[:, 3] = 255
    mesh.visual.face_colors = face_colors
    cloud = mesh_to_gaussians(mesh, 3000, seed=4)
    _, face = _closest_faces(mesh, cloud.positions)
    # points on a box edge are equally close to two faces, so compare through the faces' normals
    same_side = np.einsum("ij,ij->i", mesh.face_normals[face], _rotation_matrices(cloud)[:, :, 2]) > 0.99
    assert same_side.mean() > 0.95
    np.testing.assert_allclose(cloud.colors[same_side], face_colors[face[same_side], :3] / 255, atol=1e-6)


def test_texture_colours_through_uvs() -> None:
    mesh = _quad(TextureVisuals(uv=_uv(), image=_red_blue_image()))
    _assert_red_left_blue_right(mesh_to_gaussians(mesh, 4000, seed=6))


def test_texture_is_sampled_bilinearly() -> None:
    pixels = np.zeros((2, 2, 3), np.uint8)
    pixels[:, 1] = 255  # black column at u = 0, white at u = 1
    mesh = _quad(TextureVisuals(uv=_uv(), image=Image.fromarray(pixels)))
    cloud = mesh_to_gaussians(mesh, 2000, seed=6)
    np.testing.assert_allclose(cloud.colors[:, 0], cloud.positions[:, 0], atol=1 / 255)


def test_pbr_base_colour_texture_and_factor() -> None:
    plain = PBRMaterial(baseColorTexture=_red_blue_image())
    _assert_red_left_blue_right(mesh_to_gaussians(_quad(TextureVisuals(uv=_uv(), material=plain)), 3000))
    tinted = PBRMaterial(baseColorTexture=_red_blue_image(), baseColorFactor=[0.5, 1.0, 1.0, 1.0])
    cloud = mesh_to_gaussians(_quad(TextureVisuals(uv=_uv(), material=tinted)), 3000)
    # the factor is linear: half of linear red 1.0 is sRGB 0.735
    _assert_red_left_blue_right(cloud, red=[linear_to_srgb(np.float32(0.5)), 0, 0], blue=BLUE)


def test_pbr_factor_without_texture_is_a_flat_colour() -> None:
    material = PBRMaterial(baseColorFactor=[0.2, 0.4, 0.6, 1.0])
    cloud = mesh_to_gaussians(_quad(TextureVisuals(material=material)), 500)
    expected = linear_to_srgb(np.array([51, 102, 153], np.float32) / 255)
    np.testing.assert_allclose(cloud.colors, np.broadcast_to(expected, (500, 3)), atol=1e-6)


def test_simple_material_diffuse_without_image() -> None:
    material = SimpleMaterial(diffuse=[10, 200, 30, 255])
    cloud = mesh_to_gaussians(_quad(TextureVisuals(material=material)), 500)
    np.testing.assert_allclose(cloud.colors, np.broadcast_to([10 / 255, 200 / 255, 30 / 255], (500, 3)), atol=1e-6)


def test_textured_glb_round_trip() -> None:
    material = PBRMaterial(baseColorTexture=_red_blue_image())
    data = _quad(TextureVisuals(uv=_uv(), material=material)).export(file_type="glb")
    loaded = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
    assert isinstance(loaded.visual.material, PBRMaterial)
    _assert_red_left_blue_right(mesh_to_gaussians(loaded, 3000))


def test_uncoloured_mesh_is_neutral_grey() -> None:
    cloud = mesh_to_gaussians(trimesh.creation.icosphere(subdivisions=1), 500)
    np.testing.assert_allclose(cloud.colors, NEUTRAL_GREY)
    np.testing.assert_allclose(cloud.sh_dc, 0.0, atol=1e-7)


def test_deterministic_per_seed() -> None:
    mesh = trimesh.creation.icosphere(subdivisions=2)
    first = mesh_to_gaussians(mesh, 1000, seed=11)
    assert first.allclose(mesh_to_gaussians(mesh.copy(), 1000, seed=11))
    assert not np.allclose(first.positions, mesh_to_gaussians(mesh, 1000, seed=12).positions)


@pytest.mark.parametrize(
    "mesh",
    [
        trimesh.Trimesh(),
        trimesh.Trimesh(np.zeros((3, 3)), np.zeros((0, 3), np.int64), process=False),
        trimesh.Trimesh(np.array([[0.0, 0, 0], [1, 1, 1], [2, 2, 2]]), [[0, 1, 2]], process=False),
        trimesh.Trimesh(np.array([[0.0, 0, 0], [1, 0, 0], [0, np.nan, 0]]), [[0, 1, 2]], process=False),
    ],
    ids=["empty", "no-faces", "zero-area", "nan-vertex"],
)
def test_unusable_meshes_raise(mesh: trimesh.Trimesh, request) -> None:
    why = {"empty": "the mesh is empty", "no-faces": "the mesh is empty", "zero-area": "zero surface area",
           "nan-vertex": r"non-finite \(NaN or inf\) vertex"}[request.node.callspec.id]
    with pytest.raises(SplatError, match=why):
        mesh_to_gaussians(mesh, 100)


def test_a_scene_is_refused_with_a_hint() -> None:
    with pytest.raises(SplatError, match="force='mesh'"):
        mesh_to_gaussians(trimesh.Scene(trimesh.creation.box()), 100)  # type: ignore[arg-type]


@pytest.mark.parametrize("count", [0, -5, PYSPZ_MAX_GAUSSIANS + 1, 2.5, True])
def test_bad_counts_raise(count: int) -> None:
    with pytest.raises(SplatError, match="count"):
        mesh_to_gaussians(trimesh.creation.box(), count)


@pytest.mark.parametrize(
    "kwargs", [{"opacity": 0.0}, {"opacity": 1.0}, {"thickness": 0.0}, {"scale_factor": -1.0}, {"thickness": np.nan}]
)
def test_bad_parameters_raise(kwargs: dict[str, float]) -> None:
    (name, value), = kwargs.items()
    with pytest.raises(SplatError, match=rf"{name} must .*, got {value}"):
        mesh_to_gaussians(trimesh.creation.box(), 100, **kwargs)  # type: ignore[arg-type]


def test_a_single_gaussian_and_numpy_integer_count() -> None:
    assert len(mesh_to_gaussians(trimesh.creation.box(), 1)) == 1
    assert len(mesh_to_gaussians(trimesh.creation.box(), np.int64(7))) == 7
