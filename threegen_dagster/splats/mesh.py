"""Mesh to gaussians: flat, opaque, coloured discs sampled on a triangle mesh's surface.

A mesh generator (Hunyuan3D and the like) gives a surface; SN17 wants a gaussian splat. Each
gaussian here is a disc lying in the face it was sampled from: its local z axis is the face normal,
its two in-plane sigmas equal and set by the sampling density so neighbours overlap into a closed
surface, its sigma along the normal a small fraction of that.
"""

from __future__ import annotations

import numbers

import numpy as np
import numpy.typing as npt
import trimesh
from PIL import Image
from trimesh.visual.color import ColorVisuals, to_rgba, uv_to_interpolated_color
from trimesh.visual.material import PBRMaterial, SimpleMaterial
from trimesh.visual.texture import TextureVisuals

from .cloud import SH_C0, GaussianCloud, SplatError
from .validate import PYSPZ_MAX_GAUSSIANS

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.floating]

DEFAULT_GAUSSIAN_COUNT = 50_000
"""Gaussians per mesh unless asked otherwise (the validator needs at least 7,000)."""

DEFAULT_OPACITY = 0.95
"""Opacity of every disc: opaque enough that overlapping discs hide what lies behind."""

DEFAULT_SCALE_FACTOR = 1.0
"""In-plane sigma as a multiple of the mean sample spacing ``sqrt(area / count)``.

With randomly placed discs the expected see-through fraction of a surface is
``exp(-2 * pi * opacity * factor**2)``: 0.27% at 1.0 and opacity 0.95, against 5.5% at 0.7
(and 1.4% of the surface more than 10% transparent at 0.9, 0.2% at 1.0, measured on a plane).
Larger factors only blur colour detail."""

DEFAULT_THICKNESS = 0.1
"""Sigma along the normal as a fraction of the in-plane sigma."""

NEUTRAL_GREY = 0.5
"""Colour of a mesh with no colour at all (``sh_dc`` = 0)."""

_REFERENCE_AXIS = np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0)
"""Tangents are ``normal x reference``; with this axis no disc's rotation is ever the identity."""
_FALLBACK_AXIS = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)


def mesh_to_gaussians(
    mesh: trimesh.Trimesh,
    count: int = DEFAULT_GAUSSIAN_COUNT,
    *,
    seed: int = 0,
    opacity: float = DEFAULT_OPACITY,
    thickness: float = DEFAULT_THICKNESS,
    scale_factor: float = DEFAULT_SCALE_FACTOR,
) -> GaussianCloud:
    """``count`` disc-shaped gaussians sampled area-uniformly on ``mesh``, coloured from its visuals.

    Deterministic for a given ``seed``. Colour comes from the texture through the UVs (bilinear,
    times a PBR ``baseColorFactor``), else vertex colours (barycentric), else face colours, else the
    material's colour, else neutral grey. ``thickness`` is the normal sigma over the in-plane sigma.
    """
    _check_arguments(count, opacity, thickness, scale_factor)
    area_faces = _checked_face_areas(mesh)
    positions, face_index, barycentric = trimesh.sample.sample_surface(
        mesh, count, face_weight=area_faces, seed=seed, return_barycentric=True
    )
    rotations = _disc_rotations(mesh, face_index)
    sigma = scale_factor * np.sqrt(area_faces.sum() / count)
    log_scales = np.log(np.array([sigma, sigma, sigma * thickness], dtype=np.float32))
    rgb = surface_colors(mesh, face_index, barycentric)
    return GaussianCloud(
        positions=positions,
        log_scales=np.broadcast_to(log_scales, (count, 3)),
        rotations=rotations,
        opacity_logits=np.full(count, np.log(opacity / (1.0 - opacity)), dtype=np.float32),
        sh_dc=(rgb - np.float32(0.5)) / np.float32(SH_C0),
    )


