"""The catalog index: the generation catalog and the store statistics kept up to date one generation at
a time, so that neither a refresh after a run nor ``threegen catalog`` / ``stats`` reads the whole store.

Each generation has one entry: its catalog row (``catalog.catalog_row``) and what it adds to the
statistics (versions and bytes by asset, the blobs its versions keep alive and which of them are
missing, the records that could not be read). Entries live in 256 shard files in the store
(``index/catalog/<xx>.json``, ``xx`` from the sha256 of the key), each replaced with a
compare-and-swap, so concurrent refreshes never lose each other's rows and a refresh rewrites one
small shard per generation it touched, whatever the size of the store. Each shard also carries its
entries' statistics summed when it is written (``totals``, first in the file with its length, so
``stats`` parses only the totals and ``catalog`` only the rows): counts and bytes add up across
shards; blob sizes, missing blobs and each asset's blobs are kept as sets, so de-duplication across
shards stays exact (a union, not a sum).

Which generations to recompute comes from the change journal (``changes.py``): every version
written, pruned or dropped, and every keep mark, leaves a marker, so a refresh recomputes exactly
the generations that changed. Reading the index reconciles it with the ledger's listing (names
only): a generation registered but never indexed is computed, one removed is dropped. ``rebuild``
recomputes every entry from the store (on demand: ``threegen catalog --rebuild``). What only a full
scan can see (unreferenced blobs; a blob deleted behind the store's back) is ``ArtifactStore.stats``
(``threegen stats --full``). No Dagster imports.
"""

from __future__ import annotations

import errno
import json
import time
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydantic import ValidationError

from . import changes
from .artifacts import _VERSION, ArtifactStore, Manifest, blob_path, scope
from .catalog import catalog_row, latest_manifests, unreadable_row
from .catalog_shard import (FORMAT, INDEX, SHARD_TOTALS, decode_shard, encode_shard, shard_parts, shard_path,
                            shard_totals)
from .ledger import LEDGER, Ledger
from .records import CorruptRecord, read_each
from .storage import Conflict, StorageError

BUILT = "index/built.json"  # written by the first rebuild: from then on the journal names every change


@dataclass
class Refreshed:
    """What one refresh did: the rows it wrote, the generations it dropped, the bad records it met."""

    rows: list[dict] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


