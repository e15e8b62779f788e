"""A CPU gaussian-splat renderer: one view, the validator's ring of views, and previews. Pure numpy.

Cameras (``camera.py``): world +Y up, orbiting cameras, and the SN17 validator's ring of 16 views
(elevation 15 degrees, radius 2.5, vertical FOV 49.1 degrees, white background, DC colour only).
Rasterisation (``raster.py``): 3DGS-style EWA splatting, front to back, with early termination.
Every public name of both is importable from here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import numpy as np
import numpy.typing as npt
from PIL import Image

from threegen_dagster.splats.camera import (
    VALIDATOR_ELEVATION_DEG,
    VALIDATOR_FOV_Y_DEG,
    VALIDATOR_RADIUS,
    VALIDATOR_RESOLUTION,
    VALIDATOR_VIEWS,
    Camera,
    look_at,
    orbit_camera,
    validator_cameras,
)
from threegen_dagster.splats.cloud import GaussianCloud
from threegen_dagster.splats.raster import CHUNK_FRAGMENTS, WHITE, Color, F32, prepare, render_prepared

__all__ = [
    "VALIDATOR_ELEVATION_DEG", "VALIDATOR_FOV_Y_DEG", "VALIDATOR_RADIUS", "VALIDATOR_RESOLUTION", "VALIDATOR_VIEWS",
    "WHITE", "Camera", "Color", "look_at", "orbit_camera", "preview_grid", "preview_grid_png", "render",
    "render_rgba", "render_views", "to_uint8", "validator_cameras",
]


def render_rgba(
    cloud: GaussianCloud,
    camera: Camera,
    width: int,
    height: int,
    background: Color = WHITE,
    near: float = 0.01,
    chunk_fragments: int = CHUNK_FRAGMENTS,
) -> F32:
    """(H, W, 4) float32 in [0, 1]: RGB composited over ``background``, and coverage (1 - transmittance)."""
    return render_prepared(prepare(cloud), camera, width, height, background, near, chunk_fragments)


def render(
    cloud: GaussianCloud,
    camera: Camera,
    width: int,
    height: int,
    background: Color = WHITE,
    return_alpha: bool = False,
) -> F32:
    """(H, W, 3) float32 RGB in [0, 1]; (H, W, 4) with coverage as the 4th channel if ``return_alpha``."""
    rgba = render_rgba(cloud, camera, width, height, background)
    return rgba if return_alpha else np.ascontiguousarray(rgba[..., :3])


def render_views(
    cloud: GaussianCloud,
    cameras: Sequence[Camera],
    width: int,
    height: int,
    background: Color = WHITE,
    return_alpha: bool = False,
    workers: int | None = None,
) -> list[F32]:
    """Render one image per camera (threads over views; ``workers`` defaults to the CPU count)."""
    prep = prepare(cloud)

    def one(camera: Camera) -> F32:
        rgba = render_prepared(prep, camera, width, height, background, 0.01, CHUNK_FRAGMENTS)
        return rgba if return_alpha else np.ascontiguousarray(rgba[..., :3])

    workers = min(len(cameras), workers or os.cpu_count() or 1)
    if workers <= 1:
        return [one(c) for c in cameras]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, cameras))


def to_uint8(image: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """A float image in [0, 1] as uint8 (rounded)."""
    return (np.clip(np.asarray(image, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def preview_grid(images: Sequence[npt.ArrayLike], cols: int) -> Image.Image:
    """Tile equally sized (H, W, 3) float images row-major into a ``cols``-wide RGB grid."""
    tiles = [to_uint8(im)[..., :3] for im in images]
    if not tiles:
        raise ValueError("preview_grid needs at least one image")
    h, w = tiles[0].shape[:2]
    if any(t.shape[:2] != (h, w) for t in tiles):
        raise ValueError("preview_grid images must share one size")
    rows = -(-len(tiles) // cols)
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = tile
    return Image.fromarray(grid, "RGB")


def preview_grid_png(cloud: GaussianCloud, size: int = 128, grid: int = 2, background: Color = WHITE) -> bytes:
    """PNG bytes of a grid x grid preview of the validator ring (grid 2: 4 views, 4: 16), ``size`` px tiles."""
    if grid not in (2, 4):
        raise ValueError(f"grid must be 2 or 4, got {grid}")
    images = render_views(cloud, validator_cameras(grid * grid), size, size, background)
    buf = BytesIO()
    preview_grid(images, grid).save(buf, format="PNG", optimize=True)
    return buf.getvalue()
