"""The gaussian cloud type shared by every splat tool.

Conventions are those of the original 3DGS code and of SN17's validators:
positions in world units, natural-log scales, unit quaternions stored **w first**
(``rot_0`` is w), opacity as a logit, colour as the SH DC coefficient
(``rgb = 0.5 + SH_C0 * f_dc``) and the higher SH bands as ``(N, K, 3)`` with the
colour channel innermost (K = 3, 8 or 15 for degree 1, 2 or 3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

SH_C0 = 0.28209479177387814
"""Zeroth-order real spherical-harmonic constant: ``rgb = 0.5 + SH_C0 * f_dc``."""

SH_COEFFS_FOR_DEGREE = {0: 0, 1: 3, 2: 8, 3: 15}
"""Higher-band SH coefficients per colour channel for each degree."""

F32 = npt.NDArray[np.float32]


class SplatError(ValueError):
    """Bad splat data: a malformed file, a wrong shape, a non-finite value."""


def sh_degree_for_coeffs(k: int) -> int:
    for degree, count in SH_COEFFS_FOR_DEGREE.items():
        if count == k:
            return degree
    raise SplatError(f"{k} higher-order SH coefficients per channel is no SH degree (expected 0, 3, 8 or 15)")


def _f32(name: str, value: npt.ArrayLike, shape: tuple[int, ...]) -> F32:
    arr = np.ascontiguousarray(value, dtype=np.float32)
    if arr.shape != shape:
        raise SplatError(f"{name} has shape {arr.shape}, expected {shape}")
    return arr


@dataclass(eq=False)
class GaussianCloud:
    """N gaussians as float32 arrays; construction checks every shape."""

    positions: F32
    """(N, 3) centres."""
    log_scales: F32
    """(N, 3) natural-log standard deviations along the local axes."""
    rotations: F32
    """(N, 4) quaternions, w first; need not be normalised."""
    opacity_logits: F32
    """(N,) opacity before the sigmoid."""
    sh_dc: F32
    """(N, 3) DC colour coefficients."""
    sh_rest: F32 = field(default_factory=lambda: np.zeros((0, 0, 3), np.float32))
    """(N, K, 3) higher-band coefficients, colour channel innermost; K = 0 for degree 0."""

    def __post_init__(self) -> None:
        positions = np.ascontiguousarray(self.positions, dtype=np.float32)
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise SplatError(f"positions has shape {positions.shape}, expected (N, 3)")
        n = positions.shape[0]
        self.positions = positions
        self.log_scales = _f32("log_scales", self.log_scales, (n, 3))
        self.rotations = _f32("rotations", self.rotations, (n, 4))
        self.opacity_logits = _f32("opacity_logits", self.opacity_logits, (n,))
        self.sh_dc = _f32("sh_dc", self.sh_dc, (n, 3))
        rest = np.asarray(self.sh_rest, dtype=np.float32)
        if rest.size == 0:
            rest = np.zeros((n, 0, 3), np.float32)
        if rest.ndim != 3 or rest.shape[0] != n or rest.shape[2] != 3:
            raise SplatError(f"sh_rest has shape {rest.shape}, expected (N, K, 3)")
        sh_degree_for_coeffs(rest.shape[1])
        self.sh_rest = np.ascontiguousarray(rest)

    def __len__(self) -> int:
        return int(self.positions.shape[0])

    @property
    def sh_degree(self) -> int:
        return sh_degree_for_coeffs(self.sh_rest.shape[1])

    @property
    def opacities(self) -> F32:
        """Opacity after the sigmoid, in [0, 1]."""
        return (1.0 / (1.0 + np.exp(-self.opacity_logits.astype(np.float64)))).astype(np.float32)

    @property
    def scales(self) -> F32:
        return np.exp(self.log_scales)

    @property
    def colors(self) -> F32:
        """DC colour as RGB in [0, 1] (clipped)."""
        return np.clip(0.5 + SH_C0 * self.sh_dc, 0.0, 1.0).astype(np.float32)

    @property
    def unit_rotations(self) -> F32:
        """Rotations normalised to unit length with w >= 0 (zero quaternions become identity)."""
        q = self.rotations.astype(np.float64)
        norm = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
        q *= np.where(q[:, :1] < 0, -1.0, 1.0)
        return q.astype(np.float32)

    def non_finite_fields(self) -> list[str]:
        """Names of the arrays holding NaN or infinity (empty when all are finite)."""
        return [
            name
            for name in ("positions", "log_scales", "rotations", "opacity_logits", "sh_dc", "sh_rest")
            if not np.isfinite(getattr(self, name)).all()
        ]

    def require_finite(self) -> GaussianCloud:
        bad = self.non_finite_fields()
        if bad:
            raise SplatError(f"non-finite values (NaN or inf) in {', '.join(bad)}")
        return self

    def subset(self, index: npt.ArrayLike) -> GaussianCloud:
        """The gaussians selected by a boolean mask or an index array."""
        idx = np.asarray(index)
        return GaussianCloud(
            self.positions[idx],
            self.log_scales[idx],
            self.rotations[idx],
            self.opacity_logits[idx],
            self.sh_dc[idx],
            self.sh_rest[idx],
        )

    def with_sh_degree(self, degree: int) -> GaussianCloud:
        """A copy truncated (or zero-padded) to another SH degree; degree 0 drops view-dependence."""
        k = SH_COEFFS_FOR_DEGREE[degree]
        rest = np.zeros((len(self), k, 3), np.float32)
        keep = min(k, self.sh_rest.shape[1])
        rest[:, :keep] = self.sh_rest[:, :keep]
        return GaussianCloud(self.positions, self.log_scales, self.rotations, self.opacity_logits, self.sh_dc, rest)

    def allclose(self, other: GaussianCloud, atol: float = 0.0) -> bool:
        return len(self) == len(other) and all(
            np.allclose(getattr(self, n), getattr(other, n), atol=atol, rtol=0, equal_nan=True)
            for n in ("positions", "log_scales", "rotations", "opacity_logits", "sh_dc", "sh_rest")
        )
