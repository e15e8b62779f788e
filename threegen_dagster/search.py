"""Finding generations: by prompt text, status, score and date over the catalog's rows, and by image
similarity (the cosine of embeddings of each generation's prompt image against a query image's).

One query type (``SearchQuery``) serves ``threegen search``, the viewer server's
``/api/generations`` and the UI's ``search`` job; it is checked when built (bounded text, known
status, scores in [0, 1], ranges the right way round, a bounded page) and a bad field is one
``SearchError`` line naming it. Embeddings are cached in the store (``EmbeddingCache``: one file per
model, keyed by the image's sha256), so an image is embedded once per model. No Dagster imports.
"""

from __future__ import annotations

import errno
import hashlib
import io
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from datetime import date, datetime, time, timedelta, timezone

import numpy as np

from .storage import Store, StorageError

STATUSES = ("complete", "below threshold", "partial", "pending", "unreadable")
MAX_TEXT_CHARS = 200
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
MAX_OFFSET = 1_000_000


class SearchError(ValueError):
    """A search that cannot be run as asked; the message names the field and what it takes."""


def parse_when(value: str | None, field_name: str, end: bool = False) -> datetime | None:
    """An ISO date or date-time (UTC unless it says otherwise). A bare date as an ``end`` bound
    means the end of that day (``--until 2026-11-30`` includes the 30th)."""
    if value is None or value == "":
        return None
    text = str(value).strip()[:40]
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            return datetime.combine(date.fromisoformat(text), time.max if end else time.min, timezone.utc)
        when = datetime.fromisoformat(text.replace(" ", "T").replace("Z", "+00:00"))
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        # OverflowError when before year 1 or after 9999 in UTC (a start also once rounded up a second)
        when.astimezone(timezone.utc) + timedelta(seconds=0 if end else 1)
    except ValueError:
        raise SearchError(f"{field_name} {text!r}: use a date or date-time like 2026-11-30 or "
                          f"2026-11-30T14:00") from None
    except OverflowError:
        raise SearchError(f"{field_name} {text!r}: out of range (years 1 to 9999 in UTC)") from None
    return when


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    """Words that must all appear in the prompt (case-insensitive substrings; ``whole_words``: as words)."""
    whole_words: bool = False
    status: str = ""
    """One of STATUSES ('partial' matches 'partial (3/7)')."""
    min_score: float | None = None
    max_score: float | None = None
    since: str | None = None
    """Created at or after (ISO date or date-time, UTC)."""
    until: str | None = None
    """Created at or before (a bare date includes that day)."""
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def __post_init__(self) -> None:
        if len(self.text) > MAX_TEXT_CHARS:
            raise SearchError(f"text is {len(self.text):,} characters; at most {MAX_TEXT_CHARS}")
        if self.status and self.status not in STATUSES:
            raise SearchError(f"status {self.status[:40]!r}: one of {', '.join(STATUSES)}")
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise SearchError(f"{name} {value!r}: a number from 0 to 1")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise SearchError(f"min_score {self.min_score} is above max_score {self.max_score}")
        since, until = self.window()
        if since and until and since > until:
            raise SearchError(f"since {self.since} is after until {self.until}")
        if not (isinstance(self.limit, int) and 1 <= self.limit <= MAX_LIMIT):
            raise SearchError(f"limit {self.limit!r}: 1 to {MAX_LIMIT}")
        if not (isinstance(self.offset, int) and 0 <= self.offset <= MAX_OFFSET):
            raise SearchError(f"offset {self.offset!r}: 0 to {MAX_OFFSET:,}")

    def window(self) -> tuple[datetime | None, datetime | None]:
        return parse_when(self.since, "since"), parse_when(self.until, "until", end=True)

    @cached_property
    def _created_bounds(self) -> tuple[str | None, str | None]:
        """The window as the catalog writes ``created`` (UTC, to the second), compared as text: the
        start rounded up to a whole second, the end down (both inclusive)."""
        since, until = (when.astimezone(timezone.utc) if when else None for when in self.window())
        if since is not None and since.microsecond:
            since += timedelta(seconds=1)
        utc = [when.isoformat(" ", "seconds")[:19] if when else None for when in (since, until)]  # year 0999, not 999
        return utc[0], utc[1]

    def matches(self, row: dict) -> bool:
        """Whether one catalog row (``catalog_rows``) passes every filter."""
        if self.text and not text_matches(str(row.get("prompt") or ""), self.text, self.whole_words):
            return False
        status = str(row.get("status") or "")
        if self.status and status.split(" (")[0] != self.status:
            return False
        score = row.get("score")
        if self.min_score is not None and (score is None or score < self.min_score):
            return False
        if self.max_score is not None and (score is None or score > self.max_score):
            return False
        since, until = self._created_bounds
        if since or until:
            created = str(row.get("created") or "")
            if not _CREATED.fullmatch(created) or (since and created < since) or (until and created > until):
                return False
        return True


