"""Validator-style normalisation and the validator's zero-score checks, run before submitting.

SN17's validator (legacy validation server) zero-scores a cloud with fewer than 7,000 gaussians,
with more than 80% of them nearly transparent, or with every rotation the identity. It then
subtracts the scalar mean of all coordinates and scales the cloud so its largest bounding-box side
is 1.5. :func:`normalize_for_validator` puts a cloud in that shape ourselves (per axis, after
removing floaters) so the validator's own normalisation changes nothing; :func:`check_for_validator`
reports, rule by rule, whether the validator would zero-score it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .cloud import GaussianCloud, SplatError
from .spz import MAX_DECODE_POINTS

F64 = npt.NDArray[np.float64]
Frame = Literal["y_up", "y_down"]

PYSPZ_MAX_GAUSSIANS = MAX_DECODE_POINTS
"""Most gaussians a validator's pyspz decodes (its encoder takes up to 10,485,760, but more than
10,000,000 never decode, so such a submission is lost)."""

VALIDATOR_MAX_EXTENT = 1.5
"""Largest bounding-box side the validator scales every cloud to."""

VALIDATOR_MIN_GAUSSIANS = 7000
"""Fewer gaussians than this scores 0."""

VALIDATOR_MAX_TRANSPARENT_FRACTION = 0.8
"""A larger fraction of nearly transparent gaussians scores 0."""

VALIDATOR_TRANSPARENT_OPACITY = 1e-3
"""A gaussian with sigmoid(opacity) below this counts as transparent."""

IDENTITY_ROTATION_TOLERANCE = 1e-3
"""A unit quaternion (sign-canonical) within this of [1, 0, 0, 0] in every component counts as
identity. The validator's own test (``torch.allclose`` on normalised quaternions) is far stricter,
so this errs on the side of failing."""

INVISIBLE_OPACITY = 1.0 / 255.0
"""Below this opacity a gaussian is invisible in an 8-bit render and encodes as SPZ alpha 0 or 1."""

_Y_DOWN_QUATERNION = np.array([0.0, 1.0, 0.0, 0.0])
"""180 degrees about X (w first): (x, y, z) -> (x, -y, -z)."""

_Y_DOWN_SH_SIGNS = np.array(
    [-1, -1, 1]  # degree 1: y, z, x
    + [-1, 1, 1, -1, 1]  # degree 2: xy, yz, 3z^2-1, xz, x^2-y^2
    + [-1, 1, -1, -1, 1, -1, 1],  # degree 3: odd powers of y and z together flip
    dtype=np.float32,
)
"""How the 180-degree turn about X acts on each higher SH coefficient (3DGS basis order): every
real SH basis function is even or odd in (y, z) together, so the rotation is a sign per
coefficient."""


@dataclass(frozen=True)
class FloaterFilter:
    """How to find floaters: nearly transparent gaussians, isolated gaussians, small detached clusters.

    Each gaussian's mean distance to its ``neighbors`` nearest others is compared with the median
    of that distance over the cloud: above ``outlier_ratio`` times the median it is isolated and
    dropped (a robust statistical outlier removal; a mean + k std rule would also clip 0.3-0.5% of
    a clean, randomly sampled surface, whose distances are right-skewed). Neighbours closer than
    ``link_ratio`` times the median are linked; linked groups holding less than
    ``min_cluster_fraction`` of the cloud are dropped. Gaussians below ``min_opacity`` go first.
    """

    neighbors: int = 10
    outlier_ratio: float = 3.0
    link_ratio: float = 4.0
    min_cluster_fraction: float = 0.05
    min_opacity: float = INVISIBLE_OPACITY


@dataclass(frozen=True)
class Verdict:
    """What the validator's zero-score rules say about a cloud, with the figures behind them."""

    failures: tuple[str, ...]
    """One human-readable reason per broken rule; empty when the cloud passes."""
    count: int
    transparent_count: int
    transparent_fraction: float
    identity_count: int
    identity_fraction: float
    non_finite_fields: tuple[str, ...]
    extent: tuple[float, float, float]
    """Bounding-box sides of the finite positions."""
    center: tuple[float, float, float]
    """Per-axis mean of the finite positions."""
    coordinate_mean: float
    """Mean of all finite coordinates: the shift the validator subtracts."""
    min_gaussians: int
    max_transparent_fraction: float
    transparent_below: float
    identity_tolerance: float

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def max_extent(self) -> float:
        return max(self.extent)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "ok": self.ok,
            "failures": list(self.failures),
            "count": self.count,
            "transparent_count": self.transparent_count,
            "transparent_fraction": self.transparent_fraction,
            "identity_count": self.identity_count,
            "identity_fraction": self.identity_fraction,
            "non_finite_fields": list(self.non_finite_fields),
            "extent": list(self.extent),
            "max_extent": self.max_extent,
            "center": list(self.center),
            "coordinate_mean": self.coordinate_mean,
            "thresholds": {
                "min_gaussians": self.min_gaussians,
                "max_gaussians": PYSPZ_MAX_GAUSSIANS,
                "max_transparent_fraction": self.max_transparent_fraction,
                "transparent_below": self.transparent_below,
                "identity_tolerance": self.identity_tolerance,
            },
        }


