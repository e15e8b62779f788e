"""Blob garbage collection against a writer that re-uses (de-duplicates onto) a blob while the
collection runs, on a local folder and on the real S3 server. The interleavings are made
deterministic by running the collection at the exact moment inside the writer's own store
calls (a hook on the real store's method), or by driving the collection's steps one by one."""

import json
import os
import time

import pytest

from threegen_dagster.artifacts import GC_LOCK, ArtifactStore, blob_path, read_lock
from threegen_dagster.blob_gc import MAX_DOOMED, BlobCollector
from threegen_dagster.ledger import Ledger
from threegen_dagster.records import MAX_RECORD_BYTES
from threegen_dagster.retention import RetentionPolicy, apply_retention
from threegen_dagster.storage import LocalStore, ObjectInfo

KEY = "a-chair-0123456789-s1"
DATA = b"an intermediate stage's bytes, stored long ago and now used by nothing" * 50
NOW = 1_800_000_000.0


def _age(store, path: str, hours: float) -> None:
    """Make an object older (locally; an S3 server's LastModified cannot be set)."""
    if isinstance(store, LocalStore):
        then = time.time() - hours * 3600
        os.utime(store.path(path), (then, then))


def test_a_collection_between_a_writers_blob_and_its_version_never_leaves_it_dangling(store, monkeypatch) -> None:
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    orphan = artifacts.put_blob(DATA)  # stored long ago, its versions since removed: garbage
    blob = f"blobs/sha256/{orphan.sha256[:2]}/{orphan.sha256[2:4]}/{orphan.sha256}"
    _age(store, blob, 2)
    reports, write = [], store.write

    def write_then_collect(relative: str, data: bytes, **kwargs):
        if relative.startswith(f"generations/{KEY}/") and not reports:  # the writer's blob is in, its version not
            reports.append(apply_retention(artifacts, ledger, RetentionPolicy(gc_grace_hours=0)))
        return write(relative, data, **kwargs)

    monkeypatch.setattr(store, "write", write_then_collect)
    manifest = artifacts.record(KEY, "gaussian_splat", DATA, "ply", "run-1")
    assert manifest.deduplicated and reports[0].blobs_deleted == 1  # it found the blob, which then went
    assert artifacts.load(KEY, "gaussian_splat")[1] == DATA  # ... and the writer stored it again
    assert not store.exists(GC_LOCK)


def test_a_writer_that_finds_its_blob_condemned_waits_for_the_collection_then_restores_it(store,
                                                                                         monkeypatch) -> None:
    artifacts = ArtifactStore(store)
    orphan = artifacts.put_blob(DATA)
    collector = BlobCollector(artifacts, known=set(), live=set(), grace_hours=0)
    assert list(collector.plan(artifacts.blob_files())) == [orphan.sha256]
    assert collector.condemn() and collector.spare() == set()  # no version uses it yet
    assert json.loads(store.read(GC_LOCK))["doomed"] == [orphan.sha256]
    events, read_tagged = [], store.read_tagged

    def observe(relative: str, **kwargs):
        if relative == GC_LOCK and "collection releases the lock" not in events:
            events.append("writer reads the lock")
            if events.count("writer reads the lock") == 2:  # the writer is waiting: the collection goes on
                events.append(f"collection deletes {len(collector.delete())} blob(s)")
                events.append("collection releases the lock")
                collector.release()
        return read_tagged(relative, **kwargs)

    monkeypatch.setattr(store, "read_tagged", observe)
    manifest = artifacts.record(KEY, "gaussian_splat", DATA, "ply", "run-1")
    assert manifest.deduplicated
    assert events == ["writer reads the lock", "writer reads the lock", "collection deletes 1 blob(s)",
                      "collection releases the lock"]
    assert artifacts.load(KEY, "gaussian_splat")[1] == DATA  # stored again after the collection ended


def test_a_version_written_before_the_lock_is_found_and_its_blob_spared(store) -> None:
    artifacts = ArtifactStore(store)
    artifacts.put_blob(DATA)
    collector = BlobCollector(artifacts, known=set(), live=set(), grace_hours=0)
    collector.plan(artifacts.blob_files())
    manifest = artifacts.record(KEY, "gaussian_splat", DATA, "ply", "run-1")  # after the plan, before the lock
    assert collector.condemn() and collector.spare() == {manifest.sha256}
    assert collector.delete() == {}
    collector.release()
    assert artifacts.load(KEY, "gaussian_splat")[1] == DATA and not store.exists(GC_LOCK)


