"""Retention: which generations, versions and blobs can go, and removing them. No Dagster imports.

The policy, per generation (age from its ledger entry):
- older than ``max_age_hours`` (``keep_passed_hours`` if its latest score passed): removed whole,
  its versions and its ledger entry;
- older than ``slim_after_hours``: the heavy intermediates (images, meshes, the PLY splat) are
  pruned, while the compressed splat, the score and every version's record stay;
- only the newest ``keep_versions`` versions of each asset are kept.
A generation marked keep, or held (a pending submission), is never touched, nor is one whose
ledger entry cannot be read. Then blobs that no remaining version refers to are garbage-collected
(``blob_gc``), once older than ``gc_grace_hours``; a concurrent writer that re-uses one is never
robbed. A record that cannot be read (a version, a ledger entry, an SN17 task) is skipped and
reported, and its blobs are kept: one bad record never stops the cleanup.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace

from .artifacts import ArtifactStore, Manifest
from .blob_gc import collect
from .changes import mark_changed
from .ledger import Generation, Ledger, key_of
from .records import CorruptRecord, corrupt, read_each, read_record
from .sn17.queue import TERMINAL_STATES
from .tasks import MAX_TASK_BYTES

TASKS = "sn17/tasks"  # the SN17 task queue (sn17/queue.py)
HEAVY = ("generated_image", "foreground_image", "initial_mesh", "refined_mesh", "gaussian_splat")


@dataclass(frozen=True)
class RetentionPolicy:
    max_age_hours: float = 168.0
    keep_passed_hours: float = 720.0
    slim_after_hours: float = 48.0  # 0: never slim
    keep_versions: int = 3
    gc_grace_hours: float = 1.0

    def __post_init__(self) -> None:
        if min(self.max_age_hours, self.keep_passed_hours, self.slim_after_hours, self.gc_grace_hours) < 0:
            raise ValueError("retention hours must be >= 0")
        if self.keep_versions < 1:
            raise ValueError("keep_versions must be at least 1 (the current version)")


@dataclass
class RetentionPlan:
    remove: list[str] = field(default_factory=list)  # generation keys to remove whole
    slim: list[Manifest] = field(default_factory=list)  # versions whose blob is dropped, record kept
    drop: list[Manifest] = field(default_factory=list)  # superseded versions to delete
    protected: list[str] = field(default_factory=list)  # due to go, but kept by mark or hold
    untouched: int = 0

    @property
    def slimmed_keys(self) -> list[str]:
        return sorted({m.key for m in self.slim if m.key})


def _passed(manifests: list[Manifest]) -> bool:
    scores = [m for m in manifests if m.asset == "validation_score"]
    return bool(scores) and bool(max(scores, key=lambda m: m.version).metadata.get("passed"))


def plan_retention(entries: list[Generation], manifests: list[Manifest], holds: dict[str, list[str]],
                   now: float, policy: RetentionPolicy, unreadable: frozenset[str] = frozenset()) -> RetentionPlan:
    """``unreadable``: keys whose ledger entry cannot be read (unknown keep mark): kept like held ones."""
    plan = RetentionPlan()
    by_key: dict[str | None, list[Manifest]] = defaultdict(list)
    for m in manifests:
        by_key[m.key].append(m)
    created = {e.key: e.created_at for e in entries}
    for key, versions in by_key.items():  # versions whose generation left the ledger: age by last write
        if key is not None and key not in created:
            created[key] = max(m.written_at for m in versions)
    kept = {e.key for e in entries if e.keep} | set(holds) | set(unreadable)
    going: set[str] = set()
    for key, born in sorted(created.items()):
        age_h = (now - born) / 3600
        limit = policy.keep_passed_hours if _passed(by_key[key]) else policy.max_age_hours
        due_slim = policy.slim_after_hours > 0 and age_h > policy.slim_after_hours
        if age_h > limit or due_slim:
            if key in kept:
                plan.protected.append(key)
                continue
        if age_h > limit:
            plan.remove.append(key)
            going.add(key)
        elif due_slim:
            plan.slim += [m for m in by_key[key] if m.asset in HEAVY and m.pruned_at is None]
        else:
            plan.untouched += 1
    groups: dict[tuple, list[Manifest]] = defaultdict(list)
    for m in manifests:
        if m.key not in going and m.key not in kept:
            groups[(m.key, m.asset)].append(m)
    for versions in groups.values():
        plan.drop += sorted(versions, key=lambda m: m.version)[:-policy.keep_versions]
    dropped = {m.path for m in plan.drop}
    plan.slim = [m for m in plan.slim if m.path not in dropped]
    return plan


@dataclass
class RetentionReport:
    dry_run: bool
    removed: list[str]
    slimmed: list[str]
    versions_dropped: int
    protected: list[str]
    untouched: int
    blobs_deleted: int
    blob_bytes_freed: int
    record_bytes_freed: int
    tasks_dropped: int = 0
    unreadable: list[str] = field(default_factory=list)  # one line per record skipped
    gc_note: str = ""  # why blob collection did not (fully) run

    @property
    def warnings(self) -> list[str]:
        return self.unreadable + ([self.gc_note] if self.gc_note else [])

    @property
    def freed_bytes(self) -> int:
        return self.blob_bytes_freed + self.record_bytes_freed

    def summary(self) -> dict:
        return {"dry_run": self.dry_run, "generations_removed": len(self.removed),
                "generations_slimmed": len(self.slimmed), "versions_dropped": self.versions_dropped,
                "protected": len(self.protected), "untouched": self.untouched, "blobs_deleted": self.blobs_deleted,
                "freed_bytes": self.freed_bytes, "blob_bytes_freed": self.blob_bytes_freed,
                "tasks_dropped": self.tasks_dropped, "unreadable_records": len(self.unreadable)}


def apply_retention(artifacts: ArtifactStore, ledger: Ledger, policy: RetentionPolicy, now: float | None = None,
                    dry_run: bool = False) -> RetentionReport:
    now = time.time() if now is None else now
    snapshot = artifacts.snapshot()  # versions that cannot be read are listed, not raised
    bad_entries: list[CorruptRecord] = []
    entries = ledger.all(bad_entries)
    plan = plan_retention(entries, snapshot.manifests, ledger.holds(), now, policy,
                          unreadable=frozenset(key_of(error.path) for error in bad_entries))
    store = artifacts.store
    record_bytes = 0
    gone = set(plan.remove) | {m.path for m in plan.drop}
    slim_paths = {m.path for m in plan.slim}
    survivors = [m for m in snapshot.manifests if m.key not in gone and m.path not in gone]
    live = {sha for m in survivors if m.path not in slim_paths for sha in m.blobs()}
    live |= {sha for error in snapshot.unreadable for sha in error.named}  # what a bad version may still name
    if not dry_run:
        for key in plan.remove:
            record_bytes += store.delete_prefix(f"generations/{key}") + ledger.remove(key)
        for m in plan.drop:
            record_bytes += store.delete(m.path)
        for m in plan.slim:
            store.write(m.path, replace(m, pruned_at=now).to_json(), content_type="application/json")
        mark_changed(store, {*plan.remove, *(m.key for m in [*plan.drop, *plan.slim] if m.key)})  # catalog index
    else:
        for key in plan.remove:
            record_bytes += sum(i.size for i in store.list(f"generations/{key}")) + ledger.entry_bytes(key)
        record_bytes += sum(info.size for m in plan.drop if (info := store.stat(m.path)) is not None)
    # the versions whose blobs ``live`` accounts for: a path under a removed generation or of a dropped version
    # that exists again at collection time is a version written since (a run re-materialising it), read there
    known = {m.path for m in survivors} | {error.path for error in snapshot.unreadable}
    blobs = collect(artifacts, snapshot.blobs, known, live, policy.gc_grace_hours, dry_run=dry_run)
    gone_blobs = blobs.doomed if dry_run else blobs.deleted
    tasks, bad_tasks = _finished_tasks(store, now - policy.max_age_hours * 3600)
    record_bytes += sum(i.size for i in tasks)
    if not dry_run:
        for info in tasks:
            store.delete(info.path)
    return RetentionReport(dry_run=dry_run, removed=plan.remove, slimmed=plan.slimmed_keys, tasks_dropped=len(tasks),
                           versions_dropped=len(plan.drop), protected=plan.protected, untouched=plan.untouched,
                           blobs_deleted=len(gone_blobs), blob_bytes_freed=sum(i.size for i in gone_blobs.values()),
                           record_bytes_freed=record_bytes, gc_note=blobs.note,
                           unreadable=[str(e) for e in [*snapshot.unreadable, *bad_entries]] + bad_tasks)


def _finished_tasks(store, before: float) -> tuple[list, list[str]]:
    """SN17 tasks finished (submitted, failed, rejected or expired) and last written before ``before``; and one
    line per task record that cannot be read (skipped, left in place). Read like the other records:
    one removed since the listing (the queue or another cleanup) is skipped, one larger than any task
    (MAX_TASK_BYTES: its prompt image and a few fields) is not read."""
    old = [info for info in store.list(TASKS) if info.modified < before]
    bad: list[CorruptRecord] = []
    states = read_each(lambda info: (info, _task_state(store, info)), old, bad)
    return [info for info, state in states if state in TERMINAL_STATES], [str(e) for e in bad]


def _task_state(store, info) -> object:
    data = read_record(store, info.path, info.size, limit=MAX_TASK_BYTES)
    try:
        return json.loads(data).get("state")
    except (ValueError, AttributeError, RecursionError) as exc:  # not JSON, not an object, nested too deep
        raise corrupt(info.path, store.uri(info.path), f"not a task ({type(exc).__name__})") from None