def text_matches(prompt: str, query: str, whole_words: bool = False) -> bool:
    """Every word of ``query`` is in ``prompt`` (case-insensitive; ``whole_words``: as a whole word)."""
    haystack = prompt.casefold()
    for word in query.casefold().split():
        if whole_words:
            if not re.search(rf"(?<!\w){re.escape(word)}(?!\w)", haystack):
                return False
        elif word not in haystack:
            return False
    return True


_CREATED = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def catalog_rows(frame) -> list[dict]:  # a pandas DataFrame
    """The catalog's rows as plain dicts (missing values None), newest first."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return sorted(rows, key=lambda r: r.get("created") or "", reverse=True)


def load_rows(artifacts, ledger, snapshot=None) -> list[dict]:
    """Every generation's catalog row, newest first: what ``threegen search``, the viewer server and
    the UI's search job search (``snapshot``: ``artifacts.snapshot()`` when the caller has it)."""
    from .catalog import build_catalog, to_frame
    from .catalog_index import CatalogIndex

    if snapshot is None:  # the catalog index: no read of the whole store (catalog_index.py)
        return catalog_rows(to_frame(CatalogIndex(artifacts, ledger).rows()))
    return catalog_rows(build_catalog(artifacts, ledger, snapshot))


@dataclass(frozen=True)
class Page:
    rows: list[dict]
    total: int
    """How many rows matched, before the page was cut."""
    query: SearchQuery

    def to_dict(self) -> dict:
        shown = self.query.offset + len(self.rows)
        return {"total": self.total, "offset": self.query.offset, "limit": self.query.limit,
                "next_offset": shown if shown < self.total else None, "generations": self.rows}


def search(rows: Iterable[dict], query: SearchQuery) -> Page:
    """The rows passing ``query``, in the order given, cut to the query's page."""
    found = [row for row in rows if query.matches(row)]
    return Page(found[query.offset:query.offset + query.limit], len(found), query)


# -- image similarity ------------------------------------------------------------------------------

Embedder = Callable[[Sequence], np.ndarray]
"""Images (PIL) -> one L2-normalised row per image."""


def cosine_ranking(target: np.ndarray, vectors: dict[str, np.ndarray]) -> list[tuple[str, float]]:
    """(name, cosine with ``target``), most similar first (ties by name)."""
    unit = target / (np.linalg.norm(target) or 1.0)
    scored = [(name, float(np.dot(unit, v / (np.linalg.norm(v) or 1.0)))) for name, v in vectors.items()]
    return sorted(scored, key=lambda pair: (-pair[1], pair[0]))


class EmbeddingCache:
    """Image sha256 -> embedding, for one model (``tag``), in one store object
    (``search/embeddings/<tag>.npz``): read once per search, written only when something was added.
    It is a cache: a damaged file is ignored (and rewritten), concurrent writers at worst both
    compute an embedding."""

    def __init__(self, store: Store, tag: str) -> None:
        if not re.fullmatch(r"[0-9a-z_-]{1,64}", tag):
            raise SearchError(f"embedding cache tag {tag[:70]!r} is not a short lowercase name")
        self.store, self.path = store, f"search/embeddings/{tag}.npz"
        self.vectors: dict[str, np.ndarray] = {}
        self.damaged = ""
        self._dirty = False
        try:
            with np.load(io.BytesIO(store.read(self.path)), allow_pickle=False) as saved:
                shas, matrix = saved["sha256"], saved["vectors"]
            if matrix.ndim != 2 or len(shas) != len(matrix):
                raise ValueError(f"{len(shas)} hashes for a {matrix.shape} matrix")
            self.vectors = {str(s): row for s, row in zip(shas, matrix.astype(np.float32))}
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise
        except (ValueError, KeyError, OSError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile,
                zlib.error) as exc:  # not an npz (a .npy, cut short, corrupt), or not ours: rebuilt
            self.damaged = f"{store.uri(self.path)} was unreadable ({exc}); it is rebuilt"

    def missing(self, shas: Iterable[str]) -> list[str]:
        return sorted({s for s in shas if s not in self.vectors})

    def add(self, sha: str, vector: np.ndarray) -> None:
        self.vectors[sha] = np.asarray(vector, np.float32).ravel()
        self._dirty = True

    def save(self) -> bool:
        if not self._dirty or not self.vectors:
            return False
        widths = {v.shape[0] for v in self.vectors.values()}
        if len(widths) != 1:  # a model changed under the same tag: keep the newest width only
            newest = next(reversed(self.vectors.values())).shape[0]
            self.vectors = {s: v for s, v in self.vectors.items() if v.shape[0] == newest}
        shas = sorted(self.vectors)
        buf = io.BytesIO()
        np.savez(buf, sha256=np.array(shas), vectors=np.stack([self.vectors[s] for s in shas]))
        self.store.write(self.path, buf.getvalue(), content_type="application/octet-stream")
        self._dirty = False
        return True


