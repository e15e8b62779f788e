"""The embedded refiner (BPT's stand-in): quadric decimation plus light Taubin smoothing.

Decimation is trimesh's ``simplify_quadric_decimation`` (fast-simplification); smoothing
is trimesh's Taubin filter, which does not shrink the mesh the way plain Laplacian does.
Vertex colours survive by taking each new vertex's colour from the nearest original one.
"""

from __future__ import annotations

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from .gpu import BackendError
from .stages import Refine


class RefineError(ValueError):
    """A mesh that cannot be refined (empty, or no faces left)."""


def refine(mesh: trimesh.Trimesh, target_faces: int = 20_000, smoothing_iterations: int = 5) -> trimesh.Trimesh:
    """A lighter, smoother copy of ``mesh`` with its vertex colours."""
    if len(mesh.faces) == 0:
        raise RefineError("the mesh has no faces to refine")
    if target_faces < 4:
        raise RefineError(f"target_faces must be at least 4, not {target_faces}")
    colours = _vertex_colours(mesh)
    out = mesh.copy()
    if len(out.faces) > target_faces:
        out = out.simplify_quadric_decimation(face_count=target_faces)
    if smoothing_iterations > 0:
        trimesh.smoothing.filter_taubin(out, iterations=smoothing_iterations)
    if len(out.faces) == 0:
        raise RefineError("decimation left no faces")
    _, nearest = cKDTree(mesh.vertices).query(out.vertices)
    out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=colours[nearest])
    return out


def _vertex_colours(mesh: trimesh.Trimesh) -> np.ndarray:
    """Per-vertex RGBA (uint8), whatever kind of visual the mesh carries."""
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        visual = visual.to_color()
    colours = np.asarray(visual.vertex_colors, dtype=np.uint8)
    if colours.shape != (len(mesh.vertices), 4):
        colours = np.full((len(mesh.vertices), 4), (180, 180, 180, 255), np.uint8)
    return colours


class Decimate(Refine):
    """The ``refine`` backend ``decimate``."""

    name, model = "decimate", "quadric decimation + Taubin smoothing"

    def __init__(self, target_faces: int = 20_000, smoothing_iterations: int = 5) -> None:
        if target_faces < 4 or smoothing_iterations < 0:
            raise BackendError(f"decimate target_faces {target_faces} must be at least 4 and "
                               f"smoothing_iterations {smoothing_iterations} at least 0")
        self.target_faces, self.smoothing_iterations = target_faces, smoothing_iterations

    def __call__(self, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        return refine(mesh, self.target_faces, self.smoothing_iterations)
