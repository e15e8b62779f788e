"""A round's checked outputs on the CDN, where validators fetch them (``SN17-NOW.md`` section 3): each one
uploaded to the CDN prefix (an ``s3://bucket/prefix``, or a folder a web server serves) as ``{stem}.<ext>``
(``.ply``, ``.glb`` or ``.js`` by competition), then every public URL ``{cdn_url}/{stem}.<ext>`` read back
as a validator reads it (no redirects followed, at most the file's own size plus one byte, a timeout per
try, a few tries) and its sha256 compared with what was uploaded. An output that failed its rules check is
never published. The result is kept in the store (``rounds/<N>/publication.json``) for the round's report.
No Dagster imports."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from ..storage import Store, StorageError
from .source import FetchError, fetch_url

EXTENSIONS = {0: "ply", 1: "glb", 2: "js"}  # the file each competition's validators fetch
CONTENT_TYPES = {"ply": "application/octet-stream", "glb": "model/gltf-binary", "js": "text/javascript"}
MAX_OUTPUT_BYTES = {0: 200 * 2**20, 1: 200 * 2**20, 2: 1_048_576}  # over this, validators count it missing
CDN_PREFIX = ""  # THREEGEN_CDN_PREFIX: unset until the miner names its bucket
CDN_URL = ""  # THREEGEN_CDN_URL: the public base URL of that prefix
STEM = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class PublishError(ValueError):
    """Publishing cannot start (no CDN configured, a bad URL); the message says what to set."""


def check_cdn_url(url: str) -> str:
    """The public base URL, without a trailing slash: http(s), a host, no query or fragment."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
            or parts.username or len(url) > 512:
        raise PublishError(f"the CDN URL {url[:100]!r} is not a public base URL: use https://HOST[/PATH]")
    return url.rstrip("/")


def public_url(cdn_url: str, stem: str, ext: str) -> str:
    return f"{cdn_url.rstrip('/')}/{stem}.{ext}"


@dataclass(frozen=True)
class Output:
    """One checked output of the round: its stem, bytes, and whether it passed its rules."""

    stem: str
    data: bytes
    passed: bool
    rules_failed: str = ""


@dataclass
class Publication:
    round: int
    competition: int
    cdn_url: str
    urls: dict[str, str] = field(default_factory=dict)  # stem -> public URL, every uploaded output
    sha256: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    verified: list[str] = field(default_factory=list)  # stems whose URL answered with the right bytes
    failures: dict[str, str] = field(default_factory=dict)  # stem -> why it is not (or not verifiably) out
    skipped: dict[str, str] = field(default_factory=dict)  # stem -> why it was not uploaded (failed its check)
    unchanged: int = 0  # uploads skipped: the CDN already held the same bytes
    at: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()


def publication_path(number: int) -> str:
    return f"rounds/{number}/publication.json"


def upload(cdn: Store, outputs: Iterable[Output], *, number: int, competition: int, cdn_url: str) -> Publication:
    """Each passed output to ``cdn`` as ``{stem}.<ext>`` (skipped when it holds those bytes already); a failed
    upload is that stem's failure only. ``outputs`` may be a generator: one output's bytes are held at a time."""
    ext = EXTENSIONS[competition]
    out = Publication(number, competition, check_cdn_url(cdn_url), at=time.time())
    for item in outputs:
        if not STEM.match(item.stem):
            out.failures[item.stem[:140]] = "not a plain stem ([A-Za-z0-9_-]{1,128}): not published"
            continue
        if not item.passed:
            out.skipped[item.stem] = f"failed its rules check ({item.rules_failed or 'see the check'}): not published"
            continue
        if len(item.data) > MAX_OUTPUT_BYTES[competition]:
            out.failures[item.stem] = f"{len(item.data):,} bytes; validators fetch at most {MAX_OUTPUT_BYTES[competition]:,}"
            continue
        name, digest = f"{item.stem}.{ext}", hashlib.sha256(item.data).hexdigest()
        try:
            if cdn.holds(name, item.data, digest):
                out.unchanged += 1
            else:
                cdn.write(name, item.data, sha256=digest, content_type=CONTENT_TYPES[ext])
        except StorageError as exc:
            out.failures[item.stem] = f"upload of {name} failed: {exc}"
            continue
        out.urls[item.stem], out.sha256[item.stem] = public_url(out.cdn_url, item.stem, ext), digest
        out.sizes[item.stem] = len(item.data)
    return out


def verify_one(url: str, sha256: str, size: int, *, timeout_s: float, tries: int, pause_s: float = 1.0) -> str:
    """'' when ``url`` answers 2xx, without a redirect, with exactly the bytes whose sha256 is ``sha256``; else
    why not. Reads at most ``size + 1`` bytes."""
    try:
        body = fetch_url(url, max_bytes=size, timeout_s=timeout_s, tries=tries, pause_s=pause_s, what=url,
                         redirects=False)
    except FetchError as exc:
        return str(exc)
    got = hashlib.sha256(body).hexdigest()
    if got != sha256:
        return f"{url}: answers {len(body):,} bytes with sha256 {got[:16]}..., not the {size:,} uploaded ({sha256[:16]}...)"
    return ""


def verify(publication: Publication, *, timeout_s: float = 30.0, tries: int = 3,
           workers: int = 8, pause_s: float = 1.0,
           check: Callable[..., str] = verify_one) -> Publication:
    """Read every uploaded URL back, ``workers`` at a time; each stem verified or failed with its reason."""
    stems = sorted(publication.urls)

    def one(stem: str) -> tuple[str, str]:
        return stem, check(publication.urls[stem], publication.sha256[stem], publication.sizes[stem], timeout_s=timeout_s,
                           tries=tries, pause_s=pause_s)

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(stems) or 1))) as pool:
        for stem, error in pool.map(one, stems):
            if error:
                publication.failures[stem] = error
            else:
                publication.verified.append(stem)
    return publication


def load_publication(store: Store, number: int) -> dict | None:
    try:
        return json.loads(store.read(publication_path(number)))
    except StorageError:
        return None
    except ValueError:
        return {"error": f"{publication_path(number)} is not JSON"}
