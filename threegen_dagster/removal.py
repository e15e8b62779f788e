"""Removing generations on request (the UI's remove job, ``threegen remove``): every version, the ledger
entry, and the blobs no other version uses. No Dagster imports (the partitions are the caller's).

A request is checked whole before anything is deleted: an unknown key, or a generation held by a
pending submission, refuses the request in one line per key, and nothing is removed. A generation
marked keep is removed (keep only protects from retention). Blobs are collected with retention's
collector (``blob_gc``, no grace period: only these generations' blobs are candidates): a blob
another generation shares is kept, and a writer that re-uses one meanwhile is never robbed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .artifacts import ArtifactStore, scope
from .blob_gc import collect
from .keys import PromptError, is_generation_key, key_error
from .ledger import Ledger


class RemovalError(PromptError):
    """A removal refused before anything was deleted; one line per key that is wrong."""


@dataclass
class Removal:
    removed: list[str]
    versions: int = 0
    record_bytes: int = 0
    blobs_deleted: int = 0
    blob_bytes: int = 0
    blobs_shared: int = 0  # blobs of removed versions that other generations still use: kept
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return {"removed": self.removed, "versions": self.versions, "blobs_deleted": self.blobs_deleted,
                "blobs_shared": self.blobs_shared, "freed_bytes": self.record_bytes + self.blob_bytes,
                "notes": self.notes}


def check_removable(artifacts: ArtifactStore, ledger: Ledger, keys: list[str], partitions: set[str]) -> list[str]:
    """One line per key that cannot be removed (``partitions``: the keys the Dagster instance has, a
    name that is not a key included: removing such a partition is what it is for)."""
    problems, holds = [], ledger.holds()
    for key in dict.fromkeys(keys):
        if not is_generation_key(key):
            if key not in partitions:
                problems.append(key_error(key))
            continue
        if key in holds:
            problems.append(f"{key} is held ({', '.join(sorted(holds[key]))}: a pending SN17 submission needs it); "
                            f"remove it once that is done")
        elif ledger.find(key) is None and key not in partitions and not _has_files(artifacts, key):
            problems.append(f"no generation {key!r}: not in the ledger, the store or the partitions; "
                            f"check the key (`threegen catalog`)")
    return problems


def _has_files(artifacts: ArtifactStore, key: str) -> bool:
    return next(iter(artifacts.store.list(scope(key))), None) is not None


def remove_generations(artifacts: ArtifactStore, ledger: Ledger, keys: list[str]) -> Removal:
    """Delete the versions and ledger entries of ``keys`` (checked with ``check_removable``), then the
    blobs only they used."""
    keys = [key for key in dict.fromkeys(keys) if is_generation_key(key)]
    snapshot = artifacts.snapshot()
    prefixes = tuple(f"{scope(key)}/" for key in keys)
    going = [m for m in snapshot.manifests if m.path.startswith(prefixes)]
    live = {sha for m in snapshot.manifests if not m.path.startswith(prefixes) for sha in m.blobs()}
    live |= {sha for error in snapshot.unreadable if not error.path.startswith(prefixes) for sha in error.named}
    theirs = {sha for m in going for sha in m.blobs()}
    report = Removal(removed=keys, versions=len(going), blobs_shared=len(theirs & live))
    for key in keys:
        report.record_bytes += artifacts.store.delete_prefix(scope(key)) + ledger.remove(key)
    candidates = {sha: info for sha, info in snapshot.blobs.items() if sha in theirs - live}
    known = {m.path for m in snapshot.manifests} | {error.path for error in snapshot.unreadable}
    collection = collect(artifacts, candidates, known, live, grace_hours=0.0)
    report.blobs_deleted, report.blob_bytes = len(collection.deleted), collection.freed
    if collection.note:
        report.notes.append(collection.note)
    if collection.spared:
        report.notes.append(f"{len(collection.spared)} blob(s) kept: a version written meanwhile uses them")
    return report