def model_tag(*parts: object) -> str:
    """A cache tag for a model from what identifies it (name, weights' sizes and times, dtype)."""
    return "m-" + hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ImageHit:
    row: dict
    similarity: float


def image_search(rows: list[dict], image_sha: dict[str, str], query_image, embed: Embedder,
                 cache: EmbeddingCache, load_image: Callable[[str], object], query: SearchQuery,
                 problems: list[str] | None = None) -> tuple[list[ImageHit], int]:
    """Rows passing ``query``'s filters, ranked by the cosine between ``query_image``'s embedding and
    their prompt image's (``image_sha``: key -> the image's sha256; ``load_image``: key -> PIL
    image, called only for images the cache lacks). A row whose image cannot be read is left out
    and named in ``problems``. Returns the page of hits and how many rows were ranked."""
    wanted = [row for row in rows if row.get("key") in image_sha and query.matches(row)]
    by_sha: dict[str, str] = {}
    for row in wanted:
        by_sha.setdefault(image_sha[row["key"]], row["key"])
    todo = cache.missing(by_sha)
    loaded, keys = [], []
    for sha in todo:
        try:
            loaded.append(load_image(by_sha[sha]))
            keys.append(sha)
        except (StorageError, ValueError) as exc:
            if problems is not None:
                problems.append(f"{by_sha[sha]}: {exc}")
    if loaded:
        for sha, vector in zip(keys, embed(loaded)):
            cache.add(sha, vector)
        cache.save()
    target = embed([query_image])[0]
    vectors = {row["key"]: cache.vectors[image_sha[row["key"]]] for row in wanted
               if image_sha[row["key"]] in cache.vectors}
    ranking = cosine_ranking(target, vectors)
    rows_by_key = {row["key"]: row for row in wanted}
    hits = [ImageHit(rows_by_key[k], round(s, 6)) for k, s in ranking]
    return hits[query.offset:query.offset + query.limit], len(hits)


class NoEmbedder(ValueError):
    """No embedding model is configured for image search."""


def clip_embedder(backend: str, options: dict) -> tuple[str, Embedder]:
    """(cache tag, embed) from the scorer's OpenCLIP model (its ``score`` backend and options)."""
    from pathlib import Path

    from .backends import registry

    if backend != "models":
        raise NoEmbedder("image search needs an embedding model: set THREEGEN_SCORER=models with "
                         "THREEGEN_CLIP_MODEL and THREEGEN_QUALITY_HEAD (the scorer's OpenCLIP embeds the images)")
    engine = registry.engine("score", "models", options, load=False)
    clip = Path(engine.config.clip_model).expanduser()
    weights = sorted((p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in clip.glob("*")
                     if p.is_file()) if clip.is_dir() else []
    return model_tag("openclip", engine.config.clip_model, weights, engine.config.dtype), engine.embed_images


def prompt_image_shas(artifacts, keys: list[str], problems: list[str]) -> dict[str, str]:
    """Generation key -> the sha256 of its newest prompt image (``generated_image``: the text's
    picture, or the image prompt itself), read from its version records; a pruned one keeps its
    record, so a cached embedding still serves. A record that cannot be read is named in ``problems``."""
    shas = {}
    for key in keys:
        try:
            manifest = artifacts.latest(key, "generated_image")
        except StorageError as exc:
            problems.append(str(exc))
            continue
        if manifest is not None:
            shas[key] = manifest.sha256
    return shas


def rank_by_image(store: Store, artifacts, rows: list[dict], image, query: SearchQuery, backend: str,
                  options: dict, problems: list[str]) -> tuple[list[dict], int]:
    """The rows passing ``query``, ranked by how alike their prompt image is to ``image`` (a PIL image), each
    with its ``similarity``; embeddings cached in the store per model. ``NoEmbedder`` when none is set."""
    from .codecs import stored_image

    tag, embed = clip_embedder(backend, options)
    cache = EmbeddingCache(store, tag)
    if cache.damaged:
        problems.append(cache.damaged)
    rows = [row for row in rows if query.matches(row)]  # filtered first: only their records are read
    shas = prompt_image_shas(artifacts, [row["key"] for row in rows if row.get("status") != "unreadable"], problems)
    hits, total = image_search(rows, shas, image, embed, cache,
                               lambda key: stored_image(artifacts.load(key, "generated_image")[1]), query, problems)
    return [{**hit.row, "similarity": hit.similarity} for hit in hits], total
