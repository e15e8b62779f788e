"""Content-addressed versions, integrity, statistics and retention with blob GC, on a local
folder and on the real S3 server alike."""

import hashlib
import time
import threading

import pytest

from threegen_dagster.artifacts import ArtifactStore, IntegrityError, blob_path
from threegen_dagster.keys import Prompt
from threegen_dagster.ledger import Ledger
from threegen_dagster.retention import RetentionPolicy, apply_retention, plan_retention
from threegen_dagster.storage import S3Store

from .s3_server import BUCKET

HOUR = 3600.0
NOW = 1_800_000_000.0


def test_versions_share_identical_bytes(store) -> None:
    artifacts = ArtifactStore(store)
    first = artifacts.record("chair-0123456789-s1", "compressed_splat", b"spz-1", "spz", "run-a")
    again = artifacts.record("chair-0123456789-s1", "compressed_splat", b"spz-1", "spz", "run-b")
    other = artifacts.record("chair-0123456789-s1", "compressed_splat", b"spz-2", "spz", "run-c")
    elsewhere = artifacts.record("lamp-0123456789-s2", "compressed_splat", b"spz-1", "spz", "run-d")
    assert [m.version for m in (first, again, other, elsewhere)] == [1, 2, 3, 1]
    assert not first.deduplicated and again.deduplicated and elsewhere.deduplicated
    assert first.sha256 == hashlib.sha256(b"spz-1").hexdigest() and first.blob == blob_path(first.sha256)
    assert [m.run_id for m in artifacts.versions("chair-0123456789-s1", "compressed_splat")] == \
        ["run-a", "run-b", "run-c"]
    assert artifacts.load("chair-0123456789-s1", "compressed_splat")[1] == b"spz-2"  # the latest
    assert artifacts.load("chair-0123456789-s1", "compressed_splat", version=1)[1] == b"spz-1"
    assert len(artifacts.blob_files()) == 2  # four versions, two distinct payloads
    stats = artifacts.stats()
    assert stats["versions"] == 4 and stats["logical_bytes"] == 20 and stats["stored_bytes"] == 10
    assert stats["dedup_ratio"] == 2.0 and stats["by_asset"]["compressed_splat"]["unique_blobs"] == 2


def test_companion_files_are_blobs_too(store) -> None:
    artifacts = ArtifactStore(store)
    m = artifacts.record("cup-0123456789-s1", "initial_mesh", b"glb", "glb", "r", extras={"ply": b"ply"})
    assert artifacts.load_extra(m, "ply") == b"ply" and len(artifacts.blob_files()) == 2


def test_corrupt_and_missing_blobs_name_the_generation_and_asset(store) -> None:
    artifacts = ArtifactStore(store)
    m = artifacts.record("cup-0123456789-s1", "gaussian_splat", b"ply bytes" * 100, "ply", "r")
    store.write(m.blob, b"bit rot" * 100)  # the object changes behind the store's back
    with pytest.raises(IntegrityError, match="gaussian_splat v1 of cup-0123456789-s1: blob .* is corrupt"):
        artifacts.load("cup-0123456789-s1", "gaussian_splat")
    assert not store.exists(m.blob)  # the bad copy is gone, so re-materializing heals it
    with pytest.raises(IntegrityError, match="gaussian_splat v1 of cup-0123456789-s1: blob .* is missing"):
        artifacts.load("cup-0123456789-s1", "gaussian_splat")
    healed = artifacts.record("cup-0123456789-s1", "gaussian_splat", b"ply bytes" * 100, "ply", "r2")
    assert not healed.deduplicated and artifacts.load("cup-0123456789-s1", "gaussian_splat")[1] == b"ply bytes" * 100
    with pytest.raises(IntegrityError, match="no version 7 of 'gaussian_splat'"):
        artifacts.load("cup-0123456789-s1", "gaussian_splat", version=7)