def surface_colors(mesh: trimesh.Trimesh, face_index: I64, barycentric: F64) -> F32:
    """RGB in [0, 1] (float32, shape (n, 3)) at points given as faces and barycentric coordinates."""
    visual = mesh.visual
    if isinstance(visual, TextureVisuals):
        return _texture_colors(mesh, visual, face_index, barycentric)
    if isinstance(visual, ColorVisuals) and visual.kind == "vertex":
        return _vertex_colors(mesh, visual.vertex_colors, face_index, barycentric)
    if isinstance(visual, ColorVisuals) and visual.kind == "face":
        return (visual.face_colors[face_index, :3] / np.float32(255.0)).astype(np.float32)
    return np.full((len(face_index), 3), NEUTRAL_GREY, dtype=np.float32)


def srgb_to_linear(srgb: npt.NDArray[np.floating]) -> F32:
    """The sRGB transfer function inverted (values in [0, 1])."""
    c = np.asarray(srgb, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: npt.NDArray[np.floating]) -> F32:
    """The sRGB transfer function (values clipped to [0, 1])."""
    c = np.clip(np.asarray(linear, dtype=np.float32), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


def _check_arguments(count: int, opacity: float, thickness: float, scale_factor: float) -> None:
    if isinstance(count, bool) or not isinstance(count, numbers.Integral):
        raise SplatError(f"count must be an integer, got {count!r}")
    if not 1 <= count <= PYSPZ_MAX_GAUSSIANS:
        raise SplatError(f"count must be between 1 and {PYSPZ_MAX_GAUSSIANS:,} (pyspz's limit), got {count:,}")
    if not 0.0 < opacity < 1.0:
        raise SplatError(f"opacity must lie strictly between 0 and 1, got {opacity}")
    if not (thickness > 0.0 and np.isfinite(thickness)):
        raise SplatError(f"thickness must be a positive number, got {thickness}")
    if not (scale_factor > 0.0 and np.isfinite(scale_factor)):
        raise SplatError(f"scale_factor must be a positive number, got {scale_factor}")


def _checked_face_areas(mesh: trimesh.Trimesh) -> F64:
    """Face areas of a usable mesh; SplatError for anything that cannot be sampled."""
    if not isinstance(mesh, trimesh.Trimesh):
        raise SplatError(
            f"expected a trimesh.Trimesh, got {type(mesh).__name__} "
            "(load scenes with trimesh.load(path, force='mesh') or scene.to_geometry())"
        )
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise SplatError("the mesh is empty: it has no faces to sample")
    if not np.isfinite(mesh.vertices).all():
        raise SplatError("the mesh has non-finite (NaN or inf) vertex coordinates")
    areas = mesh.area_faces
    total = areas.sum()
    if not total > 0.0:
        raise SplatError("the mesh has zero surface area: every face is degenerate")
    if not np.isfinite(total):
        raise SplatError("the mesh's surface area overflows: its coordinates are too large")
    return areas


def _interpolate(values: FloatArray, faces: I64, face_index: I64, barycentric: FloatArray) -> FloatArray:
    """Per-vertex ``values`` interpolated at barycentric points of ``faces[face_index]``."""
    corners = faces[face_index]
    b = barycentric
    return (
        values[corners[:, 0]] * b[:, 0:1]
        + values[corners[:, 1]] * b[:, 1:2]
        + values[corners[:, 2]] * b[:, 2:3]
    )


def _disc_rotations(mesh: trimesh.Trimesh, face_index: I64) -> F32:
    """Each sample's disc rotation, solved once per face when there are fewer faces than samples."""
    if len(mesh.faces) <= len(face_index):
        return _face_rotations(mesh.triangles_cross)[face_index]
    return _face_rotations(mesh.triangles_cross[face_index])


def _face_rotations(face_cross: F64) -> F32:
    """Quaternions (w first) whose local z is the face normal, x/y a deterministic in-plane frame.

    Degenerate faces (never sampled) get the +z normal rather than NaN.
    """
    length = np.linalg.norm(face_cross, axis=1, keepdims=True)
    normal = np.where(length > 0, face_cross / np.where(length > 0, length, 1.0), [0.0, 0.0, 1.0])
    near_reference = np.abs(normal @ _REFERENCE_AXIS) > 0.9
    reference = np.where(near_reference[:, None], _FALLBACK_AXIS, _REFERENCE_AXIS)
    tangent = np.cross(normal, reference)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    bitangent = np.cross(normal, tangent)
    return quaternions_from_frames(tangent, bitangent, normal)


def quaternions_from_frames(x_axis: F64, y_axis: F64, z_axis: F64) -> F32:
    """Unit quaternions (w first, w >= 0) of rotations whose matrix columns are the given axes.

    Vectorised Shepperd method: each row is solved from its largest quaternion component.
    """
    m00, m11, m22 = x_axis[:, 0], y_axis[:, 1], z_axis[:, 2]
    m01, m02 = y_axis[:, 0], z_axis[:, 0]
    m10, m12 = x_axis[:, 1], z_axis[:, 1]
    m20, m21 = x_axis[:, 2], y_axis[:, 2]
    squares = 0.25 * np.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], axis=1
    )
    # Four times each component times the largest one: rows are (w, x, y, z) for each pivot.
    products = np.stack(
        [
            np.stack([4 * squares[:, 0], m21 - m12, m02 - m20, m10 - m01], axis=1),
            np.stack([m21 - m12, 4 * squares[:, 1], m01 + m10, m02 + m20], axis=1),
            np.stack([m02 - m20, m01 + m10, 4 * squares[:, 2], m12 + m21], axis=1),
            np.stack([m10 - m01, m02 + m20, m12 + m21, 4 * squares[:, 3]], axis=1),
        ],
        axis=1,
    )
    pivot = np.argmax(squares, axis=1)
    rows = np.arange(len(pivot))
    q = products[rows, pivot] / (4 * np.sqrt(squares[rows, pivot]))[:, None]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.astype(np.float32)


