"""Generation keys: one short, deterministic, path-safe partition key per (prompt, seed).

Two forms, both only ``[a-z0-9-]``: safe in the Dagster UI's "add partition" dialog, on the
command line, in file paths and in S3 keys.

- **hashed** (what ``threegen add``, the request job, the inbox and SN17 make):
  ``a-wooden-chair-3f2a9c1b0d-s42``: a slug of the prompt for people, 10 (or more) hex of the
  sha256 of the full prompt (text, or the image's bytes) so different prompts never share a key,
  and the seed.
- **readable** (typed by a person into "add partition"): ``a-blue-vase-s3``: the prompt's words
  and the seed, no hash; the key *is* the prompt (``a blue vase``, seed 3). A readable key never
  matches the hashed form (its last word may not look like a hash: 7 or more hex digits with a
  digit), so no two routes give two different prompts the same key.

No Dagster imports.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal

from . import images

MAX_PROMPT_CHARS = 10_000
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_SEED = 2**32 - 1
SLUG_WORDS = 6
SLUG_CHARS = 40
HASH_CHARS = 10  # hex of the prompt's sha256 in a key; lengthened only to tell colliding prompts apart
LONGER_HASH_CHARS = (16, 24, 32, 64)
HASHED_KEY = re.compile(r"^(?:[a-z0-9]+(?:-[a-z0-9]+)*-)?[0-9a-f]{%d,64}-s[0-9]+$" % HASH_CHARS)
READABLE_KEY = re.compile(r"^([a-z0-9]+(?:-[a-z0-9]+)*)-s(0|[1-9][0-9]*)$")
MAX_READABLE_KEY_CHARS = 120
_CUT_HASH = re.compile(r"(?=[0-9a-f]*[0-9])[0-9a-f]{7,}")  # a word that looks like (part of) a hash
KEY_PATTERN = re.compile(f"{HASHED_KEY.pattern}|{READABLE_KEY.pattern}")  # the shape of either (records)


class PromptError(ValueError):
    """A prompt or seed that cannot make a generation; the message says what to change."""


@dataclass(frozen=True)
class Prompt:
    """What to generate: text, or an image (PNG/JPEG/WebP bytes) with an optional caption."""

    kind: Literal["text", "image"]
    text: str = ""
    image: bytes = b""

    @staticmethod
    def from_text(text: str) -> Prompt:
        cleaned = clean_text(text, "prompt")
        if not cleaned:
            raise PromptError("the prompt is empty (or only whitespace): describe the object to generate")
        if len(cleaned) > MAX_PROMPT_CHARS:
            raise PromptError(f"the prompt has {len(cleaned):,} characters; the limit is {MAX_PROMPT_CHARS:,}")
        return Prompt("text", text=cleaned)

    @staticmethod
    def from_image(image: bytes, caption: str = "", max_pixels: int | None = None) -> Prompt:
        """An image prompt, refused unless it decodes completely as PNG, JPEG or WebP within
        ``max_pixels`` (None: THREEGEN_MAX_IMAGE_PIXELS) and converts to RGB/RGBA."""
        if not image:
            raise PromptError("the image prompt is empty: give a PNG, JPEG or WebP file")
        if len(image) > MAX_IMAGE_BYTES:
            raise PromptError(f"the image is {len(image):,} bytes; the limit is {MAX_IMAGE_BYTES:,}")
        if not _looks_like_image(image):
            raise PromptError("the image prompt is not a PNG, JPEG or WebP file")
        if max_pixels is None:
            from .settings import image_pixel_limit  # the setting, where no Settings is at hand (sensors)

            max_pixels = image_pixel_limit()
        try:
            images.open_rgb(image, max_pixels)
        except images.ImageError as exc:
            raise PromptError(f"image prompt refused: {exc}") from None
        return Prompt("image", text=clean_text(caption, "caption")[:MAX_PROMPT_CHARS], image=image)

    @property
    def digest(self) -> str:
        """sha256 of what the prompt is: the normalised text, or the image bytes."""
        payload = self.image if self.kind == "image" else self.text.encode("utf-8")
        return hashlib.sha256(payload).hexdigest()

    @property
    def label(self) -> str:
        """A short human description, e.g. for the UI and the catalog."""
        if self.kind == "text":
            return self.text if len(self.text) <= 120 else self.text[:117] + "..."
        return f"image {self.digest[:12]}" + (f" ({self.text[:80]})" if self.text else "")


def clean_text(text: str, what: str) -> str:
    """``text`` with runs of whitespace (newlines, tabs) as one space; PromptError for anything that is
    not printable text: a control character (ESC, NUL, ...) or bytes that were not UTF-8."""
    if not isinstance(text, str):
        raise PromptError(f"a text {what} must be a string, not {type(text).__name__}")
    cleaned = " ".join(text.split())
    for position, char in enumerate(cleaned):
        category = unicodedata.category(char)
        if category == "Cs":  # a lone surrogate: undecodable bytes (argv, JSON "\\udcff")
            raise PromptError(f"the {what} is not valid UTF-8 text (an undecodable byte at character {position + 1}"
                              + (f": 0x{ord(char) - 0xDC00:02x})" if 0xDC80 <= ord(char) <= 0xDCFF else ")"))
        if category == "Cc":
            raise PromptError(f"the {what} contains the control character U+{ord(char):04X} at character "
                              f"{position + 1}: remove it (terminal escapes and NULs are not text)")
    return cleaned


def _looks_like_image(data: bytes) -> bool:
    return data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def slug(text: str) -> str:
    """Lower-case ASCII words joined by '-', at most SLUG_WORDS words and SLUG_CHARS characters."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    words = re.findall(r"[a-z0-9]+", ascii_text)[:SLUG_WORDS]
    out = ""
    for word in words:
        candidate = f"{out}-{word}" if out else word
        if len(candidate) > SLUG_CHARS:
            break
        out = candidate
    return out


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PromptError(f"the seed must be an integer, not {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise PromptError(f"the seed must be between 0 and {MAX_SEED}, not {seed}")
    return seed


def generation_key(prompt: Prompt, seed: int, hash_chars: int = HASH_CHARS) -> str:
    """The partition key of (prompt, seed); the same inputs always give the same key."""
    check_seed(seed)
    words = slug(prompt.text) if prompt.text else ""
    if prompt.kind == "image":
        words = f"img-{words}" if words else "img"
    stem = f"{words}-" if words else ""
    return f"{stem}{prompt.digest[:hash_chars]}-s{seed}"


def candidate_keys(prompt: Prompt, seed: int) -> list[str]:
    """The key of (prompt, seed), then the same with more of the hash: the ledger gives a prompt
    the first one not taken by a different prompt (two prompts whose first 10 hex collide)."""
    return [generation_key(prompt, seed, chars) for chars in (HASH_CHARS, *LONGER_HASH_CHARS)]


def key_fits(key: str, digest: str, seed: int) -> bool:
    """Whether ``key`` can be the key of a prompt with sha256 ``digest`` and ``seed`` (a readable key:
    only of the text its words spell)."""
    if is_readable_key(key):
        prompt, key_seed = parse_readable_key(key)
        return prompt.digest == digest and key_seed == seed
    return is_hashed_key(key) and digest.startswith(key.rsplit("-s", 1)[0].rsplit("-", 1)[-1]) \
        and seed_of(key) == seed


def is_generation_key(key: str) -> bool:
    """A key of either form (hashed or readable)."""
    return is_hashed_key(key) or is_readable_key(key)


def is_hashed_key(key: str) -> bool:
    return isinstance(key, str) and bool(HASHED_KEY.fullmatch(key))


def is_readable_key(key: str) -> bool:
    """Words and a seed (``a-blue-vase-s3``): not a hashed key, its last word not like a hash, the seed
    written without leading zeros and in range, at most MAX_READABLE_KEY_CHARS."""
    match = READABLE_KEY.fullmatch(key) if isinstance(key, str) and len(key) <= MAX_READABLE_KEY_CHARS else None
    return bool(match) and not is_hashed_key(key) and not _CUT_HASH.fullmatch(match.group(1).rsplit("-", 1)[-1]) \
        and int(match.group(2)) <= MAX_SEED


def readable_key(text: str, seed: int) -> str:
    """The readable key of a text and a seed (its words lower-cased, ASCII): ``a-blue-vase-s3``."""
    words = re.findall(r"[a-z0-9]+", unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower())
    return f"{'-'.join(words) or 'a-blue-vase'}-s{check_seed(seed)}"


def parse_readable_key(key: str) -> tuple[Prompt, int]:
    """The prompt and seed a readable key stands for (``a-blue-vase-s3``: "a blue vase", 3)."""
    if not is_readable_key(key):
        raise PromptError(key_error(key))
    words, seed = key.rsplit("-s", 1)
    return Prompt.from_text(words.replace("-", " ")), int(seed)


def key_error(key: object) -> str:
    """One line for something that is not a key, saying what to type instead."""
    shown = repr(key[:MAX_READABLE_KEY_CHARS] if isinstance(key, str) else key)
    if not isinstance(key, str) or not key.strip():
        return f"{shown} is not a generation key: type words and a seed like a-blue-vase-s3"
    match = READABLE_KEY.fullmatch(key)
    if match and int(match.group(2)) > MAX_SEED:
        return f"{shown} is not a generation key: the seed must be between 0 and {MAX_SEED}"
    if match and _CUT_HASH.fullmatch(match.group(1).rsplit("-", 1)[-1]):
        return (f"{shown} is not a generation key: its last word looks like a cut hash (a hashed key has 10 or "
                f"more hex digits); copy the key again from the catalog, or type words and a seed like "
                f"a-blue-vase-s3")
    if match and len(key) > MAX_READABLE_KEY_CHARS:
        return (f"{shown} is not a generation key: a readable key has at most {MAX_READABLE_KEY_CHARS} characters; "
                f"request a longer prompt with the request_generations job (or `threegen add`)")
    key = key[:1000]  # a suggestion from the start of whatever was typed
    seed = re.search(r"-s0*([0-9]+)$", key, re.IGNORECASE)
    suggestion = readable_key(key.replace("-", " ")[:seed.start()] if seed else key.replace("-", " "),
                              min(int(seed.group(1)), MAX_SEED) if seed else 0)
    if len(suggestion) > MAX_READABLE_KEY_CHARS:
        return (f"{shown} is not a generation key, and too long for a readable one (at most "
                f"{MAX_READABLE_KEY_CHARS} characters): request the prompt with the request_generations job "
                f"(or `threegen add`)")
    return (f"{shown} is not a generation key: type lower-case words and a seed like {suggestion}, or request "
            f"the prompt with the request_generations job (or `threegen add`)")


def seed_of(key: str) -> int:
    """The seed a key carries (the prompt itself lives in the ledger, or, readable, in the key)."""
    if not is_generation_key(key):
        raise PromptError(key_error(key))
    return int(key.rsplit("-s", 1)[1])