def test_concurrent_materializations_get_distinct_versions(store) -> None:
    artifacts = ArtifactStore(store)

    def write(n: int) -> None:
        artifacts.record("vase-0123456789-s1", "validation_score", f'{{"n": {n}}}'.encode(), "json", f"run-{n}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = artifacts.versions("vase-0123456789-s1", "validation_score")
    assert [m.version for m in versions] == [1, 2, 3, 4, 5, 6]
    assert sorted(m.run_id for m in versions) == [f"run-{n}" for n in range(6)]


def _generation(ledger: Ledger, artifacts: ArtifactStore, text: str, age_h: float, passed: bool = True,
                payload: bytes | None = None) -> str:
    entry, _ = ledger.add(Prompt.from_text(text), 0, "test", now=NOW - age_h * HOUR)
    when = NOW - age_h * HOUR
    for asset, fmt in (("generated_image", "png"), ("gaussian_splat", "ply"), ("compressed_splat", "spz")):
        artifacts.record(entry.key, asset, (payload or text.encode()) + asset.encode() * 50, fmt, "r", now=when)
    artifacts.record(entry.key, "validation_score", b'{"passed": %d}' % passed, "json", "r",
                     metadata={"passed": passed}, now=when)
    return entry.key


POLICY = RetentionPolicy(max_age_hours=48, keep_passed_hours=240, slim_after_hours=24, keep_versions=2,
                         gc_grace_hours=0)


def test_retention_policy_end_to_end(store) -> None:
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    young = _generation(ledger, artifacts, "young", 1)
    middle = _generation(ledger, artifacts, "middle", 30)  # slimmed: heavy parts go, SPZ + score stay
    failed_old = _generation(ledger, artifacts, "failed old", 60, passed=False)  # removed
    passed_old = _generation(ledger, artifacts, "passed old", 60)  # passed: kept longer, slimmed
    kept = _generation(ledger, artifacts, "kept", 500)
    held = _generation(ledger, artifacts, "held", 500)
    twin = _generation(ledger, artifacts, "twin", 500, payload=b"young")  # same bytes as `young`: shared blobs
    ledger.set_keep(kept)
    ledger.hold(held, "submission-task-9", "pending submission")
    for n in range(3):  # the catalog is re-materialized often: only the newest versions stay
        artifacts.record(None, "generation_catalog", b"catalog %d" % n, "csv", "r", now=NOW)

    before = {sha for sha in artifacts.blob_files()}
    dry = apply_retention(artifacts, ledger, POLICY, now=NOW, dry_run=True)
    assert {sha for sha in artifacts.blob_files()} == before and ledger.find(failed_old)
    report = apply_retention(artifacts, ledger, POLICY, now=NOW)
    assert report.summary() == dry.summary() | {"dry_run": False}
    assert sorted(report.removed) == sorted([failed_old, twin])
    assert sorted(report.slimmed) == sorted([middle, passed_old])
    assert sorted(report.protected) == sorted([kept, held]) and report.versions_dropped == 1
    assert report.blobs_deleted > 0 and report.blob_bytes_freed > 0

    assert ledger.find(failed_old) is None and artifacts.latest(failed_old, "compressed_splat") is None
    slim = artifacts.latest(middle, "gaussian_splat")
    assert slim.pruned_at == NOW and not store.exists(slim.blob)
    with pytest.raises(IntegrityError, match="pruned by retention"):
        artifacts.load(middle, "gaussian_splat")
    assert artifacts.load(middle, "compressed_splat")[1].startswith(b"middle")
    for key in (young, kept, held):  # untouched, and the twin's removal spared the blobs `young` shares
        for asset in ("generated_image", "gaussian_splat", "compressed_splat"):
            artifacts.load(key, asset)
    assert [m.version for m in artifacts.versions(None, "generation_catalog")] == [2, 3]
    stats = artifacts.stats()
    assert stats["unreferenced_blobs"] == 0 and stats["missing_blobs"] == 0

    again = apply_retention(artifacts, ledger, POLICY, now=NOW)
    assert again.freed_bytes == 0 and again.blobs_deleted == 0  # nothing left to do


def test_gc_spares_young_unreferenced_blobs(store) -> None:
    """A blob written moments ago may belong to a manifest that is about to be written."""
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    fresh = artifacts.put_blob(b"uploaded, manifest not yet written")
    report = apply_retention(artifacts, ledger, RetentionPolicy(gc_grace_hours=1))
    assert report.blobs_deleted == 0 and store.exists(blob_path(fresh.sha256))
    report = apply_retention(artifacts, ledger, RetentionPolicy(gc_grace_hours=0), now=NOW * 2)
    assert report.blobs_deleted == 1 and not store.exists(blob_path(fresh.sha256))


def test_plan_is_pure_and_honours_every_rule() -> None:
    from threegen_dagster.artifacts import Manifest
    from threegen_dagster.ledger import Generation

    def gen(key: str, age_h: float, keep: bool = False) -> Generation:
        return Generation(key, "text", key, 0, "t", NOW - age_h * HOUR, keep=keep)

    def man(key: str, asset: str, version: int = 1, passed: bool | None = None) -> Manifest:
        meta = {} if passed is None else {"passed": passed}
        return Manifest(asset, key, version, "0" * 64, 1, "bin", "r", NOW, metadata=meta)

    entries = [gen("a", 100), gen("b", 100), gen("c", 100, keep=True), gen("d", 30), gen("e", 1)]
    manifests = [man("a", "validation_score", passed=False), man("b", "validation_score", passed=True),
                 man("b", "gaussian_splat"), man("d", "gaussian_splat"), man("d", "compressed_splat"),
                 *[man("e", "compressed_splat", v) for v in (1, 2, 3)], man("orphan", "compressed_splat")]
    plan = plan_retention(entries, manifests, {"e": ["submission-1"]}, NOW, POLICY)
    assert plan.remove == ["a"]  # "orphan" was written at NOW: young
    assert sorted((m.key, m.asset) for m in plan.slim) == [("b", "gaussian_splat"), ("d", "gaussian_splat")]
    assert plan.protected == ["c"] and plan.drop == []  # held "e" keeps every version
    assert plan_retention(entries, manifests, {}, NOW, POLICY).drop == [manifests[5]]


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match=r"keep_versions must be at least 1"):
        RetentionPolicy(keep_versions=0)
    with pytest.raises(ValueError, match=r"retention hours must be >= 0"):
        RetentionPolicy(max_age_hours=-1)