def normalize_for_validator(
    cloud: GaussianCloud,
    *,
    max_extent: float = VALIDATOR_MAX_EXTENT,
    frame: Frame = "y_up",
    remove_floaters: bool | FloaterFilter = False,
) -> GaussianCloud:
    """Centre each axis' mean on 0, scale so the largest bounding-box side is ``max_extent``, set the frame.

    Floaters (``True`` for the default :class:`FloaterFilter`, or a filter) are removed first, so the
    extent is that of the kept object. ``frame="y_down"`` turns the cloud 180 degrees about X
    (positions, orientations and higher SH bands alike). Idempotent for ``"y_up"``; ``"y_down"``
    applied twice gives the ``"y_up"`` result back.
    """
    if frame not in ("y_up", "y_down"):
        raise SplatError(f"frame must be 'y_up' or 'y_down', got {frame!r}")
    if not (max_extent > 0 and np.isfinite(max_extent)):
        raise SplatError(f"max_extent must be a positive number, got {max_extent}")
    _require_usable(cloud)
    if remove_floaters:
        chosen = remove_floaters if isinstance(remove_floaters, FloaterFilter) else FloaterFilter()
        cloud = drop_floaters(cloud, chosen)
    cloud, _ = _centre_and_scale(cloud, max_extent)
    return rotate_to_y_down(cloud) if frame == "y_down" else cloud


def as_validator_loads(cloud: GaussianCloud, max_extent: float = VALIDATOR_MAX_EXTENT) -> GaussianCloud:
    """The cloud as SN17's validator renders it: the scalar mean of every coordinate subtracted (not
    per axis), scaled uniformly so the largest bounding-box side is ``max_extent``, and each opacity
    multiplied by 1 / scale factor, capped at 1 (so a cloud it shrinks gets more opaque).

    Infinite opacity logits are fine (an SPZ alpha byte of 255 decodes to +inf, as in pyspz);
    any other non-finite value is an error."""
    if len(cloud) == 0:
        raise SplatError("the cloud is empty")
    bad = [name for name in cloud.non_finite_fields()
           if name != "opacity_logits" or np.isnan(cloud.opacity_logits).any()]
    if bad:
        raise SplatError(f"non-finite values (NaN or inf) in {', '.join(bad)}")
    scaled, factor = _centre_and_scale(cloud, max_extent, per_axis=False)
    opacity = np.minimum(cloud.opacities.astype(np.float64) / factor, 1.0)
    opacity = np.clip(opacity, 1e-7, 1.0 - 1e-7)  # finite logits for the renderer
    return GaussianCloud(scaled.positions, scaled.log_scales, scaled.rotations,
                         np.log(opacity / (1.0 - opacity)), scaled.sh_dc, scaled.sh_rest)


