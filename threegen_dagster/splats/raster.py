"""The rasteriser behind ``render.py`` (3DGS-style EWA splatting in vectorised numpy). Pure numpy.

Rendering
---------
Each gaussian's covariance ``R S S^T R^T`` is projected with the perspective
Jacobian (EWA, x/z clamped to 1.3x the FOV as 3DGS does), 0.3 px^2 is added to the
screen covariance's diagonal, and gaussians behind the near plane, off-screen or with
opacity below 1/255 are culled. Gaussians are sorted front to back once; each one
covers the pixels inside its ellipse where ``alpha = opacity * exp(-d^T Sigma^-1 d / 2)``
is at least 1/255, truncated at 3 sigma (enumerated as exact per-row spans, so no
bounding-box pixels are wasted); alpha is clamped at 0.99. Fragments are stably
sorted by pixel (a radix sort on uint16 keys: the image is processed in horizontal
bands of at most 65536 pixels), transmittance comes from a segmented cumulative sum
of ``log(1 - alpha)``, and colours are accumulated with a sparse matrix product.
Work goes in depth-ordered chunks of bounded fragment count, which bounds memory and
gives early termination: rows of a gaussian that fall only on pixels whose
transmittance is already below 1e-4 are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt
import scipy.sparse

from threegen_dagster.splats.camera import Camera
from threegen_dagster.splats.cloud import GaussianCloud

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
Color = tuple[float, float, float]

WHITE: Color = (1.0, 1.0, 1.0)
LOW_PASS = 0.3
"""Screen-space variance (px^2) added to every projected gaussian, as in 3DGS."""
MIN_ALPHA = 1.0 / 255.0
MAX_ALPHA = 0.99
MAX_SIGMA = 3.0
"""Footprints are truncated at this many standard deviations."""
T_MIN = 1e-4
"""Pixels whose transmittance drops below this take no more fragments."""
BAND_PIXELS = 1 << 16
"""Pixels per band: fragment keys must fit in uint16 for numpy's radix sort."""
CHUNK_FRAGMENTS = 1 << 17
"""Rough fragments per depth-ordered chunk (bounds memory; smaller = earlier termination)."""
PROJECT_BLOCK = 1 << 17
"""Gaussians projected at a time (bounds the projection's temporaries)."""


# --------------------------------------------------------------------------- per-cloud data


@dataclass(frozen=True, eq=False)
class Prepared:
    """View-independent per-gaussian data (non-finite and transparent gaussians removed)."""

    positions: F32
    cov_factor: F32
    """(N, 3, 3) M = R S, so the 3D covariance is M M^T (projected in float64)."""
    log_opacity: F64
    cutoff: F64
    """Squared Mahalanobis radius of each footprint: min(9, 2 ln(255 opacity)), where alpha = 1/255."""
    colors: F32