def _vertex_colors(mesh: trimesh.Trimesh, colors: npt.ArrayLike, face_index: I64, barycentric: F64) -> F32:
    rgba = to_rgba(colors).astype(np.float32) / np.float32(255.0)
    return _interpolate(rgba[:, :3], mesh.faces, face_index, barycentric.astype(np.float32))


def _texture_colors(mesh: trimesh.Trimesh, visual: TextureVisuals, face_index: I64, barycentric: F64) -> F32:
    """Colours of a TextureVisuals: texture x base colour factor, else COLOR_0, else the material colour."""
    material = visual.material
    image, factor = _base_color(material)
    uv = visual.uv
    if image is not None and uv is not None and len(uv) == len(mesh.vertices):
        uv_points = _interpolate(uv, mesh.faces, face_index, barycentric)
        rgb = uv_to_interpolated_color(uv_points, image)[:, :3].astype(np.float32) / np.float32(255.0)
        if factor is None or np.allclose(factor, 1.0):
            return rgb
        return linear_to_srgb(srgb_to_linear(rgb) * factor)
    vertex_colors = visual.vertex_attributes.get("color")
    if vertex_colors is not None and len(vertex_colors) == len(mesh.vertices):
        return _vertex_colors(mesh, vertex_colors, face_index, barycentric)
    return np.broadcast_to(_material_color(material, factor), (len(face_index), 3)).astype(np.float32)


def _base_color(material: object) -> tuple[Image.Image | None, F32 | None]:
    """The material's colour texture (a PIL image or None) and its linear RGB factor (or None)."""
    if isinstance(material, PBRMaterial):
        factor = material.baseColorFactor
        linear = None if factor is None else np.asarray(factor[:3], np.float32) / np.float32(255.0)
        return material.baseColorTexture, linear
    if isinstance(material, SimpleMaterial):
        return material.image, None
    return None, None


def _material_color(material: object, pbr_factor: F32 | None) -> F32:
    """A flat colour for an untextured material: PBR base colour (linear, so encoded) or diffuse."""
    if pbr_factor is not None:
        return linear_to_srgb(pbr_factor)
    if isinstance(material, SimpleMaterial) and material.diffuse is not None:
        return np.asarray(material.diffuse[:3], np.float32) / np.float32(255.0)
    return np.full(3, NEUTRAL_GREY, dtype=np.float32)
