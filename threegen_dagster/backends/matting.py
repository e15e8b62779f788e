"""The embedded background remover: border flood fill, no model.

Pixels close to the background colour (estimated from the image border) that connect to
the border are background; every remaining component at least ``min_fraction`` of the
largest is kept (so a chair's separate legs survive, specks do not); holes inside the
object stay opaque; the edge is softened over about a pixel. Works on the plain-background
images a text-to-image prompt template asks for; photos with busy backgrounds need rembg.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from .gpu import BackendError
from .stages import Background


class MattingError(ValueError):
    """An image in which no object could be separated from its background."""


def remove_background(image: Image.Image, tolerance: float = 28.0, min_fraction: float = 0.02,
                      feather: float = 0.8) -> Image.Image:
    """An RGBA copy of ``image`` whose alpha is 0 on the background and 255 on the object."""
    if image.mode == "RGBA" and np.asarray(image)[..., 3].min() < 255:
        return image.copy()  # already cut out (an image prompt with transparency)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    background = _border_colour(rgb)
    near = np.linalg.norm(rgb - background, axis=2) < tolerance
    labels, _ = ndimage.label(near)
    border_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.isin(labels, border_labels[border_labels > 0])
    mask = _keep_large(~outside, min_fraction)
    if not mask.any():
        raise MattingError("no object found: the image is a plain background (or the object touches no "
                           "pixel that differs from the border colour)")
    alpha = mask.astype(np.float32)
    if feather > 0:  # soft only in a one-pixel ring: solid inside, clear outside
        alpha = ndimage.gaussian_filter(alpha, feather)
        alpha[ndimage.binary_erosion(mask)] = 1
        alpha[~ndimage.binary_dilation(mask)] = 0
    rgba = np.dstack([rgb, alpha * 255]).round().astype(np.uint8)
    return Image.fromarray(rgba, "RGBA")


def _border_colour(rgb: np.ndarray) -> np.ndarray:
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return np.median(border, axis=0)


def _keep_large(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.nonzero(sizes >= min_fraction * sizes.max())[0] + 1
    return np.isin(labels, keep)


def foreground_mask(rgba: Image.Image, threshold: int = 128) -> np.ndarray:
    """The boolean silhouette of an RGBA cut-out."""
    return np.asarray(rgba.convert("RGBA"))[..., 3] >= threshold


class FloodFill(Background):
    """The ``background`` backend ``flood_fill``: ``tolerance`` is the RGB distance from the border
    colour, parts at least ``min_fraction`` of the largest are kept."""

    name, model = "flood_fill", "border flood fill"

    def __init__(self, tolerance: float = 28.0, min_fraction: float = 0.02) -> None:
        if not tolerance > 0 or not 0 <= min_fraction <= 1:
            raise BackendError(f"flood_fill tolerance {tolerance} must be > 0 and min_fraction {min_fraction} "
                               f"within 0..1")
        self.tolerance, self.min_fraction = tolerance, min_fraction

    def __call__(self, image: Image.Image) -> Image.Image:
        return remove_background(image, self.tolerance, self.min_fraction)
