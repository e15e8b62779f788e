"""Content-addressed, versioned artifacts over any ``Store`` (local folder or S3 bucket).

Bytes live once, named by their SHA-256 (``blobs/sha256/ab/cd/<sha>``); identical bytes from
any generation, asset or run share one blob. Every materialization of (generation, asset) is a
new numbered version, a small JSON manifest naming its blob, format, size, hash, run and
metadata (``generations/<key>/<asset>/v000003.json``; unpartitioned assets under
``catalog/<asset>/``). The blob is written before its manifest, so a manifest never points at
bytes that are not there; reads re-hash and refuse bytes that do not match, and a write that
finds its bytes' blob already stored checks it and replaces a bad copy. A manifest that cannot
be read is a ``CorruptRecord`` naming it; whole-store views skip it and report it. No Dagster
imports.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Annotated, NamedTuple

from pydantic import Field, TypeAdapter
from typing_extensions import TypedDict

from .changes import mark_changed
from .records import (MAX_RECORD_BYTES, Count, CorruptRecord, Extension, GenerationKey, Name, Sha256, corrupt,
                      named_shas, parse, read_each, read_record)
from .storage import Conflict, ObjectInfo, Store, StorageError, TooLarge

BLOBS = "blobs/sha256"
CONTENT_TYPES = {"png": "image/png", "glb": "model/gltf-binary", "json": "application/json", "csv": "text/csv",
                 "ply": "application/octet-stream", "spz": "application/octet-stream", "js": "text/javascript"}
# each asset's file type: local file names (``threegen get``) come from here, never from a stored record
EXTENSIONS = {"generated_image": "png", "foreground_image": "png", "initial_mesh": "glb", "refined_mesh": "glb",
              "gaussian_splat": "ply", "compressed_splat": "spz", "validation_score": "json",
              "generation_catalog": "csv", "validator_records": "csv", "sn17_submissions": "csv",
              "comp0_splat": "ply", "comp1_mesh": "glb", "comp2_module": "js"}  # SN17 rounds' outputs
LOOK_FIRST_BYTES = 8 * 2**20  # above this, a HEAD costs far less than re-uploading duplicate bytes
# A blob collection (retention) holds this while it deletes; it names the blobs it condemned. A writer
# whose new version uses one of them waits for it to finish (at most until the lock is GC_WAIT_S old,
# by the store's clock), then re-stores what is gone.
GC_LOCK = "gc/lock.json"
GC_WAIT_S = 300.0
_VERSION = re.compile(r"v(\d{6,})\.json$")


class IntegrityError(StorageError):
    """Stored bytes that are missing or do not hash to what their manifest says."""


def read_lock(store: Store) -> tuple[bytes | None, str | None]:
    """GC_LOCK's bytes and version tag; (None, None) when there is none. Read bounded like any record:
    a lock too large to be one (no collection writes one, see blob_gc.MAX_DOOMED) is not read, and
    gives no bytes (unreadable: a writer assumes the worst) under a tag that stands for it."""
    try:
        return store.read_tagged(GC_LOCK, max_bytes=MAX_RECORD_BYTES)
    except TooLarge as exc:
        return None, f"too large: {exc.size}"
    except StorageError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return None, None


def blob_path(sha: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise StorageError(errno.EINVAL, f"not a sha256: {sha!r}")
    return f"{BLOBS}/{sha[:2]}/{sha[2:4]}/{sha}"


def scope(key: str | None) -> str:
    return f"generations/{key}" if key else "catalog"


@dataclass(frozen=True)
class Manifest:
    asset: Name
    key: GenerationKey | None  # the generation, None for unpartitioned assets
    version: Annotated[int, Field(ge=1)]
    sha256: Sha256
    bytes: Count
    format: Extension  # file extension: png, glb, ply, spz, json, csv
    run_id: str
    written_at: float
    metadata: dict = field(default_factory=dict)
    extras: dict[Extension, BlobRef] = field(default_factory=dict)  # companion files (mesh PLY)
    deduplicated: bool = False  # the blob was already stored when this version was written
    pruned_at: float | None = None  # retention dropped the blob, kept this record

    @property
    def path(self) -> str:
        return f"{scope(self.key)}/{self.asset}/v{self.version:06d}.json"

    @property
    def blob(self) -> str:
        return blob_path(self.sha256)

    @property
    def filename(self) -> str:
        return f"{self.key or 'catalog'}-{self.asset}.{EXTENSIONS.get(self.asset, self.format)}"

    def blobs(self) -> list[str]:
        """The shas this version keeps alive (none once pruned)."""
        if self.pruned_at is not None:
            return []
        return [self.sha256, *(extra["sha256"] for extra in self.extras.values())]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes, path: str, uri: str = "") -> Manifest:
        """The version stored at ``path``, or CorruptRecord: unparsable, off its schema, or not
        the version its path says it is. Fields this code does not know are ignored."""
        manifest = parse(_MANIFEST, data, path, uri or path)
        if manifest.path != path:
            raise corrupt(path, uri or path, f"it describes {manifest.path}, not the version stored here")
        return manifest


class BlobRef(TypedDict):
    sha256: Sha256
    bytes: Count


_MANIFEST = TypeAdapter(Manifest)


@dataclass(frozen=True)
class BlobWrite:
    sha256: str
    bytes: int
    new: bool  # False: the same bytes were stored already (de-duplicated)
    healed: bool = False  # a bad copy was stored under this hash: replaced by these bytes


class Snapshot(NamedTuple):
    """Every readable version, every blob, and the versions that could not be read."""

    manifests: list[Manifest]
    blobs: dict[str, ObjectInfo]
    unreadable: list[CorruptRecord]


class ArtifactStore:
    """Blobs and versions over ``store``. It remembers the versions it wrote, so a run that
    materializes a chain reads back exactly what it wrote, without listing again."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[tuple[str | None, str], Manifest] = {}

    # -- blobs -------------------------------------------------------------------------------
    def put_blob(self, data: bytes, fmt: str = "") -> BlobWrite:
        """Store ``data`` once. Bytes already stored under its hash are checked first (locally by
        re-hashing them, on S3 by the SHA-256 the server recorded), and a bad copy is replaced,
        so re-materializing over a corrupt blob heals it in one run."""
        sha = hashlib.sha256(data).hexdigest()
        path, size, content_type = blob_path(sha), len(data), CONTENT_TYPES.get(fmt)
        # look before uploading where a look is cheap next to the upload (local disk, big objects);
        # otherwise the create-only PUT itself says "already there"
        held = self.store.holds(path, data, sha) if self.store.cheap_stat or size >= LOOK_FIRST_BYTES else None
        if held is None:
            try:
                self.store.write(path, data, if_absent=True, sha256=sha, content_type=content_type)
                return BlobWrite(sha, size, new=True)
            except Conflict:  # another writer stored these bytes first, or a bad copy is there
                held = self.store.holds(path, data, sha)
        if held:
            return BlobWrite(sha, size, new=False)
        self.store.write(path, data, sha256=sha, content_type=content_type)
        return BlobWrite(sha, size, new=True, healed=held is False)

    def get_blob(self, sha: str, what: str = "") -> bytes:
        path = blob_path(sha)
        label = f"{what}: " if what else ""
        try:
            data, actual = self.store.read_hashed(path)
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                raise IntegrityError(errno.ENOENT, f"{label}blob {sha[:16]}… is missing from "
                                     f"{self.store.uri(path)}; re-materialize it") from None
            raise
        if actual != sha:
            self.store.delete(path)  # so that re-materializing stores the right bytes again
            raise IntegrityError(errno.EIO, f"{label}blob {self.store.uri(path)} is corrupt: its {len(data):,} "
                                 f"bytes hash to {actual[:16]}…, not {sha[:16]}…; the bad copy was removed, "
                                 f"re-materialize the asset")
        return data

    # -- versions ----------------------------------------------------------------------------
    def read_manifest(self, path: str, size: int | None = None) -> Manifest:
        """The version at ``path`` (``size``: from a listing); CorruptRecord (naming it, and carrying
        the blobs its bytes still name) if it cannot be read."""
        data = read_record(self.store, path, size)
        try:
            return Manifest.from_json(data, path, self.store.uri(path))
        except CorruptRecord as exc:
            exc.named = named_shas(data)
            raise

    def _read_all(self, infos: list[ObjectInfo], unreadable: list[CorruptRecord] | None) -> list[Manifest]:
        """The versions at ``infos``; a bad one is raised, or appended to ``unreadable`` if given."""
        return read_each(lambda info: self.read_manifest(info.path, info.size), infos, unreadable)

    def versions(self, key: str | None, asset: str, unreadable: list[CorruptRecord] | None = None) -> list[Manifest]:
        """Every stored version of (key, asset), oldest first (bad ones: see ``_read_all``)."""
        return self._read_all(self._version_files(key, asset), unreadable)

    def _version_files(self, key: str | None, asset: str) -> list[ObjectInfo]:
        infos = [i for i in self.store.list(f"{scope(key)}/{asset}") if _VERSION.search(i.path)]
        return sorted(infos, key=lambda i: int(_VERSION.search(i.path).group(1)))

    def latest(self, key: str | None, asset: str, run_id: str | None = None) -> Manifest | None:
        """The newest version; with ``run_id``, the version that run wrote through this instance
        if it wrote one (no listing: a chain reads back exactly what it wrote). An unreadable
        newest version is a CorruptRecord, never silently an older one; one removed since the
        listing (retention dropped it) is no longer the newest, so the next one is read."""
        known = self._known.get((key, asset))
        if run_id is not None and known is not None and known.run_id == run_id:
            return known
        for info in reversed(self._version_files(key, asset)):
            found = read_each(lambda i: self.read_manifest(i.path, i.size), [info], None)
            if found:
                return found[0]
        return None

    def manifest(self, key: str | None, asset: str, version: int | None = None,
                 run_id: str | None = None) -> Manifest:
        if version is None:
            found = self.latest(key, asset, run_id=run_id)
        else:
            try:
                found = self.read_manifest(f"{scope(key)}/{asset}/v{version:06d}.json")
            except CorruptRecord:
                raise
            except StorageError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                found = None
        if found is None:
            which = f"version {version} of " if version is not None else ""
            raise IntegrityError(errno.ENOENT, f"no {which}{asset!r} for {key or 'the catalog'} in "
                                 f"{self.store.uri(scope(key))} (see `threegen versions {key or ''}`)")
        return found

    def record(self, key: str | None, asset: str, data: bytes, fmt: str, run_id: str, metadata: dict | None = None,
               extras: dict[str, bytes] | None = None, now: float | None = None) -> Manifest:
        """Store ``data`` (and companion files) and add a version pointing at it."""
        with ThreadPoolExecutor(1) as pool:  # find the next version number while the bytes go up
            listing = pool.submit(self._version_files, key, asset)
            blob = self.put_blob(data, fmt)
            extra_refs = {}
            for ext, payload in (extras or {}).items():
                written = self.put_blob(payload, ext)
                extra_refs[ext] = {"sha256": written.sha256, "bytes": written.bytes}
            files = listing.result()
        version = int(_VERSION.search(files[-1].path).group(1)) + 1 if files else 1
        for _ in range(100):
            manifest = Manifest(asset=asset, key=key, version=version, sha256=blob.sha256, bytes=blob.bytes,
                                format=fmt, run_id=run_id, written_at=time.time() if now is None else now,
                                metadata=metadata or {}, extras=extra_refs, deduplicated=not blob.new)
            body = manifest.to_json()
            if len(body) > MAX_RECORD_BYTES:  # never read back (records.read_record): its blob would be collected
                raise IntegrityError(errno.EFBIG, f"the version record of {asset} for {key or 'the catalog'} would "
                                                  f"be {len(body):,} bytes, over the {MAX_RECORD_BYTES:,}-byte limit: "
                                                  f"its metadata is too large ({', '.join(sorted(metadata or {}))[:200]})")
            try:
                self.store.write(manifest.path, body, if_absent=True, content_type="application/json")
                break
            except Conflict:  # a concurrent materialization took this number
                version += 1
        else:
            raise Conflict(errno.EAGAIN, f"could not allocate a version for {asset} of {key}")
        self._outlive_collection({blob.sha256: (data, fmt), **{ref["sha256"]: (extras[ext], ext)
                                                                for ext, ref in extra_refs.items()}})
        self._known[(key, asset)] = manifest
        if key is not None:  # after the version: the catalog index recomputes this generation
            mark_changed(self.store, [key])
        return manifest

    def _outlive_collection(self, payloads: dict[str, tuple[bytes, str]]) -> None:
        """Make sure the blobs a version was just written for are still stored. A blob collection
        condemns blobs under GC_LOCK, then re-reads the versions written since it planned and spares
        what they use, then deletes: a version written before the lock is spared; one written after
        it sees the lock here, waits for the collection to end, and stores again whatever is gone."""
        raw, tag = read_lock(self.store)
        if tag is not None:
            try:
                named = json.loads(raw)["doomed"]
            except (ValueError, KeyError, TypeError):
                named = None
            ok = isinstance(named, list) and all(isinstance(sha, str) for sha in named)
            condemned = set(named) if ok else set(payloads)  # an unreadable lock: assume the worst
            info = self.store.stat(GC_LOCK) if condemned & payloads.keys() else None
            # a collection stops deleting well within GC_WAIT_S of taking the lock: an older lock
            # (its collection died) holds no one up
            left = GC_WAIT_S - (self.store.clock() - info.modified) if info else 0.0
            deadline = time.monotonic() + left
            while condemned & payloads.keys() and time.monotonic() < deadline:
                time.sleep(0.05)
                if read_lock(self.store)[1] != tag:
                    break  # that collection ended (another may hold a new lock: it re-read our version)
        for sha, (data, fmt) in payloads.items():
            if not self.store.exists(blob_path(sha)):
                self.put_blob(data, fmt)

    def load(self, key: str | None, asset: str, version: int | None = None,
             run_id: str | None = None) -> tuple[Manifest, bytes]:
        manifest = self.manifest(key, asset, version, run_id=run_id)
        what = f"{asset} v{manifest.version} of {key or 'the catalog'}"
        if manifest.pruned_at is not None:
            raise IntegrityError(errno.ENOENT, f"{what} was pruned by retention; only its record remains")
        return manifest, self.get_blob(manifest.sha256, what)

    def load_extra(self, manifest: Manifest, ext: str) -> bytes:
        ref = manifest.extras[ext]
        return self.get_blob(ref["sha256"], f"{manifest.asset}.{ext} v{manifest.version} of {manifest.key}")

    def url(self, manifest: Manifest, expires_s: int) -> str | None:
        return self.store.url(manifest.blob, expires_s, filename=manifest.filename)

    # -- whole-store views -------------------------------------------------------------------
    def all_manifests(self, unreadable: list[CorruptRecord] | None = None) -> list[Manifest]:
        return self._read_all(self.manifest_files(), unreadable)

    def manifest_files(self) -> list[ObjectInfo]:
        return [i for root in ("generations", "catalog") for i in self.store.list(root) if _VERSION.search(i.path)]

    def blob_files(self) -> dict[str, ObjectInfo]:
        return {info.path.rsplit("/", 1)[-1]: info for info in self.store.list(BLOBS)}

    def snapshot(self) -> Snapshot:
        """Every version and every blob, read once, for views that need both (catalog, stats,
        retention); versions that cannot be read are listed, not raised."""
        unreadable: list[CorruptRecord] = []
        manifests = self.all_manifests(unreadable)
        return Snapshot(manifests, self.blob_files(), unreadable)

    def stats(self, status_of: dict[str, str] | None = None, snapshot: Snapshot | None = None) -> dict:
        """Counts and bytes: logical (what the versions refer to) against stored (unique blobs).
        ``status_of`` maps generation key -> status for the by-status table."""
        manifests, blobs, unreadable = snapshot or self.snapshot()
        live: set[str] = set()
        by_asset: dict[str, dict] = defaultdict(lambda: {"versions": 0, "logical_bytes": 0, "blobs": set()})
        by_status: dict[str, dict] = defaultdict(lambda: {"generations": set(), "versions": 0, "logical_bytes": 0})
        for m in manifests:
            refs = m.blobs()
            live.update(refs)
            row = by_asset[m.asset]
            row["versions"] += 1
            row["logical_bytes"] += m.bytes if refs else 0
            row["blobs"].update(refs[:1])
            status = (status_of or {}).get(m.key or "", "catalog" if m.key is None else "unknown")
            srow = by_status[status]
            srow["generations"].add(m.key or "catalog")
            srow["versions"] += 1
            srow["logical_bytes"] += m.bytes if refs else 0
        logical = sum(row["logical_bytes"] for row in by_asset.values()) + sum(
            e["bytes"] for m in manifests if m.pruned_at is None for e in m.extras.values())
        stored = sum(info.size for info in blobs.values())
        referenced = sum(blobs[s].size for s in live if s in blobs)
        assets = {name: {"versions": row["versions"], "logical_bytes": row["logical_bytes"],
                         "stored_bytes": sum(blobs[s].size for s in row["blobs"] if s in blobs),
                         "unique_blobs": len(row["blobs"])} for name, row in sorted(by_asset.items())}
        statuses = {name: {"generations": len(row["generations"]), "versions": row["versions"],
                           "logical_bytes": row["logical_bytes"]} for name, row in sorted(by_status.items())}
        return {
            "store": self.store.location,
            "generations": len({m.key for m in manifests if m.key}), "versions": len(manifests),
            "blobs": len(blobs), "logical_bytes": logical, "stored_bytes": stored,
            "unreferenced_blobs": len(set(blobs) - live), "unreferenced_bytes": stored - referenced,
            "dedup_ratio": round(logical / referenced, 3) if referenced else None,
            "missing_blobs": len(live - set(blobs)), "by_asset": assets, "by_status": statuses,
            "unreadable_records": [str(error) for error in unreadable],
        }
