"""``threegen search``: find generations by prompt text, status, score and date, or rank them by how
alike their prompt image is to a given image (``--image``, with the scorer's OpenCLIP model when
``THREEGEN_SCORER=models``). The logic is ``search.py``; this is the command's body."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .keys import MAX_IMAGE_BYTES, Prompt, PromptError
from .search import (
    DEFAULT_LIMIT, MAX_LIMIT, STATUSES, EmbeddingCache, SearchError, SearchQuery, image_search,
    load_rows, model_tag, search,
)
from .settings import Settings
from .storage import StorageError
from .stores import OpenedStore

COLUMNS = ("key", "prompt", "seed", "status", "score", "created")


def add_parser(sub) -> None:
    """Register ``threegen search`` on the CLI's subparsers."""
    cmd = sub.add_parser("search", help="find generations by prompt text, status, score, date or image similarity")
    cmd.add_argument("text", nargs="?", default="", help="words that must all be in the prompt (any case)")
    cmd.add_argument("--words", action="store_true", help="match whole words only ('cup' does not find 'cupboard')")
    cmd.add_argument("--status", choices=STATUSES)
    cmd.add_argument("--min-score", type=float, metavar="X", help="score at least X (0..1)")
    cmd.add_argument("--max-score", type=float, metavar="X", help="score at most X (0..1)")
    cmd.add_argument("--since", metavar="DATE", help="created on or after (2026-11-30 or 2026-11-30T14:00, UTC)")
    cmd.add_argument("--until", metavar="DATE", help="created on or before (a bare date includes that day)")
    cmd.add_argument("--image", metavar="FILE", help="rank by similarity to this image (needs THREEGEN_SCORER=models)")
    cmd.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help=f"at most this many (1..{MAX_LIMIT})")
    cmd.add_argument("--offset", type=int, default=0, help="skip this many matches first")
    cmd.add_argument("--json", action="store_true")
    cmd.set_defaults(run=cmd_search)


def query_of(args: argparse.Namespace) -> SearchQuery:
    try:
        return SearchQuery(text=args.text or "", whole_words=args.words, status=args.status or "",
                           min_score=args.min_score, max_score=args.max_score, since=args.since, until=args.until,
                           limit=args.limit, offset=args.offset)
    except SearchError as exc:
        raise PromptError(f"search: {exc}") from None


def query_image(path: str, settings: Settings):
    """The query image, bounded and checked as an image prompt is (size, format, pixels)."""
    from .codecs import stored_image

    file = Path(path)
    if not file.is_file():
        raise PromptError(f"--image {file}: no such file")
    if file.stat().st_size > MAX_IMAGE_BYTES:
        raise PromptError(f"--image {file}: {file.stat().st_size:,} bytes; the limit is {MAX_IMAGE_BYTES:,}")
    return stored_image(Prompt.from_image(file.read_bytes(), max_pixels=settings.max_image_pixels).image)


def clip_embedder(settings: Settings):
    """(tag, embed) from the configured scorer's OpenCLIP model; PromptError when none is configured."""
    from .backends import registry

    backend, options = settings.models.get("score", ("proxy", {}))
    if backend != "models":
        raise PromptError("image search needs an embedding model: set THREEGEN_SCORER=models with "
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


def run_image_search(opened: OpenedStore, settings: Settings, rows: list[dict], image, query: SearchQuery,
                     problems: list[str]) -> tuple[list[dict], int]:
    from .codecs import stored_image

    tag, embed = clip_embedder(settings)
    artifacts = opened.artifacts()
    cache = EmbeddingCache(opened.store(), tag)
    if cache.damaged:
        problems.append(cache.damaged)
    rows = [row for row in rows if query.matches(row)]  # filtered first: only their records are read
    shas = prompt_image_shas(artifacts, [row["key"] for row in rows if row.get("status") != "unreadable"], problems)
    hits, total = image_search(rows, shas, image, embed, cache,
                               lambda key: stored_image(artifacts.load(key, "generated_image")[1]), query, problems)
    return [{**hit.row, "similarity": hit.similarity} for hit in hits], total


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from .catalog import markdown_table

    query = query_of(args)
    image = query_image(args.image, settings) if args.image else None
    opened = OpenedStore.from_settings(settings)
    rows = load_rows(opened.artifacts(), opened.ledger())
    problems: list[str] = []
    if image is not None:
        shown, total = run_image_search(opened, settings, rows, image, query, problems)
    else:
        page = search(rows, query)
        shown, total = page.rows, page.total
    if args.json:
        print(json.dumps({"total": total, "offset": query.offset, "limit": query.limit, "generations": shown},
                         indent=1, default=str))
    else:
        columns = COLUMNS + (("similarity",) if image is not None else ())
        print(markdown_table([{c: row.get(c) for c in columns} for row in shown], columns) if shown else "(no matches)")
        print(f"{len(shown)} of {total} match(es)" + (f", from {query.offset + 1}" if query.offset else ""),
              file=sys.stderr)
    for line in problems:
        print(f"threegen: {line}", file=sys.stderr)
    return 0
