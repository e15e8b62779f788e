"""The embedded scorer: SN17's zero-score checks plus an honest geometric proxy, no models.

The validator scores with CLIP alignment and a DINOv2 quality head, which need weights.
This proxy asks simpler questions of the splat the validator would receive:

- **silhouette IoU**: does the front render (azimuth 0, elevation 0) cover the same shape as
  the foreground cut-out? Both silhouettes are cropped to their bounding boxes and
  centred in a square and resampled to one size first, so the comparison ignores scale and
  position (the validator re-normalises anyway) but not the aspect ratio.
- **colour similarity**: 1 - mean absolute RGB error inside the shared silhouette.
- **ring consistency**: mean SSIM between neighbouring views of the validator's 16-view
  ring, the same quantity the validator's consistency term uses.

``score = 0.5 * iou + 0.3 * colour + 0.2 * consistency``, and 0 when a zero-score check
fails. It says ``"kind": "proxy"`` wherever it goes: it is not the validator's score.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity

from threegen_dagster.splats import spz as spz_codec
from threegen_dagster.splats.cloud import GaussianCloud
from threegen_dagster.splats.render import (
    VALIDATOR_FOV_Y_DEG,
    VALIDATOR_RADIUS,
    orbit_camera,
    preview_grid,
    render_rgba,
    render_views,
    validator_cameras,
)
from threegen_dagster.splats.validate import check_for_validator

from .gpu import BackendError
from .stages import Score

WEIGHTS = {"silhouette_iou": 0.5, "colour_similarity": 0.3, "ring_consistency": 0.2}
COMPARE_SIZE = 128


@dataclass(frozen=True)
class ProxyScore:
    score: float
    silhouette_iou: float
    colour_similarity: float
    ring_consistency: float
    checks: dict
    kind: str = "proxy"
    note: str = ("geometric proxy (silhouette IoU, colour agreement, view consistency) with the "
                 "validator's zero-score checks; not the validator's CLIP/DINOv2 score")
    ring_png: bytes = field(default=b"", repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("ring_png")
        return out


def score_splat(cloud: GaussianCloud, foreground: Image.Image, front_size: int = 256,
                ring_size: int = 128) -> ProxyScore:
    """Score a (decoded, normalised) splat against the cut-out it was made from."""
    verdict = check_for_validator(cloud)
    front = render_rgba(cloud, orbit_camera(0.0, 0.0, VALIDATOR_RADIUS, VALIDATOR_FOV_Y_DEG), front_size, front_size)
    iou, colour = _front_agreement(front, np.asarray(foreground.convert("RGBA"), np.float32) / 255)
    views = render_views(cloud, validator_cameras(16), ring_size, ring_size)
    consistency = ring_consistency(views)
    parts = {"silhouette_iou": iou, "colour_similarity": colour, "ring_consistency": consistency}
    score = sum(WEIGHTS[k] * v for k, v in parts.items()) if verdict.ok else 0.0
    buf = io.BytesIO()
    preview_grid(views, 4).save(buf, format="PNG", optimize=True)
    return ProxyScore(round(float(score), 4), *(round(float(v), 4) for v in parts.values()),
                      checks=verdict.to_dict(), ring_png=buf.getvalue())


def _crop_to(silhouette: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Silhouette and colours cropped to the silhouette's box and resampled to COMPARE_SIZE."""
    if not silhouette.any():
        return np.zeros((COMPARE_SIZE, COMPARE_SIZE), bool), np.ones((COMPARE_SIZE, COMPARE_SIZE, 3), np.float32)
    rows, cols = np.nonzero(silhouette.any(axis=1))[0], np.nonzero(silhouette.any(axis=0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    # centre the box in a square before resampling, so the shape keeps its aspect ratio
    h, w = rows[-1] + 1 - rows[0], cols[-1] + 1 - cols[0]
    side = max(h, w)
    inset = (slice((side - h) // 2, (side - h) // 2 + h), slice((side - w) // 2, (side - w) // 2 + w))
    square_sil = np.zeros((side, side), bool)
    square_sil[inset] = silhouette[box]
    square_rgb = np.ones((side, side, 3), np.float32)
    square_rgb[inset] = rgb[box]
    size = (COMPARE_SIZE, COMPARE_SIZE)
    mask = np.asarray(Image.fromarray(square_sil.astype(np.uint8) * 255).resize(size, Image.BILINEAR)) >= 128
    colour = np.asarray(Image.fromarray((square_rgb * 255).astype(np.uint8)).resize(size, Image.BILINEAR))
    return mask, colour.astype(np.float32) / 255


def _front_agreement(front: np.ndarray, cutout: np.ndarray) -> tuple[float, float]:
    render_mask, render_rgb = _crop_to(front[..., 3] >= 0.5, front[..., :3])
    cut_mask, cut_rgb = _crop_to(cutout[..., 3] >= 0.5, cutout[..., :3])
    union = (render_mask | cut_mask).sum()
    both = render_mask & cut_mask
    iou = both.sum() / union if union else 0.0
    colour = 1.0 - float(np.abs(render_rgb[both] - cut_rgb[both]).mean()) if both.any() else 0.0
    return float(iou), colour


def ring_consistency(views: list[np.ndarray]) -> float:
    """Mean SSIM (on grey) between each view and the next one around the ring."""
    grey = [v.mean(axis=2) for v in views]
    pairs = [structural_similarity(grey[i], grey[(i + 1) % len(grey)], data_range=1.0) for i in range(len(grey))]
    return float(np.clip(np.mean(pairs), 0.0, 1.0))


class ProxyScorer(Score):
    """The ``score`` backend ``proxy``: always called from the run itself (no GPU needed)."""

    name, model = "proxy", "geometric proxy + the validator's zero-score checks (not a learned model)"
    on_worker = False

    def __call__(self, spz: bytes, foreground: Image.Image | None = None, text: str = "",
              image: bytes | None = None) -> tuple[dict, bytes]:
        if foreground is None:
            raise BackendError("the proxy scorer compares the splat with the foreground cut-out, and none was given")
        result = score_splat(spz_codec.decode(spz), foreground)
        out = result.to_dict()
        out["parts"] = {k: out[k] for k in WEIGHTS}
        return out, result.ring_png
