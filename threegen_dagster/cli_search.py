"""``threegen search``: find generations by prompt text, status, score and date, or rank them by how
alike their prompt image is to a given image (``--image``, with the scorer's OpenCLIP model when
``THREEGEN_SCORER=models``). The logic is ``search.py``; this is the command's body."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .keys import MAX_IMAGE_BYTES, Prompt, PromptError
from .search import DEFAULT_LIMIT, MAX_LIMIT, STATUSES, NoEmbedder, SearchError, SearchQuery, load_rows, rank_by_image, search
from .settings import Settings
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


def cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from .catalog import markdown_table

    query = query_of(args)
    image = query_image(args.image, settings) if args.image else None
    opened = OpenedStore.from_settings(settings)
    rows = load_rows(opened.artifacts(), opened.ledger())
    problems: list[str] = []
    if image is not None:
        backend, options = settings.models.get("score", ("proxy", {}))
        try:
            shown, total = rank_by_image(opened.store(), opened.artifacts(), rows, image, query, backend, options,
                                         problems)
        except NoEmbedder as exc:
            raise PromptError(str(exc)) from None
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
