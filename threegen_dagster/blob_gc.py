"""Garbage collection of blobs no version refers to, safe against writers that re-use a blob
(de-duplication) while it runs. No Dagster imports.

A collection, in steps (``collect`` runs them; tests drive them one by one):

1. ``plan``: from one listing of the versions (their paths are ``known``) and of the blobs, the
   blobs no version uses and older than the grace period, ages taken on the store's own clock
   (a local folder: this machine's; S3: the server's Date against its LastModified);
2. ``condemn``: write ``GC_LOCK`` (create-only, so one collection at a time) naming them;
3. ``spare``: list the versions again, read those written since the plan and spare their blobs;
4. ``delete`` the rest, within ``DELETE_BUDGET_S`` of the lock (half of what a writer waits);
5. ``release`` the lock.

The writer's side (``ArtifactStore._outlive_collection``), after writing its version: if the lock
names one of its blobs, wait until it is released; then store again any of its blobs that is
gone. A version written before step 2 is found by step 3; one written after it finds the lock.
Either way no version is left pointing at deleted bytes, whatever the clocks say.
"""

from __future__ import annotations

import errno
import json
import time
from dataclasses import dataclass, field

from .artifacts import GC_LOCK, GC_WAIT_S, ArtifactStore, read_lock
from .records import MAX_RECORD_BYTES, CorruptRecord
from .storage import Conflict, ObjectInfo, StorageError, TooLarge

DELETE_BUDGET_S = GC_WAIT_S / 2  # from taking the lock; half, so a delete in flight ends before writers go on
STALE_LOCK_S = GC_WAIT_S  # a lock this old deletes nothing any more (its collection died or gave up): taken over
# the lock names each condemned blob (68 bytes of JSON apiece) and writers read it as a record (at most
# MAX_RECORD_BYTES): one collection condemns no more than that, the next cleanup collects the rest
MAX_DOOMED = (MAX_RECORD_BYTES - 1024) // 68


@dataclass
class Collection:
    doomed: dict[str, ObjectInfo] = field(default_factory=dict)  # sha -> blob: unreferenced and old enough
    deleted: dict[str, ObjectInfo] = field(default_factory=dict)
    spared: set[str] = field(default_factory=set)  # condemned, then found in use by a new version
    note: str = ""  # why the collection did not (fully) run

    @property
    def freed(self) -> int:
        return sum(info.size for info in self.deleted.values())


class BlobCollector:
    def __init__(self, artifacts: ArtifactStore, known: set[str], live: set[str], grace_hours: float) -> None:
        self.artifacts, self.store = artifacts, artifacts.store
        self.known, self.live, self.grace_s = known, live, grace_hours * 3600
        self.result = Collection()
        self._tag: str | None = None
        self._since = 0.0

    def plan(self, blobs: dict[str, ObjectInfo]) -> dict[str, ObjectInfo]:
        cutoff = self.store.clock() - self.grace_s
        unused = sorted(((info.modified, sha) for sha, info in blobs.items()
                         if sha not in self.live and info.modified <= cutoff))
        self.result.doomed = {sha: blobs[sha] for _, sha in unused[:MAX_DOOMED]}  # the oldest
        if len(unused) > MAX_DOOMED:
            self.result.note = f"{len(unused) - MAX_DOOMED} more unused blob(s) left for the next cleanup"
        return self.result.doomed

    def condemn(self) -> bool:
        """Take the lock, naming the doomed blobs; False (with a note) if another collection holds it."""
        self._since = time.monotonic()
        body = json.dumps({"doomed": sorted(self.result.doomed), "since": time.time()}).encode()
        try:
            self._tag = self.store.write(GC_LOCK, body, if_absent=True, content_type="application/json")
            return True
        except Conflict:
            pass
        info = self.store.stat(GC_LOCK)
        age = self.store.clock() - info.modified if info else 0.0
        if info is not None and age > STALE_LOCK_S:  # its collection died: take over, compare-and-swap
            try:
                _, tag = self.store.read_tagged(GC_LOCK, max_bytes=MAX_RECORD_BYTES)
                self._tag = self.store.write(GC_LOCK, body, if_match=tag, content_type="application/json")
                self.result.note = f"took over {self.store.uri(GC_LOCK)}, left {age:.0f} s ago by a " \
                                   f"collection that did not finish"
                return True
            except TooLarge as exc:  # no collection wrote it (MAX_DOOMED), and its tag would mean reading it all
                self.result.note = (f"blob collection skipped: {self.store.uri(GC_LOCK)} is {exc.size:,} bytes, "
                                    f"too large to be a lock (at most {MAX_RECORD_BYTES:,}); delete it")
                return False
            except StorageError:
                pass
        self.result.note = (f"blob collection skipped: another one holds {self.store.uri(GC_LOCK)} "
                            f"(for {age:.0f} s); the next cleanup collects these blobs")
        return False

    def spare(self) -> set[str]:
        """Spare the condemned blobs that versions written since the plan use."""
        for info in self.artifacts.manifest_files():
            if info.path in self.known:
                continue
            try:
                shas = set(self.artifacts.read_manifest(info.path, info.size).blobs())
            except CorruptRecord as exc:
                shas = set(exc.named)
            except StorageError as exc:
                if exc.errno == errno.ENOENT:  # written and removed since: uses nothing now
                    continue
                raise
            for sha in shas & self.result.doomed.keys():
                self.result.spared.add(sha)
                self.result.doomed.pop(sha)
        return self.result.spared

    def delete(self) -> dict[str, ObjectInfo]:
        for sha, info in sorted(self.result.doomed.items()):
            if time.monotonic() - self._since > DELETE_BUDGET_S:  # writers stop waiting after GC_WAIT_S
                left = len(self.result.doomed) - len(self.result.deleted)
                self.result.note = f"blob collection stopped after {DELETE_BUDGET_S:.0f} s; {left} blob(s) left " \
                                   f"for the next cleanup"
                break
            self.store.delete(info.path)
            self.result.deleted[sha] = info
        return self.result.deleted

    def release(self) -> None:
        if self._tag is not None and read_lock(self.store)[1] == self._tag:
            self.store.delete(GC_LOCK)
        self._tag = None


def collect(artifacts: ArtifactStore, blobs: dict[str, ObjectInfo], known: set[str], live: set[str],
            grace_hours: float, dry_run: bool = False) -> Collection:
    """Delete the blobs that no version uses (``live``: what the versions at ``known`` use), as
    listed in ``blobs``; a dry run only says which."""
    collector = BlobCollector(artifacts, known, live, grace_hours)
    if not collector.plan(blobs) or dry_run or not collector.condemn():
        return collector.result
    try:
        collector.spare()
        collector.delete()
    finally:
        collector.release()
    return collector.result