def _rotation_matrices(q: F32) -> F32:
    """(N, 3, 3) rotation matrices of unit quaternions (N, 4), w first."""
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    rot = np.empty((len(q), 3, 3), np.float32)
    rot[:, 0, 0] = 1 - 2 * (y * y + z * z)
    rot[:, 0, 1] = 2 * (x * y - w * z)
    rot[:, 0, 2] = 2 * (x * z + w * y)
    rot[:, 1, 0] = 2 * (x * y + w * z)
    rot[:, 1, 1] = 1 - 2 * (x * x + z * z)
    rot[:, 1, 2] = 2 * (y * z - w * x)
    rot[:, 2, 0] = 2 * (x * z - w * y)
    rot[:, 2, 1] = 2 * (y * z + w * x)
    rot[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return rot


def _unit_quaternions(q: F32) -> F32:
    """Quaternions scaled to unit length (float32; zero ones stay zero, which ``_rotation_matrices`` maps to I)."""
    norm = np.sqrt(np.einsum("ij,ij->i", q, q))
    return q / np.where(norm > 0, norm, 1.0)[:, None]


def prepare(cloud: GaussianCloud) -> Prepared:
    """Per-gaussian data shared by every view: covariance factors, opacities, footprint cutoffs, colours."""
    opacity = cloud.opacities
    keep = (opacity >= MIN_ALPHA) & np.isfinite(cloud.positions).all(1) & np.isfinite(cloud.log_scales).all(1)
    keep &= np.isfinite(cloud.rotations).all(1) & np.isfinite(cloud.sh_dc).all(1)
    if not keep.all():
        cloud = cloud.subset(keep)
        opacity = opacity[keep]
    factor = _rotation_matrices(_unit_quaternions(cloud.rotations))
    factor *= np.exp(np.minimum(cloud.log_scales, 30.0))[:, None, :]
    log_opacity = np.log(opacity.astype(np.float64))
    cutoff = np.minimum(MAX_SIGMA**2, 2.0 * (log_opacity + math.log(255.0)))
    return Prepared(cloud.positions, factor, log_opacity, cutoff, cloud.colors)


# --------------------------------------------------------------------------- projection


@dataclass(frozen=True, eq=False)
class _Splats:
    """Screen-space footprints of one view, sorted front to back.

    A footprint is the ellipse ``a dx^2 + 2 b dx dy + c dy^2 <= cutoff`` around (u, v), with
    (a, b, c) the inverse screen covariance. Row by row (offset dy from v) it spans the columns
    ``u + slope dy +- sqrt(reach2 - shrink dy^2)``, and there the exponent is
    ``a (x - row centre)^2 + inv_yy dy^2``.
    """

    u: F64
    v: F64
    half_w: F64
    half_h: F64
    a: F64
    slope: F64
    reach2: F64
    shrink: F64
    inv_yy: F64
    log_opacity: F64
    colors: F32

    def __len__(self) -> int:
        return len(self.u)

    def take(self, idx: npt.NDArray[np.intp]) -> _Splats:
        return _Splats(*(getattr(self, f.name)[idx] for f in fields(self)))


def _screen_covariance(cam_pts: F64, factor: F64, camera: Camera, focal: float, width: int, height: int) -> F64:
    """(N, 2, 3) J W M: the screen covariance (EWA) is its product with its own transpose."""
    inv_z = 1.0 / cam_pts[:, 2]
    lim_x = 1.3 * (width / 2.0) / focal
    lim_y = 1.3 * (height / 2.0) / focal
    tx = np.clip(cam_pts[:, 0] * inv_z, -lim_x, lim_x)
    ty = np.clip(cam_pts[:, 1] * inv_z, -lim_y, lim_y)
    rot = camera.rotation
    jw = np.empty((len(inv_z), 2, 3))
    jw[:, 0] = rot[0] - tx[:, None] * rot[2]
    jw[:, 1] = rot[1] - ty[:, None] * rot[2]
    jw *= (focal * inv_z)[:, None, None]
    return jw @ factor


def _project_block(
    prep: Prepared, block: slice, camera: Camera, width: int, height: int, near: float
) -> tuple[F64, dict[str, npt.NDArray[np.floating]]]:
    """Depths and footprint fields (``_Splats`` keywords) of the visible gaussians of one block, unsorted."""
    cam_pts = camera.to_camera(prep.positions[block])
    cutoff = prep.cutoff[block]
    z = cam_pts[:, 2]
    focal = camera.focal(height)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        u = focal * cam_pts[:, 0] / z + width / 2.0
        v = focal * cam_pts[:, 1] / z + height / 2.0
        jwm = _screen_covariance(cam_pts, prep.cov_factor[block].astype(np.float64), camera, focal, width, height)
        xx = np.einsum("nk,nk->n", jwm[:, 0], jwm[:, 0]) + LOW_PASS
        xy = np.einsum("nk,nk->n", jwm[:, 0], jwm[:, 1])
        yy = np.einsum("nk,nk->n", jwm[:, 1], jwm[:, 1]) + LOW_PASS
        det = xx * yy - xy * xy
        half_w = np.sqrt(cutoff * xx)
        half_h = np.sqrt(cutoff * yy)
        keep = (z > near) & (det > 0) & np.isfinite(det) & (cutoff > 0)
        keep &= (u + half_w > 0) & (u - half_w < width) & (v + half_h > 0) & (v - half_h < height)
    idx = np.flatnonzero(keep)
    xx, xy, yy, det = xx[idx], xy[idx], yy[idx], det[idx]
    return z[idx], dict(
        u=u[idx],
        v=v[idx],
        half_w=half_w[idx],
        half_h=half_h[idx],
        a=yy / det,
        slope=xy / yy,
        reach2=cutoff[idx] * det / yy,
        shrink=det / (yy * yy),
        inv_yy=1.0 / yy,
        log_opacity=prep.log_opacity[block][idx],
        colors=prep.colors[block][idx],
    )


def _project(prep: Prepared, camera: Camera, width: int, height: int, near: float) -> _Splats:
    """Project, cull and depth-sort the gaussians for one view (in blocks, bounding temporaries)."""
    n = len(prep.positions)
    parts = [
        _project_block(prep, slice(i, i + PROJECT_BLOCK), camera, width, height, near)
        for i in range(0, max(n, 1), PROJECT_BLOCK)
    ]
    order = np.argsort(np.concatenate([depth for depth, _ in parts]))
    columns = [block for _, block in parts]
    del parts
    # Gather field by field, dropping each block's copy as we go (peak: one extra field).
    return _Splats(*(np.concatenate([c.pop(f.name) for c in columns])[order] for f in fields(_Splats)))


# --------------------------------------------------------------------------- rasterisation


@dataclass(frozen=True, eq=False)
class _Rows:
    """Pixel runs, one per gaussian per image row, in depth order.

    The t-th pixel of a run (t = 0 .. length - 1) has key ``first_key + t`` (band-local pixel
    index) and ``alpha = exp(k0 + t (k1 + k2 t))``.
    """

    gaussian: npt.NDArray[np.intp]
    first_key: npt.NDArray[np.uint16]
    length: npt.NDArray[np.intp]
    k0: F32
    k1: F32
    k2: F32


def _rows(s: _Splats, width: int, y0: int, y1: int, live: npt.NDArray[np.int32] | None) -> _Rows:
    """Runs of the splats in band [y0, y1); runs over already-terminated pixels only get length 0."""
    top = np.clip(np.ceil(s.v - s.half_h - 0.5), y0, y1).astype(np.intp)
    bottom = np.clip(np.floor(s.v + s.half_h - 0.5), y0 - 1, y1 - 1).astype(np.intp)
    n_rows = np.maximum(bottom - top + 1, 0)
    gauss = np.repeat(np.arange(len(s)), n_rows)
    row = np.arange(len(gauss)) + np.repeat(top - (np.cumsum(n_rows) - n_rows), n_rows)
    dy = row + 0.5 - np.take(s.v, gauss)
    centre = np.take(s.u, gauss) - 0.5 + np.take(s.slope, gauss) * dy
    half2 = np.take(s.reach2, gauss) - np.take(s.shrink, gauss) * dy * dy
    half = np.sqrt(np.maximum(half2, 0.0))
    left = np.clip(np.ceil(centre - half), 0, width).astype(np.intp)
    right = np.clip(np.floor(centre + half), -1, width - 1).astype(np.intp)
    length = np.where(half2 >= 0, np.maximum(right - left + 1, 0), 0)
    first_key = (row - y0) * width + left
    if live is not None:
        # live[i]: open pixels before band pixel i; drop runs lying wholly on terminated pixels.
        length[live[first_key + length] == live[first_key]] = 0
    a = np.take(s.a, gauss)
    offset = left - centre  # x - row centre at t = 0
    k0 = np.take(s.log_opacity, gauss) - 0.5 * (a * offset * offset + np.take(s.inv_yy, gauss) * dy * dy)
    return _Rows(
        gauss,
        first_key.astype(np.uint16),
        length,
        k0.astype(np.float32),
        (-a * offset).astype(np.float32),
        (-0.5 * a).astype(np.float32),
    )


@dataclass
class _Band:
    """Accumulators for one horizontal band of the image."""

    log_t: F64
    """(P,) log transmittance so far."""
    rgb: F32
    """(P, 3) premultiplied colour so far."""

    def open_pixels(self) -> npt.NDArray[np.bool_] | None:
        """Mask of pixels still taking fragments (transmittance >= T_MIN), or None when all are."""
        open_px = self.log_t >= math.log(T_MIN)
        return None if open_px.all() else open_px


def _open_prefix(open_px: npt.NDArray[np.bool_]) -> npt.NDArray[np.int32]:
    """Exclusive prefix count of open pixels: pixels [i, j) hold prefix[j] - prefix[i] open ones."""
    out = np.zeros(len(open_px) + 1, np.int32)
    np.cumsum(open_px, out=out[1:])
    return out


def _fragments(
    rows: _Rows, open_px: npt.NDArray[np.bool_] | None
) -> tuple[npt.NDArray[np.intp], F32, npt.NDArray[np.uint16]]:
    """Expand runs into fragments in depth order: (run index, alpha, band-local pixel key)."""
    n = int(rows.length.sum())
    run = np.repeat(np.arange(len(rows.length)), rows.length)
    t_int = np.arange(n, dtype=np.int32) - np.take((np.cumsum(rows.length) - rows.length).astype(np.int32), run)
    key = np.take(rows.first_key, run) + t_int.astype(np.uint16)
    if open_px is not None:
        live = np.flatnonzero(np.take(open_px, key))
        run, t_int, key = np.take(run, live), np.take(t_int, live), np.take(key, live)
    t = t_int.astype(np.float32)
    alpha = np.exp(np.take(rows.k0, run) + t * (np.take(rows.k1, run) + np.take(rows.k2, run) * t))
    np.minimum(alpha, MAX_ALPHA, out=alpha)
    return run, alpha, key


def _composite(rows: _Rows, colors: F32, band: _Band, open_px: npt.NDArray[np.bool_] | None) -> None:
    """Alpha-composite a depth-ordered batch of runs into the band, front to back."""
    run, alpha, key = _fragments(rows, open_px)
    if len(key) == 0:
        return
    counts = np.bincount(key, minlength=len(band.log_t))
    order = np.argsort(key, kind="stable")  # radix sort; stable keeps depth order within a pixel
    run, alpha = np.take(run, order), np.take(alpha, order)
    # Running sum of log(1 - alpha) over the pixel-sorted fragments (float64: it grows large).
    excl = np.empty(len(alpha) + 1)
    excl[0] = 0.0
    np.cumsum(np.log1p(-alpha), out=excl[1:])
    ends = np.cumsum(counts)
    before = excl[ends - counts]
    # Transmittance in front of each fragment: carried value times its pixel's earlier fragments.
    log_t = np.repeat(band.log_t - before, counts) + excl[:-1]
    weight = alpha * np.exp(log_t.astype(np.float32))
    band.log_t += excl[ends] - before
    indptr = np.concatenate(([0], ends))
    frag = scipy.sparse.csr_matrix((weight, run, indptr), shape=(len(band.log_t), len(rows.length)))
    band.rgb += frag @ np.take(colors, rows.gaussian, axis=0)


def _chunks(s: _Splats, y0: int, y1: int, width: int, budget: int) -> list[npt.NDArray[np.intp]]:
    """Depth-ordered groups of the splats touching band [y0, y1), each of about ``budget`` fragments."""
    top = np.maximum(s.v - s.half_h, y0)
    bottom = np.minimum(s.v + s.half_h, y1)
    hits = np.flatnonzero(bottom > top)
    if len(hits) == 0:
        return []
    w = np.minimum(s.u[hits] + s.half_w[hits], width) - np.maximum(s.u[hits] - s.half_w[hits], 0)
    area = (math.pi / 4.0) * np.maximum(w, 1.0) * np.maximum(bottom[hits] - top[hits], 1.0) + 1.0
    group = (np.cumsum(area) // budget).astype(np.int64)
    cuts = np.flatnonzero(np.diff(group)) + 1
    return np.split(hits, cuts)


def _rasterize(s: _Splats, width: int, height: int, budget: int) -> tuple[F32, F64]:
    """Premultiplied colour (H*W, 3) and log transmittance (H*W,) of depth-sorted splats."""
    rgb = np.zeros((height * width, 3), np.float32)
    log_t = np.zeros(height * width)
    band_rows = max(1, BAND_PIXELS // width)
    for y0 in range(0, height, band_rows):
        y1 = min(height, y0 + band_rows)
        band = _Band(log_t[y0 * width : y1 * width], rgb[y0 * width : y1 * width])
        for idx in _chunks(s, y0, y1, width, budget):
            open_px = band.open_pixels()
            if open_px is not None and not open_px.any():
                break
            chunk = s.take(idx)
            live = None if open_px is None else _open_prefix(open_px)
            _composite(_rows(chunk, width, y0, y1, live), chunk.colors, band, open_px)
    return rgb, log_t


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if width > BAND_PIXELS:
        raise ValueError(f"image width {width} exceeds {BAND_PIXELS}")


def render_prepared(
    prep: Prepared, camera: Camera, width: int, height: int, background: Color, near: float, budget: int
) -> F32:
    """(H, W, 4) RGB over ``background`` plus coverage, from prepared gaussians."""
    _check_size(width, height)
    splats = _project(prep, camera, width, height, near)
    rgb, log_t = _rasterize(splats, width, height, budget)
    trans = np.exp(log_t).astype(np.float32)
    out = np.empty((height * width, 4), np.float32)
    out[:, :3] = rgb + trans[:, None] * np.asarray(background, np.float32)
    out[:, 3] = 1.0 - trans
    return np.clip(out, 0.0, 1.0).reshape(height, width, 4)