def test_stats_on_s3_count_what_the_server_holds(s3_server, s3_prefix) -> None:
    artifacts = ArtifactStore(S3Store(s3_server.client(), BUCKET, s3_prefix))
    artifacts.record("mug-0123456789-s3", "compressed_splat", b"x" * 1000, "spz", "r")
    artifacts.record("mug-0123456789-s3", "compressed_splat", b"x" * 1000, "spz", "r")
    listed = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=f"{s3_prefix}/blobs/")
    assert listed["KeyCount"] == 1 and listed["Contents"][0]["Size"] == 1000
    assert artifacts.stats()["dedup_ratio"] == 2.0


def test_retention_drops_finished_sn17_tasks_only(store) -> None:
    import json

    artifacts, ledger = ArtifactStore(store), Ledger(store)
    for task_id, state in (("t-done", "submitted"), ("t-bad", "rejected"), ("t-late", "expired"),
                           ("t-open", "pulled"), ("t-running", "running")):
        store.write(f"sn17/tasks/{task_id}.json", json.dumps({"task_id": task_id, "state": state}).encode())
    policy = RetentionPolicy(max_age_hours=1, gc_grace_hours=0)
    dry = apply_retention(artifacts, ledger, policy, now=NOW * 2, dry_run=True)
    assert dry.tasks_dropped == 3 and len(list(store.list("sn17/tasks"))) == 5
    report = apply_retention(artifacts, ledger, policy, now=NOW * 2)
    assert report.tasks_dropped == 3
    assert sorted(i.path for i in store.list("sn17/tasks")) == ["sn17/tasks/t-open.json", "sn17/tasks/t-running.json"]
    store.write("sn17/tasks/t-fresh.json", json.dumps({"task_id": "t-fresh", "state": "submitted"}).encode())
    assert apply_retention(artifacts, ledger, policy, now=time.time()).tasks_dropped == 0  # young: kept
    assert store.exists("sn17/tasks/t-fresh.json")