def test_blob_ages_are_taken_on_the_stores_clock(store) -> None:
    """A caller's clock far ahead (or a server's behind) must not make a fresh blob look old."""
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    fresh = artifacts.put_blob(b"uploaded a moment ago, its version not written yet")
    report = apply_retention(artifacts, ledger, RetentionPolicy(gc_grace_hours=1), now=NOW * 2)
    assert report.blobs_deleted == 0 and artifacts.get_blob(fresh.sha256)
    if isinstance(store, LocalStore):
        _age(store, f"blobs/sha256/{fresh.sha256[:2]}/{fresh.sha256[2:4]}/{fresh.sha256}", 2)
        assert apply_retention(artifacts, ledger, RetentionPolicy(gc_grace_hours=1)).blobs_deleted == 1


def test_one_collection_at_a_time_and_a_dead_ones_lock_is_taken_over(store) -> None:
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    orphan = artifacts.put_blob(DATA)
    store.write(GC_LOCK, json.dumps({"doomed": [], "since": time.time()}).encode())  # another one is running
    report = apply_retention(artifacts, ledger, RetentionPolicy(gc_grace_hours=0))
    assert report.blobs_deleted == 0 and artifacts.get_blob(orphan.sha256)
    assert report.warnings == [report.gc_note]
    assert report.gc_note.startswith(f"blob collection skipped: another one holds {store.uri(GC_LOCK)} (for ")
    if isinstance(store, LocalStore):
        _age(store, GC_LOCK, 2)  # that collection died two hours ago
        report = apply_retention(artifacts, ledger, RetentionPolicy(gc_grace_hours=0))
        assert report.blobs_deleted == 1 and "took over" in report.gc_note and not store.exists(GC_LOCK)


TOO_LARGE = b" " * MAX_RECORD_BYTES + json.dumps({"doomed": []}).encode()  # valid, but no lock is this large


@pytest.mark.parametrize("lock", [b"{not json", json.dumps({"doomed": "everything"}).encode(), TOO_LARGE],
                         ids=["not-json", "not-a-list", "too-large"])
def test_a_writer_treats_an_unreadable_lock_as_condemning_its_blobs(store, monkeypatch, lock: bytes) -> None:
    import threegen_dagster.artifacts as artifacts_module

    artifacts, reads, read_tagged = ArtifactStore(store), [], store.read_tagged
    store.write(GC_LOCK, lock)
    # a lock nobody releases: wait until it is GC_WAIT_S old (S3 times have 1 s steps), then go on
    monkeypatch.setattr(artifacts_module, "GC_WAIT_S", 3.0)
    monkeypatch.setattr(store, "read_tagged",
                        lambda relative, **kw: reads.append(relative) or read_tagged(relative, **kw))
    manifest = artifacts.record(KEY, "gaussian_splat", DATA, "ply", "run-1")
    assert reads.count(GC_LOCK) >= 2  # it waited on the lock instead of trusting it
    assert artifacts.load(KEY, "gaussian_splat")[1] == DATA and manifest.version == 1


def test_a_lock_left_by_a_dead_collection_holds_no_writer_up(tmp_path, monkeypatch) -> None:
    store = LocalStore(tmp_path)  # a local lock can be made old; an S3 object's LastModified cannot
    artifacts, reads, read_tagged = ArtifactStore(store), [], store.read_tagged
    orphan = artifacts.put_blob(DATA)
    store.write(GC_LOCK, json.dumps({"doomed": [orphan.sha256], "since": 0}).encode())
    _age(store, GC_LOCK, 1)  # its collection died an hour ago (it stopped deleting long before)
    monkeypatch.setattr(store, "read_tagged",
                        lambda relative, **kw: reads.append(relative) or read_tagged(relative, **kw))
    assert artifacts.record(KEY, "gaussian_splat", DATA, "ply", "run-1").deduplicated
    assert reads.count(GC_LOCK) == 1  # read once, not waited on
    assert artifacts.load(KEY, "gaussian_splat")[1] == DATA


