"""Untrusted images (prompts, worker requests): bounded decoding and correct conversion to 8-bit
RGB/RGBA. No Dagster imports.

``decode`` reads only the header first, refuses a format other than the ones asked for and a
width x height over ``max_pixels`` before a single pixel is decoded (a 259 KB PNG can declare
9000 x 9000 = 81 MP, 4.9 GB once decoded), then decodes fully so a truncated or corrupt file is
refused here and not later in the pipeline. The bound is per call: Pillow's global
``Image.MAX_IMAGE_PIXELS`` is left as it is.

``to_rgb`` converts every mode these formats give to what the pipeline expects: 16-bit greyscale
(``I;16``) is scaled to 8 bits (Pillow's own conversion clips it, so a typical 16-bit image turns
all white), transparency (alpha channel, palette or ``tRNS`` colour key) is kept as RGBA, CMYK
and palettes become RGB, and a photo's EXIF orientation is applied.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_IMAGE_PIXELS = 4096 * 4096
"""Default bound on width x height (16.8 MP; THREEGEN_MAX_IMAGE_PIXELS): a 12 MP phone photo
fits, and decoded as 8-bit RGBA it is at most 64 MiB. Every model stage works at 1024 px or less."""
PROMPT_FORMATS = ("PNG", "JPEG", "WEBP")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """An image that cannot be used; the message says why."""


def decode(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS,
           formats: tuple[str, ...] = PROMPT_FORMATS) -> Image.Image:
    """The decoded image, after checking its format and pixel count (None: only Pillow's own bound,
    for bytes checked when they came in); ImageError otherwise."""
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:  # Pillow's own bound (twice its global limit)
        raise ImageError(f"the image has too many pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError(f"the image is not a {_names(formats)} file (or its header is damaged)") from None
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"the image is {width} x {height} = {width * height:,} pixels; the limit is "
                         f"{max_pixels:,} (THREEGEN_MAX_IMAGE_PIXELS): scale it down")
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt data: OSError, SyntaxError, EOFError, ...
        raise ImageError(f"the {image.format} image ({width} x {height}) cannot be decoded: "
                         f"{type(exc).__name__}: {exc}") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy, or RGBA when the image has any kind of transparency."""
    try:
        image = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - a damaged EXIF block
        raise ImageError(f"the image's EXIF orientation cannot be read: {type(exc).__name__}: {exc}") from None
    if image.mode in _SIXTEEN_BIT:
        return _sixteen_bit_grey(image)
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    return image.convert("RGBA" if transparent else "RGB")


def _sixteen_bit_grey(image: Image.Image) -> Image.Image:
    """16-bit greyscale scaled to 8 bits (65535 -> 255), its tRNS grey level as alpha 0."""
    values = np.asarray(image).astype(np.int64)
    grey = ((np.clip(values, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    channels = [grey, grey, grey]
    key = image.info.get("transparency")
    if isinstance(key, int):
        channels.append(np.where(values == key, 0, 255).astype(np.uint8))
    return Image.fromarray(np.dstack(channels), "RGBA" if len(channels) == 4 else "RGB")


def _names(formats: tuple[str, ...]) -> str:
    names = ["WebP" if f == "WEBP" else f for f in formats]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def open_rgb(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, formats: tuple[str, ...] = PROMPT_FORMATS) -> Image.Image:
    """``decode`` then ``to_rgb``."""
    return to_rgb(decode(data, max_pixels, formats))
