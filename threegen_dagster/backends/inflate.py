"""The embedded image-to-mesh stand-in: silhouette inflation, no model.

The cut-out's silhouette becomes a height field (``h ~ sqrt(distance to the edge)``, the
profile that turns a disc into a sphere), mirrored front and back into a signed field
``h(x, y) - |z|`` whose zero level marching cubes turns into a closed surface. Vertex
colours come from the image; vertices on the rim take the colour of the nearest pixel
well inside the object, so no background colour bleeds into the seam.

Frame: +Y up, the image seen from +Z (the validator's azimuth-0 camera), +X to the right;
the longer image side spans 1 unit.
"""

from __future__ import annotations

import numpy as np
import trimesh
from PIL import Image
from scipy import ndimage
from skimage.measure import marching_cubes

from .gpu import BackendError
from .stages import ImageToMesh


class InflationError(ValueError):
    """A cut-out with no usable silhouette."""


def inflate(rgba: Image.Image, resolution: int = 128, depth_ratio: float = 0.6,
            smooth: float = 1.0) -> trimesh.Trimesh:
    """A closed, vertex-coloured mesh from an RGBA cut-out."""
    cut = np.asarray(rgba.convert("RGBA"))
    mask_full = cut[..., 3] >= 128
    if mask_full.sum() < 16:
        raise InflationError("the cut-out's silhouette is empty (fewer than 16 opaque pixels)")
    rows, cols = np.nonzero(mask_full.any(axis=1))[0], np.nonzero(mask_full.any(axis=0))[0]
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = Image.fromarray(cut[top:bottom, left:right], "RGBA")
    scale = resolution / max(crop.size)
    size = (max(2, round(crop.width * scale)), max(2, round(crop.height * scale)))
    small = np.asarray(crop.resize(size, Image.BILINEAR))
    mask = np.pad(small[..., 3] >= 128, 2)
    rgb = np.pad(small[..., :3], ((2, 2), (2, 2), (0, 0)), mode="edge")

    distance = ndimage.distance_transform_edt(mask)
    height = depth_ratio * np.sqrt(distance * distance.max())
    height = ndimage.gaussian_filter(height, smooth) * mask if smooth > 0 else height
    depth = int(np.ceil(height.max())) + 2
    z = np.arange(-depth, depth + 1, dtype=np.float32)
    field = height[:, :, None] - np.abs(z)[None, None, :]  # rows x cols x z; > 0 inside
    field[~mask] = -1.0
    try:
        verts, faces, _, _ = marching_cubes(field, level=0.0)
    except (ValueError, RuntimeError) as exc:
        raise InflationError(f"marching cubes found no surface in the silhouette: {exc}") from None

    row, col, k = verts[:, 0], verts[:, 1], verts[:, 2]
    span = max(mask.shape) - 4
    positions = np.stack([(col - mask.shape[1] / 2) / span, (mask.shape[0] / 2 - row) / span,
                          (k - depth) / span], axis=1)
    # an upscaled cut-out spreads its anti-aliased edge over ~scale pixels: step in that far
    colours = _rim_safe_colours(rgb, mask, row, col, margin=max(1, int(np.ceil(scale))))
    # marching cubes winds faces for (row, col, z); flipping the row axis to +Y mirrors them
    mesh = trimesh.Trimesh(positions, faces[:, ::-1], vertex_colors=colours, process=True)
    return mesh


def _rim_safe_colours(rgb: np.ndarray, mask: np.ndarray, row: np.ndarray, col: np.ndarray,
                      margin: int = 1) -> np.ndarray:
    """Each vertex's colour from the nearest pixel at least ``margin`` pixels inside the silhouette."""
    inner = ndimage.binary_erosion(mask, iterations=margin)
    if not inner.any():
        inner = mask
    _, (near_r, near_c) = ndimage.distance_transform_edt(~inner, return_indices=True)
    r = np.clip(np.rint(row).astype(int), 0, mask.shape[0] - 1)
    c = np.clip(np.rint(col).astype(int), 0, mask.shape[1] - 1)
    picked = rgb[near_r[r, c], near_c[r, c]]
    return np.concatenate([picked, np.full((len(picked), 1), 255, np.uint8)], axis=1)


class Inflate(ImageToMesh):
    """The ``image_to_mesh`` backend ``inflate``: ``resolution`` grid cells along the longer image side,
    ``depth_ratio`` the depth relative to the silhouette's thickness."""

    name, model = "inflate", "silhouette inflation + marching cubes"

    def __init__(self, resolution: int = 128, depth_ratio: float = 0.6) -> None:
        if not 16 <= resolution <= 512 or not depth_ratio > 0:
            raise BackendError(f"inflate resolution {resolution} must be within 16..512 and depth_ratio "
                               f"{depth_ratio} > 0")
        self.resolution, self.depth_ratio = resolution, depth_ratio

    def __call__(self, image: Image.Image, seed: int) -> trimesh.Trimesh:
        return inflate(image, self.resolution, self.depth_ratio)
