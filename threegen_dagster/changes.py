"""The change journal: which generations changed since the catalog index last looked at them.

Whatever changes a generation's records (a new version, retention pruning or dropping versions, a
keep mark) leaves a marker ``index/changed/<key>/<time>-<random>`` after the change. The catalog
index (``catalog_index.py``) lists the markers, recomputes those generations' rows from the store,
writes them, and only then deletes the markers it listed: a change made while it worked leaves a
marker it did not see, so the next refresh picks it up and no change is ever lost. The cost of a
refresh is the number of generations changed, never the size of the store. No Dagster imports.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable

from .storage import Store

CHANGES = "index/changed"


def mark_changed(store: Store, keys: Iterable[str]) -> None:
    """Note that these generations changed (call it after the change is written)."""
    for key in sorted(set(keys)):
        store.write(f"{CHANGES}/{key}/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}", b"")


def pending(store: Store) -> dict[str, list[str]]:
    """Generation key -> the paths of its markers."""
    out: dict[str, list[str]] = {}
    for info in store.list(CHANGES):
        key, _, name = info.path[len(CHANGES) + 1:].partition("/")
        if name:
            out.setdefault(key, []).append(info.path)
    return out


def clear(store: Store, paths: Iterable[str]) -> None:
    """Delete markers that were listed before the rows they announced were recomputed."""
    for path in paths:
        store.delete(path)
