"""A request for generations (the UI's request job): some prompts (text, or one image by path or
http(s) URL) times some seeds, checked whole before anything is registered. No Dagster imports.

Every bound is checked before it costs memory or time: the number of prompts, seeds and
generations; each text by ``Prompt.from_text``; the image's bytes while they arrive (at most
``MAX_IMAGE_BYTES``, within ``FETCH_TIMEOUT_S``), then by ``Prompt.from_image`` (format, pixel count
from the header, a full decode). A refusal is one ``PromptError`` line naming the item to change.
"""

from __future__ import annotations

import os
import stat
import urllib.error
from dataclasses import dataclass
from pathlib import Path

from . import http_get
from .keys import MAX_IMAGE_BYTES, Prompt, PromptError, check_seed

MAX_PROMPTS = 16
MAX_SEEDS = 16
MAX_GENERATIONS = 64  # prompts x seeds in one request
FETCH_TIMEOUT_S = 30.0  # the whole download of an image by URL


@dataclass(frozen=True)
class Wanted:
    prompt: Prompt
    seed: int


def parse_request(prompts: list[str], seeds: list[int], image: str = "", caption: str = "",
                  max_pixels: int | None = None, timeout_s: float = FETCH_TIMEOUT_S) -> list[Wanted]:
    """Every (prompt, seed) the request asks for, each once, in order; PromptError for the first bad item."""
    if not prompts and not image:
        raise PromptError("the request has no prompt: give prompts (text), or an image (a path or an http(s) URL)")
    if len(prompts) > MAX_PROMPTS:
        raise PromptError(f"the request has {len(prompts)} prompts; the limit is {MAX_PROMPTS}: split it")
    if not seeds:
        raise PromptError("the request has no seed: give at least one (0 is fine)")
    if len(seeds) > MAX_SEEDS:
        raise PromptError(f"the request has {len(seeds)} seeds; the limit is {MAX_SEEDS}: split it")
    for position, seed in enumerate(seeds, 1):
        try:
            check_seed(seed)
        except PromptError as exc:
            raise PromptError(f"seed {position}: {exc}") from None
    unique_seeds = list(dict.fromkeys(seeds))
    count = (len(prompts) + bool(image)) * len(unique_seeds)
    if count > MAX_GENERATIONS:
        raise PromptError(f"the request makes {count} generations; the limit is {MAX_GENERATIONS}: "
                          f"fewer prompts or seeds")
    parsed = []
    for position, text in enumerate(prompts, 1):
        try:
            parsed.append(Prompt.from_text(text))
        except PromptError as exc:
            raise PromptError(f"prompt {position}: {exc}") from None
    if image:
        data = fetch_image(image, timeout_s)
        try:
            parsed.append(Prompt.from_image(data, caption=caption, max_pixels=max_pixels))
        except PromptError as exc:
            raise PromptError(f"image {_shown(image)}: {exc}") from None
    wanted = {(p.kind, p.digest, seed): Wanted(p, seed) for p in parsed for seed in unique_seeds}
    return list(wanted.values())


def fetch_image(source: str, timeout_s: float = FETCH_TIMEOUT_S, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an image prompt given as a path (on the machine running the request) or an http(s)
    URL: never more than ``max_bytes`` read, a download stopped after ``timeout_s``."""
    if not isinstance(source, str) or not source.strip():
        raise PromptError("the image is empty: give a file path or an http(s) URL")
    source = source.strip()
    scheme = source.split(":", 1)[0].lower() if "://" in source else ""
    if scheme in ("http", "https"):
        return _download(source, timeout_s, max_bytes)
    if scheme:
        raise PromptError(f"image {_shown(source)}: {scheme}:// is not supported; give a file path or an http(s) URL")
    return _read_file(Path(source).expanduser(), max_bytes)


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        info = path.stat()
    except OSError as exc:
        raise PromptError(f"image {_shown(str(path))}: {exc.strerror or exc} (a path on the machine running "
                          f"the request)") from None
    if not stat.S_ISREG(info.st_mode):  # never open a FIFO, a device or a folder
        raise PromptError(f"image {_shown(str(path))}: not a regular file")
    if info.st_size > max_bytes:
        raise PromptError(f"image {_shown(str(path))}: {info.st_size:,} bytes; the limit is {max_bytes:,}")
    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as handle:
        data = handle.read(max_bytes + 1)  # the file may have grown since the stat
    if len(data) > max_bytes:
        raise PromptError(f"image {_shown(str(path))}: over {max_bytes:,} bytes; the limit is {max_bytes:,}")
    return data


def _download(url: str, timeout_s: float, max_bytes: int) -> bytes:
    """The image at ``url``, whole within ``timeout_s`` (``http_get``: slow headers and a dripping body
    are cut off too), redirects to http(s) only."""
    try:
        return http_get.get(url, max_bytes=max_bytes, timeout_s=timeout_s,
                            headers={"User-Agent": "threegen-request", "Accept": "image/*"})
    except http_get.TooLarge as exc:
        raise PromptError(f"image {_shown(url)}: {exc}") from None
    except urllib.error.HTTPError as exc:
        raise PromptError(f"image {_shown(url)}: the server answered HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise PromptError(f"image {_shown(url)}: cannot download it: {exc.reason}") from None
    except TimeoutError:
        raise PromptError(f"image {_shown(url)}: the download took over {timeout_s:g} s; stopped") from None
    except OSError as exc:
        raise PromptError(f"image {_shown(url)}: cannot download it: {type(exc).__name__}: {exc}") from None


def _shown(source: str) -> str:
    """The source as a short, printable quote (a URL's query may be long, or hold a token: cut off)."""
    text = source.split("?", 1)[0]
    text = text if len(text) <= 120 else text[:117] + "..."
    return repr(text)