def drop_floaters(cloud: GaussianCloud, floater_filter: FloaterFilter = FloaterFilter()) -> GaussianCloud:
    """The cloud without invisible gaussians, statistical outliers and small detached clusters."""
    _require_usable(cloud)
    cloud = cloud.subset(~_below_opacity(cloud, floater_filter.min_opacity))
    if len(cloud) <= floater_filter.neighbors:
        raise SplatError(f"{len(cloud)} gaussians left after dropping transparent ones: too few to judge floaters")
    distances, neighbours = _nearest_neighbours(cloud.positions, floater_filter.neighbors)
    typical = float(np.median(distances.mean(axis=1)))
    if typical == 0.0:  # most gaussians stacked on top of each other: distances say nothing
        return cloud
    keep = distances.mean(axis=1) <= floater_filter.outlier_ratio * typical
    link_radius = floater_filter.link_ratio * typical
    keep &= _in_large_clusters(distances, neighbours, link_radius, floater_filter.min_cluster_fraction)
    if not keep.any():
        raise SplatError("floater removal left no gaussians")
    return cloud.subset(keep)


def rotate_to_y_down(cloud: GaussianCloud) -> GaussianCloud:
    """The cloud turned 180 degrees about X: (x, y, z) -> (x, -y, -z), orientations and SH following."""
    positions = cloud.positions * np.array([1.0, -1.0, -1.0], dtype=np.float32)
    rotations = quaternion_multiply(_Y_DOWN_QUATERNION, cloud.rotations.astype(np.float64))
    sh_rest = cloud.sh_rest * _Y_DOWN_SH_SIGNS[: cloud.sh_rest.shape[1], None]
    return GaussianCloud(positions, cloud.log_scales, rotations, cloud.opacity_logits, cloud.sh_dc, sh_rest)


def quaternion_multiply(left: npt.ArrayLike, right: npt.ArrayLike) -> F64:
    """Hamilton products ``left * right`` of w-first quaternions (broadcasting over leading axes)."""
    lw, lx, ly, lz = np.moveaxis(np.asarray(left, dtype=np.float64), -1, 0)
    rw, rx, ry, rz = np.moveaxis(np.asarray(right, dtype=np.float64), -1, 0)
    return np.stack(
        [
            lw * rw - lx * rx - ly * ry - lz * rz,
            lw * rx + lx * rw + ly * rz - lz * ry,
            lw * ry - lx * rz + ly * rw + lz * rx,
            lw * rz + lx * ry - ly * rx + lz * rw,
        ],
        axis=-1,
    )


def check_for_validator(
    cloud: GaussianCloud,
    *,
    min_gaussians: int = VALIDATOR_MIN_GAUSSIANS,
    max_transparent_fraction: float = VALIDATOR_MAX_TRANSPARENT_FRACTION,
    transparent_below: float = VALIDATOR_TRANSPARENT_OPACITY,
    identity_tolerance: float = IDENTITY_ROTATION_TOLERANCE,
) -> Verdict:
    """Apply the validator's zero-score rules (plus pyspz's size limit) and gather the figures."""
    count = len(cloud)
    transparent = int(np.count_nonzero(_below_opacity(cloud, transparent_below)))
    identity = int(np.count_nonzero(_identity_rotations(cloud, identity_tolerance)))
    non_finite = tuple(cloud.non_finite_fields())
    transparent_fraction = transparent / count if count else 0.0
    failures = []
    if count < min_gaussians:
        failures.append(f"min_gaussians: {count:,} gaussians, the validator needs at least {min_gaussians:,}")
    if count > PYSPZ_MAX_GAUSSIANS:
        failures.append(f"max_gaussians: {count:,} gaussians, validators' pyspz decodes at most {PYSPZ_MAX_GAUSSIANS:,}")
    if transparent_fraction > max_transparent_fraction:
        failures.append(
            f"max_transparent_fraction: {transparent_fraction:.1%} of gaussians ({transparent:,} of {count:,}) have "
            f"opacity below {transparent_below:g}, the validator allows at most {max_transparent_fraction:.0%}"
        )
    if count and identity == count:
        failures.append(
            f"identity_rotations: all {count:,} rotations are within {identity_tolerance:g} of identity "
            "[1, 0, 0, 0], the validator zero-scores that"
        )
    if non_finite:
        failures.append(f"finite: non-finite values (NaN or inf) in {', '.join(non_finite)}")
    extent, center, coordinate_mean = _position_figures(cloud.positions)
    return Verdict(
        failures=tuple(failures),
        count=count,
        transparent_count=transparent,
        transparent_fraction=transparent_fraction,
        identity_count=identity,
        identity_fraction=identity / count if count else 0.0,
        non_finite_fields=non_finite,
        extent=extent,
        center=center,
        coordinate_mean=coordinate_mean,
        min_gaussians=min_gaussians,
        max_transparent_fraction=max_transparent_fraction,
        transparent_below=transparent_below,
        identity_tolerance=identity_tolerance,
    )


