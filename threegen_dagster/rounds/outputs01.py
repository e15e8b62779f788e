"""Comp 0 (gaussian splats) and comp 1 (meshes): the output file made from the pipeline's splat or mesh,
and the check of each against that competition's published rules (SN17-NOW.md section 1). Neither
competition published rule codes; the codes here are this project's, one per rule. No Dagster imports.

- comp 0: one PLY per prompt, at most ``max_bytes``; the renderer reads only position, opacity, scale,
  rotation and ``f_dc_0..2`` (so those must be there, finite); Y-up.
- comp 1: one GLB, at most ``max_bytes``, that trimesh loads as exactly one mesh whose bounds lie within
  +-0.6; Y-up.

Y-up cannot be read off the data (a splat or a mesh has no "up" of its own): the check holds the frame
the output was written in (the pipeline's ``THREEGEN_FRAME`` for splats; glTF is Y-up by definition and
trimesh writes the mesh as it is) to Y-up, and a GLB must not turn its mesh with a node rotation.
"""

from __future__ import annotations

import io

import numpy as np
import trimesh

from ..splats import GaussianCloud, read_ply, write_ply
from ..splats.ply import PlyError, _parse_header
from .rules import CheckReport, Failure, report

MAX_BYTES = 200 * 2**20  # comp 0 and comp 1: "<=~200 MB"
COMP1_BOUND = 0.6
COMP1_HALF = 0.5  # the mesh written for comp 1 fills +-0.5, inside the +-0.6 rule with room to spare
RENDERER_FIELDS = ("x", "y", "z", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
                   "f_dc_0", "f_dc_1", "f_dc_2")
STAGE = "output_check"


def comp0_ply(cloud: GaussianCloud) -> bytes:
    """The splat as the binary PLY comp 0 submitted (3DGS fields, SH degree 0 and any higher bands)."""
    return write_ply(cloud)


def check_comp0(data: bytes, frame: str, max_bytes: int = MAX_BYTES) -> CheckReport:
    if len(data) > max_bytes:
        return report([Failure(STAGE, "PLY_SIZE_EXCEEDED", f"{len(data):,} bytes (limit {max_bytes:,})")])
    failures = []
    try:
        _, elements, _ = _parse_header(data)
        vertex = next((e for e in elements if e.name == "vertex"), None)
        names = {name for name, _ in vertex.properties} if vertex else set()
        missing = [f for f in RENDERER_FIELDS if f not in names]
        if missing:
            return report([Failure(STAGE, "PLY_FIELDS_MISSING", f"the vertex element lacks {', '.join(missing)} "
                                   "(the renderer reads position, opacity, scale, rotation, f_dc_0..2)")])
        cloud = read_ply(data)
    except PlyError as exc:
        return report([Failure(STAGE, "PLY_UNREADABLE", str(exc))])
    if len(cloud) == 0:
        failures.append(Failure(STAGE, "PLY_EMPTY", "no gaussians"))
    arrays = {"position": cloud.positions, "opacity": cloud.opacity_logits, "scale": cloud.log_scales,
              "rotation": cloud.rotations, "f_dc": cloud.sh_dc}
    bad = [name for name, values in arrays.items() if not np.isfinite(values).all()]
    if bad:
        failures.append(Failure(STAGE, "PLY_NOT_FINITE", f"NaN or infinite values in {', '.join(bad)}"))
    if frame != "y_up":
        failures.append(Failure(STAGE, "NOT_Y_UP", f"the splat was written in the {frame!r} frame "
                                "(THREEGEN_FRAME); comp 0 renders Y-up"))
    metrics = {"gaussians": len(cloud), "bytes": len(data), "sh_degree": cloud.sh_degree}
    if len(cloud) and not bad:
        metrics["bounds"] = [cloud.positions.min(axis=0).round(4).tolist(), cloud.positions.max(axis=0).round(4).tolist()]
    return report(failures, metrics)


def comp1_glb(mesh: trimesh.Trimesh, half: float = COMP1_HALF) -> bytes:
    """The mesh centred on its bounding box and scaled so its longest side spans 2 x ``half``, as a GLB
    (vertex colours kept)."""
    fitted = mesh.copy()
    low, high = fitted.bounds
    extent = float((high - low).max())
    if not np.isfinite(extent) or extent <= 0:
        raise ValueError("the mesh has no extent: nothing to write")
    fitted.apply_translation(-(low + high) / 2)
    fitted.apply_scale(2 * half / extent)
    return fitted.export(file_type="glb")


def check_comp1(data: bytes, frame: str = "y_up", max_bytes: int = MAX_BYTES,
                bound: float = COMP1_BOUND) -> CheckReport:
    if len(data) > max_bytes:
        return report([Failure(STAGE, "GLB_SIZE_EXCEEDED", f"{len(data):,} bytes (limit {max_bytes:,})")])
    if data[:4] != b"glTF":
        return report([Failure(STAGE, "GLB_UNREADABLE", f"not a binary glTF file (it starts with {data[:8]!r})")])
    try:
        scene = trimesh.load(io.BytesIO(data), file_type="glb")
    except Exception as exc:  # noqa: BLE001 - trimesh raises many kinds for a bad file
        return report([Failure(STAGE, "GLB_UNREADABLE", f"trimesh cannot load it: {type(exc).__name__}: {exc}")])
    scene = scene if isinstance(scene, trimesh.Scene) else trimesh.Scene(scene)
    geometries = list(scene.geometry.values())
    meshes = [g for g in geometries if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    instances = len(scene.graph.nodes_geometry)
    if len(meshes) != 1 or len(geometries) != 1 or instances != 1:
        return report([Failure(STAGE, "NOT_ONE_MESH", f"it loads as {len(meshes)} mesh(es) with faces among "
                               f"{len(geometries)} geometries in {instances} node(s); exactly one mesh is required")])
    failures = []
    low, high = scene.bounds
    if (low < -bound).any() or (high > bound).any():
        failures.append(Failure(STAGE, "BOUNDS_EXCEEDED", f"bounds {np.round(low, 4).tolist()} .. "
                                f"{np.round(high, 4).tolist()} are not within +-{bound}"))
    transform, _ = scene.graph[scene.graph.nodes_geometry[0]]
    rotation = transform[:3, :3] / np.maximum(np.linalg.norm(transform[:3, :3], axis=0), 1e-12)
    if frame != "y_up" or not np.allclose(rotation, np.eye(3), atol=1e-6):
        failures.append(Failure(STAGE, "NOT_Y_UP", f"written in the {frame!r} frame" if frame != "y_up" else
                                "a node rotation turns the mesh away from the glTF Y-up frame it was written in"))
    return report(failures, {"vertices": len(meshes[0].vertices), "faces": len(meshes[0].faces), "bytes": len(data),
                             "bounds": [np.round(low, 4).tolist(), np.round(high, 4).tolist()]})