class CatalogIndex:
    def __init__(self, artifacts: ArtifactStore, ledger: Ledger, threads: int | None = None) -> None:
        self.artifacts, self.ledger, self.store = artifacts, ledger, artifacts.store
        self.threads = threads or (1 if self.store.cheap_stat else 16)  # S3: round trips in parallel

    # -- one generation ----------------------------------------------------------------------
    def compute(self, key: str) -> dict:
        """The entry of ``key`` from the store (its versions, its ledger entry, its blobs); its row is
        None if the ledger does not know the key (the entry is then dropped from the index)."""
        as_of = time.time()
        try:
            entry = self.ledger.find(key)
            row = None
        except CorruptRecord as exc:
            entry, row = None, unreadable_row(exc)
        files = [i for i in self.store.list(scope(key)) if _VERSION.search(i.path)]
        bad: list[CorruptRecord] = []
        found = self._map(lambda i: read_each(lambda x: self.artifacts.read_manifest(x.path, x.size), [i], bad),
                          files)  # each file read on its own, so a bad one is collected, not raised
        manifests = [m for one in found for m in one]
        sizes = {sha: size for m in manifests for sha, size in _refs(m)}
        present = dict(zip(sizes, self._map(lambda sha: self.store.exists(blob_path(sha)), list(sizes))))
        if entry is not None:
            row = catalog_row(entry, latest_manifests(manifests), {s for s, ok in present.items() if ok})
        assets: dict[str, list] = {}
        for m in manifests:
            refs = m.blobs()
            usage = assets.setdefault(m.asset, [0, 0, []])
            usage[0] += 1
            usage[1] += m.bytes if refs else 0
            if refs and refs[0] not in usage[2]:
                usage[2].append(refs[0])
        return {"key": key, "as_of": as_of, "created_at": entry.created_at if entry else 0.0, "row": row,
                "assets": assets, "extra_bytes": sum(size for m in manifests if m.pruned_at is None
                                                     for size in (e["bytes"] for e in m.extras.values())),
                "blobs": sizes, "missing": sorted(s for s, ok in present.items() if not ok),
                "unreadable": [str(e) for e in bad]}

    def _map(self, fn, items: list) -> list:
        if self.threads <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(self.threads, len(items))) as pool:
            return list(pool.map(fn, items))

    # -- refresh -----------------------------------------------------------------------------
    def refresh(self, keys: Iterable[str] = ()) -> Refreshed:
        """Recompute ``keys`` and every generation the change journal names; then clear the markers
        that were listed before the recomputation (later ones stay for the next refresh)."""
        marked = changes.pending(self.store)
        done = self._update(set(keys) | set(marked))
        changes.clear(self.store, [path for paths in marked.values() for path in paths])
        return done

    def rebuild(self) -> Refreshed:
        """Every entry recomputed from the store; entries the ledger no longer knows are dropped."""
        marked = changes.pending(self.store)
        indexed = {key for shard in self._shards() for key in shard or {}}
        done = self._update(self._ledger_keys() | indexed)
        changes.clear(self.store, [path for paths in marked.values() for path in paths])
        self.store.write(BUILT, json.dumps({"format": FORMAT, "built_at": time.time()}).encode(),
                         content_type="application/json")
        return done

    def _update(self, keys: set[str]) -> Refreshed:
        done = Refreshed()
        computed = self._map(self.compute, sorted(keys))
        by_shard: dict[str, dict[str, dict | None]] = defaultdict(dict)
        for key, entry in zip(sorted(keys), computed):
            done.unreadable += entry["unreadable"]
            if entry["row"] is None:  # not (or no longer) in the ledger
                by_shard[shard_path(key)][key] = None
                done.dropped.append(key)
            else:
                by_shard[shard_path(key)][key] = entry
                done.rows.append(entry["row"])
        self._map(lambda item: self._merge(*item), list(by_shard.items()))
        return done

    def _merge(self, path: str, entries: dict[str, dict | None]) -> None:
        """Put ``entries`` into the shard at ``path`` (None: drop the key) with a compare-and-swap;
        an entry computed earlier than the one stored does not replace it."""
        for attempt in range(50):
            shard, tag = self._read_shard(path)
            for key, entry in entries.items():
                if entry is None:
                    shard.pop(key, None)
                elif key not in shard or shard[key].get("as_of", 0) <= entry["as_of"]:
                    shard[key] = entry
            body = encode_shard(shard)
            try:
                self.store.write(path, body, if_absent=tag is None, if_match=tag, content_type="application/json")
                return
            except Conflict:
                time.sleep(min(0.002 * 2 ** attempt, 0.1))
        raise Conflict(errno.EAGAIN, f"{self.store.uri(path)}: still contended after 50 attempts")

    def _read_shard(self, path: str) -> tuple[dict, str | None]:
        try:
            data, tag = self.store.read_tagged(path)
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return {}, None
        return decode_shard(data, path) or {}, tag  # a damaged shard is a cache: rebuilt

    def _shards(self) -> list[dict | None]:
        paths = [i.path for i in self.store.list(INDEX) if i.path.endswith(".json")]
        return self._map(self._load_shard, paths)

    def _load_shard(self, path: str) -> dict | None:
        """A shard's entries for reading (no version tag to compute); None if it is damaged."""
        try:
            return decode_shard(self.store.read(path), path)
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return {}

    def _shard_totals(self) -> list[dict | None]:
        paths = [i.path for i in self.store.list(INDEX) if i.path.endswith(".json")]
        return self._map(self._load_totals, paths)

    def _load_totals(self, path: str) -> dict | None:
        """A shard's totals, parsed without its rows when it was written with them (an older shard's,
        or damaged totals, are summed from its entries); None if it is damaged, or empty (see ``entries``)."""
        try:
            data = self.store.read(path)
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return shard_totals({})
        parts = shard_parts(data)
        if parts is not None and parts[1] != b"{}":
            try:
                return SHARD_TOTALS.validate_json(parts[0], strict=True)
            except ValidationError:
                pass  # damaged totals: summed from the entries, below, if those are sound
        entries = decode_shard(data, path)
        return shard_totals(entries) if entries else None

    def _ledger_keys(self) -> set[str]:
        return {i.path[len(LEDGER) + 1:-5] for i in self.store.list(LEDGER)
                if i.path.endswith(".json") and i.path.count("/") == 1}

    # -- reading -----------------------------------------------------------------------------
    def entries(self) -> list[dict]:
        """Every generation's entry, oldest first. Generations the change journal names (registered,
        changed, removed) and unreadable ones are recomputed first; a store indexed for the first
        time is rebuilt (once); a damaged shard is rebuilt from the ledger's listing. So is an empty
        one: emptied by removals, or overwritten; only a small store has one, so the listing is cheap."""
        if not self.store.exists(BUILT):
            self.rebuild()
        shards = self._shards()
        indexed = {key: entry for shard in shards for key, entry in (shard or {}).items()}
        stale = {key for key, entry in indexed.items() if entry["row"].get("status") == "unreadable"}
        redo = stale | set(changes.pending(self.store))
        if not all(shards):  # a damaged or empty shard: find its generations in the ledger
            redo |= {key for key in self._ledger_keys() if key not in indexed}
        if redo:
            self.refresh(redo)
            indexed = {key: entry for shard in self._shards() for key, entry in (shard or {}).items()}
        return sorted(indexed.values(), key=lambda e: (e["created_at"], e["key"]))

    def rows(self) -> list[dict]:
        return [entry["row"] for entry in self.entries()]

    def stats(self) -> dict:
        """``ArtifactStore.stats``'s figures from the shards' totals and the (small) catalog tables'
        versions. Only blobs that versions refer to are counted: ``unreferenced_*`` are None (a full scan
        counts them). When something is to be reconciled first (see ``entries``) the rows are read once."""
        totals = self._shard_totals() if self.store.exists(BUILT) else [None]
        if any(t is None or t["stale"] for t in totals) or changes.pending(self.store):
            self.entries()  # recomputes what changed, what is unreadable, what a damaged shard held
            totals = self._shard_totals()
        totals = [t for t in totals if t is not None]
        bad: list[CorruptRecord] = []
        tables = self.artifacts._read_all([i for i in self.store.list("catalog") if _VERSION.search(i.path)], bad)
        table_sizes = {sha: size for m in tables for sha, size in _refs(m)}
        present = dict(zip(table_sizes, self._map(lambda s: self.store.exists(blob_path(s)), list(table_sizes))))
        sizes, missing = dict(table_sizes), {s for s, ok in present.items() if not ok}
        by_asset: dict[str, dict] = defaultdict(lambda: {"versions": 0, "logical_bytes": 0, "blobs": set()})
        by_status: dict[str, dict] = defaultdict(lambda: {"generations": 0, "versions": 0, "logical_bytes": 0})
        logical = 0
        for t in totals:
            for name, row in t["by_asset"].items():
                mine = by_asset[name]
                mine["versions"] += row["versions"]
                mine["logical_bytes"] += row["logical_bytes"]
                mine["blobs"].update(row["blobs"])
            for name, row in t["by_status"].items():
                for field_name in ("generations", "versions", "logical_bytes"):
                    by_status[name][field_name] += row[field_name]
            logical += t["logical_bytes"]
            sizes.update(t["blobs"])
            missing.update(t["missing"])
        for m in tables:
            refs = m.blobs()
            nbytes = m.bytes if refs else 0
            by_asset[m.asset]["versions"] += 1
            by_asset[m.asset]["logical_bytes"] += nbytes
            by_asset[m.asset]["blobs"].update(refs[:1])
            by_status["catalog"]["versions"] += 1
            by_status["catalog"]["logical_bytes"] += nbytes
            logical += nbytes + sum(e["bytes"] for e in m.extras.values() if refs)
        if tables:
            by_status["catalog"]["generations"] = 1
        stored = {sha: size for sha, size in sizes.items() if sha not in missing}
        referenced = sum(stored.values())
        unreadable = sorted(line for t in totals for line in t["unreadable"])
        return {
            "store": self.store.location, "source": "index",
            "generations": sum(t["generations"] for t in totals),
            "versions": sum(row["versions"] for row in by_asset.values()),
            "blobs": len(stored), "logical_bytes": logical, "stored_bytes": referenced,
            "unreferenced_blobs": None, "unreferenced_bytes": None,
            "dedup_ratio": round(logical / referenced, 3) if referenced else None, "missing_blobs": len(missing),
            "by_asset": {name: {"versions": row["versions"], "logical_bytes": row["logical_bytes"],
                                "stored_bytes": sum(stored.get(s, 0) for s in row["blobs"]),
                                "unique_blobs": len(row["blobs"])} for name, row in sorted(by_asset.items())},
            "by_status": {name: row for name, row in sorted(by_status.items())},
            "unreadable_records": [item[-1] for item in unreadable] + [str(e) for e in bad],
        }


def _refs(m: Manifest) -> list[tuple[str, int]]:
    """(sha, size) of every blob this version keeps alive."""
    if m.pruned_at is not None:
        return []
    return [(m.sha256, m.bytes), *((e["sha256"], e["bytes"]) for e in m.extras.values())]


def store_stats(artifacts: ArtifactStore, ledger: Ledger, full: bool = False) -> dict:
    """``threegen stats``: from the index, or (``full``) from a scan of every record and blob."""
    if not full:
        return CatalogIndex(artifacts, ledger).stats()
    from .catalog import build_catalog, statuses

    snapshot = artifacts.snapshot()
    return {**artifacts.stats(statuses(build_catalog(artifacts, ledger, snapshot)), snapshot), "source": "full"}
