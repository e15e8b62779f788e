"""A catalog-index shard's bytes (``catalog_index.py``): its entries' shape, checked when it is read (a shard
is a cache anyone with the store can write: a wrong one is damaged and rebuilt, never a TypeError in every
catalog view), and its layout: the totals first, with their length, so ``stats`` parses only the totals and
``catalog`` only the entries. No Dagster imports."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated

from pydantic import ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from .records import Count, GenerationKey, Name, Sha256

Finite = Annotated[float, Field(allow_inf_nan=False)]

INDEX = "index/catalog"
FORMAT = 1
_HEAD = re.compile(rb'\{"format":%d,"totals_length":(\d{1,10}),"totals":' % FORMAT)  # see encode_shard
_ENTRIES = b',"entries":'


# A shard is a cache anyone with the store can write: its shape is checked when it is read, so that a
# wrong one is damaged (rebuilt), never a TypeError in every catalog view.
@with_config(ConfigDict(extra="allow"))
class _Row(TypedDict):
    key: str
    status: str


class _Entry(TypedDict):
    """One generation's entry (``CatalogIndex.compute``)."""

    key: GenerationKey
    as_of: Finite
    created_at: Finite
    row: _Row
    assets: dict[Name, tuple[Count, Count, list[Sha256]]]  # versions, bytes, the blobs they keep
    extra_bytes: Count
    blobs: dict[Sha256, Count]
    missing: list[Sha256]
    unreadable: list[str]


class _AssetTotals(TypedDict):
    versions: Count
    logical_bytes: Count
    blobs: list[Sha256]


class _StatusTotals(TypedDict):
    generations: Count
    versions: Count
    logical_bytes: Count


class _Totals(TypedDict):
    """A shard's totals (``shard_totals``)."""

    generations: Count
    logical_bytes: Count
    stale: list[GenerationKey]
    unreadable: list[tuple[Finite, GenerationKey, Count, str]]
    by_asset: dict[Name, _AssetTotals]
    by_status: dict[str, _StatusTotals]
    blobs: dict[Sha256, Count]
    missing: list[Sha256]


SHARD_ENTRIES = TypeAdapter(dict[GenerationKey, _Entry])
SHARD_TOTALS = TypeAdapter(_Totals)


def shard_path(key: str) -> str:
    return f"{INDEX}/{hashlib.sha256(key.encode()).hexdigest()[:2]}.json"


def encode_shard(entries: dict[str, dict]) -> bytes:
    """A shard: its totals first, with their length, then its entries (one JSON object)."""
    totals = json.dumps(shard_totals(entries), separators=(",", ":")).encode()
    rows = json.dumps(entries, separators=(",", ":")).encode()
    return b'{"format":%d,"totals_length":%d,"totals":%b%b%b}' % (FORMAT, len(totals), totals, _ENTRIES, rows)


def shard_parts(data: bytes) -> tuple[bytes, bytes] | None:
    """The (totals, entries) JSON of a shard written by ``encode_shard``, cut apart unparsed; None otherwise."""
    head = _HEAD.match(data)
    if head is None or not data.endswith(b"}"):
        return None
    cut = head.end() + int(head[1])
    if data[cut:cut + len(_ENTRIES)] != _ENTRIES:
        return None
    return data[head.end():cut], data[cut + len(_ENTRIES):-1]


def decode_shard(data: bytes, path: str) -> dict | None:
    """The entries of the shard at ``path`` (only the entries are parsed when it has its totals), checked:
    their shape, and that each is filed under its own key in its own shard; None if it is damaged."""
    try:
        parts = shard_parts(data)
        if parts is not None:
            body = parts[1]
        else:  # the layout before totals
            shard = json.loads(data)
            if not isinstance(shard, dict) or shard.get("format") != FORMAT or "entries" not in shard:
                return None
            body = json.dumps(shard["entries"]).encode()
        entries = SHARD_ENTRIES.validate_json(body, strict=True)
    except (ValueError, RecursionError):  # not JSON, or not a shard's entries (ValidationError: a ValueError)
        return None
    if any(entry["key"] != key or shard_path(key) != path for key, entry in entries.items()):
        return None
    return entries


def shard_totals(entries: dict[str, dict]) -> dict:
    """What a shard's entries add to the statistics (summed by ``stats`` over every shard): generations,
    versions and bytes by asset and by status; blob sizes, missing blobs and each asset's blobs as sets
    (a blob shared across shards is counted once by their union); bad records with the (created, key)
    they sort by; the keys whose row is unreadable (to be recomputed on read)."""
    by_asset: dict[str, dict] = {}
    by_status: dict[str, dict] = {}
    blobs: dict[str, int] = {}
    missing: set[str] = set()
    out = {"generations": 0, "logical_bytes": 0, "stale": [], "unreadable": []}
    for key, entry in sorted(entries.items()):
        status = entry["row"].get("status", "unknown")
        if status == "unreadable":
            out["stale"].append(key)
        if entry["assets"]:
            out["generations"] += 1
            counts = by_status.setdefault(status.split(" (")[0], {"generations": 0, "versions": 0, "logical_bytes": 0})
            counts["generations"] += 1
        for asset, (versions, nbytes, shas) in entry["assets"].items():
            row = by_asset.setdefault(asset, {"versions": 0, "logical_bytes": 0, "blobs": set()})
            row["versions"] += versions
            row["logical_bytes"] += nbytes
            row["blobs"].update(shas)
            counts["versions"] += versions
            counts["logical_bytes"] += nbytes
            out["logical_bytes"] += nbytes
        out["logical_bytes"] += entry["extra_bytes"]
        blobs.update(entry["blobs"])
        missing.update(entry["missing"])
        out["unreadable"] += [(entry["created_at"], key, i, line) for i, line in enumerate(entry["unreadable"])]
    return {**out, "by_asset": {name: {**row, "blobs": sorted(row["blobs"])} for name, row in by_asset.items()},
            "by_status": by_status, "blobs": blobs, "missing": sorted(missing)}