def _require_usable(cloud: GaussianCloud) -> None:
    if len(cloud) == 0:
        raise SplatError("the cloud is empty")
    cloud.require_finite()


def _centre_and_scale(cloud: GaussianCloud, max_extent: float, per_axis: bool = True) -> tuple[GaussianCloud, float]:
    """Centred (each axis' mean, or the scalar mean of all coordinates) and scaled so the largest
    side is ``max_extent``; and the scale factor."""
    positions = cloud.positions.astype(np.float64)
    positions -= positions.mean(axis=0) if per_axis else positions.mean()
    largest_side = float((positions.max(axis=0) - positions.min(axis=0)).max())
    if not largest_side > 0.0:
        raise SplatError("every gaussian sits at the same position: the cloud has no extent to scale")
    factor = max_extent / largest_side
    scaled = GaussianCloud(positions * factor, cloud.log_scales + np.float32(np.log(factor)), cloud.rotations,
                           cloud.opacity_logits, cloud.sh_dc, cloud.sh_rest)
    return scaled, factor


def _nearest_neighbours(positions: npt.NDArray[np.float32], k: int) -> tuple[F64, npt.NDArray[np.intp]]:
    """Distances and indices of each point's ``k`` nearest other points."""
    distances, indices = cKDTree(positions).query(positions, k=k + 1, workers=-1)
    return distances[:, 1:], indices[:, 1:]


def _in_large_clusters(
    distances: F64, neighbours: npt.NDArray[np.intp], link_radius: float, min_fraction: float
) -> npt.NDArray[np.bool_]:
    """Mask of points whose cluster (k-NN links no longer than ``link_radius``) is not small."""
    n = len(distances)
    linked = distances <= link_radius
    row_starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.count_nonzero(linked, axis=1), out=row_starts[1:])
    graph = csr_matrix((np.ones(row_starts[-1], np.int8), neighbours[linked], row_starts), shape=(n, n))
    _, labels = connected_components(graph, directed=True, connection="weak")
    sizes = np.bincount(labels)
    return sizes[labels] >= min_fraction * n


def _below_opacity(cloud: GaussianCloud, opacity: float) -> npt.NDArray[np.bool_]:
    """Mask of gaussians with sigmoid(logit) < ``opacity``, compared as logits (no overflow, no exp)."""
    if opacity <= 0.0:
        return np.zeros(len(cloud), dtype=bool)
    if opacity >= 1.0:
        return cloud.opacity_logits < np.inf
    return cloud.opacity_logits < np.log(opacity / (1.0 - opacity))


def _identity_rotations(cloud: GaussianCloud, tolerance: float) -> npt.NDArray[np.bool_]:
    """Mask of rotations equal to [1, 0, 0, 0] up to sign and ``tolerance`` (zero quaternions included)."""
    deviation = np.abs(cloud.unit_rotations - np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32))
    return deviation.max(axis=1) <= tolerance


def _position_figures(
    positions: npt.NDArray[np.float32],
) -> tuple[tuple[float, float, float], tuple[float, float, float], float]:
    """Bounding-box sides, per-axis mean and mean of all coordinates of the finite positions."""
    finite = positions[np.isfinite(positions).all(axis=1)].astype(np.float64)
    if len(finite) == 0:
        return (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0
    sides = finite.max(axis=0) - finite.min(axis=0)
    center = finite.mean(axis=0)
    return _triple(sides), _triple(center), float(center.mean())


def _triple(values: F64) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])
