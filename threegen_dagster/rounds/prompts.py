"""A round's image prompts, fetched from their URLs with a byte, time and retry bound, checked against
their name (a stem that is a sha256 must be the image's sha256) and then as every image prompt is
(``keys.Prompt.from_image``: format, pixel count before decoding, full decode). No Dagster imports."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..keys import MAX_IMAGE_BYTES, Prompt, PromptError
from .source import FetchError, fetch_url
from .state import SHA256_STEM, PromptUrl


class PromptFetchError(ValueError):
    """One prompt that cannot be used; the message names its stem and the cause."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int | None = None  # None: THREEGEN_MAX_IMAGE_PIXELS
    timeout_s: float = 30.0
    tries: int = 3
    pause_s: float = 1.0


def fetch_prompt(prompt: PromptUrl, limits: ImageLimits = ImageLimits()) -> Prompt:
    """The image prompt behind one line of ``prompts.txt``; PromptFetchError naming the stem otherwise."""
    try:
        data = fetch_url(prompt.url, max_bytes=limits.max_bytes, timeout_s=limits.timeout_s, tries=limits.tries,
                         pause_s=limits.pause_s, what=prompt.url)
    except FetchError as exc:
        raise PromptFetchError(f"prompt {prompt.stem}: {exc}") from None
    if SHA256_STEM.match(prompt.stem):
        digest = hashlib.sha256(data).hexdigest()
        if digest != prompt.stem:
            raise PromptFetchError(f"prompt {prompt.stem}: the image's sha256 is {digest}, not its name: "
                                   "the file was changed or swapped")
    try:
        return Prompt.from_image(data, max_pixels=limits.max_pixels)
    except PromptError as exc:
        raise PromptFetchError(f"prompt {prompt.stem}: {exc}") from None