def test_a_lock_too_large_to_be_one_is_reported_and_not_taken_over(tmp_path) -> None:
    """No collection writes a lock over MAX_RECORD_BYTES (see the next test): an old one that large is damage.
    Taking it over would mean reading it whole for its tag; the cleanup says so instead, and collects nothing."""
    store = LocalStore(tmp_path)
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    orphan = artifacts.put_blob(DATA)
    store.write(GC_LOCK, TOO_LARGE)
    _age(store, GC_LOCK, 2)
    report = apply_retention(artifacts, ledger, RetentionPolicy(gc_grace_hours=0))
    assert report.blobs_deleted == 0 and artifacts.get_blob(orphan.sha256)
    assert report.gc_note == (f"blob collection skipped: {store.uri(GC_LOCK)} is {len(TOO_LARGE):,} bytes, too large "
                              f"to be a lock (at most {MAX_RECORD_BYTES:,}); delete it")
    assert store.read(GC_LOCK) == TOO_LARGE


def test_a_collection_condemns_no_more_blobs_than_its_lock_can_name(store) -> None:
    """The lock names every condemned blob, and writers read it bounded: a collection condemns at most
    MAX_DOOMED (the oldest), leaves the rest for the next cleanup, and so can still read and release its lock."""
    collector = BlobCollector(ArtifactStore(store), known=set(), live=set(), grace_hours=1)
    old = store.clock() - 7200
    blobs = {f"{i:064x}": ObjectInfo(blob_path(f"{i:064x}"), 1, old - i) for i in range(MAX_DOOMED + 5)}
    assert sorted(collector.plan(blobs)) == sorted(blobs)[5:]  # the oldest
    assert collector.result.note == "5 more unused blob(s) left for the next cleanup"
    assert collector.condemn()
    raw, _ = read_lock(store)
    assert len(raw) <= MAX_RECORD_BYTES and len(json.loads(raw)["doomed"]) == MAX_DOOMED
    collector.release()
    assert not store.exists(GC_LOCK)


def test_a_generation_written_again_while_retention_removes_it_keeps_its_blob(tmp_path, monkeypatch) -> None:
    """Retention removes an old generation; before blobs are collected a run materialises it again with the
    same bytes (deduplicated: the blob keeps its old age), at the same path v000001. That version is new:
    it is read and its blob spared (the path alone, known from the plan's listing, made it look accounted
    for, and the blob went)."""
    import threegen_dagster.retention as retention

    store = LocalStore(tmp_path / "store")
    artifacts, month = ArtifactStore(store), 30 * 24 * 3600
    old = artifacts.record(KEY, "validation_score", DATA, "json", run_id="old", now=time.time() - month)
    _age(store, old.blob, month / 3600)
    collect = retention.collect

    def a_run_writes_first(*args, **kwargs):
        again = ArtifactStore(LocalStore(tmp_path / "store")).record(KEY, "validation_score", DATA, "json", "new")
        assert again.path == old.path and again.deduplicated
        return collect(*args, **kwargs)

    monkeypatch.setattr(retention, "collect", a_run_writes_first)
    report = apply_retention(artifacts, Ledger(store), RetentionPolicy(gc_grace_hours=0))
    assert report.removed == [KEY] and report.blobs_deleted == 0
    assert ArtifactStore(store).load(KEY, "validation_score")[1] == DATA


def test_a_version_record_too_large_to_read_back_is_refused_when_written(tmp_path) -> None:
    """A record over the 1 MiB every reader refuses could never be read, and its blob would be collected as
    unused: the write is refused instead, naming the metadata, and nothing is stored under the key."""
    from threegen_dagster.artifacts import IntegrityError

    store = LocalStore(tmp_path / "store")
    with pytest.raises(IntegrityError, match=r"over the 1,048,576-byte limit: its metadata is too large \(log\)"):
        ArtifactStore(store).record(KEY, "validation_score", DATA, "json", "run", metadata={"log": "x" * 2**20})
    assert ArtifactStore(store).latest(KEY, "validation_score") is None
