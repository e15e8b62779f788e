"""Untrusted records that once stopped a whole view, each now reported and skipped while the rest go on:
a ledger entry with an impossible time, version metadata that is not a number, a catalog shard of the
wrong shape, a record removed between a listing and its read (by a view, by ``latest``, by retention's
task cleanup), an SN17 task record with a wrong-typed time or too large to be one, and an inbox file
whose name leaves no room for what setting it aside adds. Real stores and folders in temporary
directories (and the real S3 server where a test takes ``store``); the sensors ticked through
``dg.build_sensor_context``."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from threegen_dagster import changes
from threegen_dagster.artifacts import ArtifactStore, IntegrityError
from threegen_dagster.catalog import build_catalog, catalog_row, statuses
from threegen_dagster.catalog_index import CatalogIndex, shard_path, store_stats
from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.inbox import InboxResource, inbox_sensor
from threegen_dagster.defs.sn17 import INDEXED, sn17_submission_sensor, sn17_task_sensor
from threegen_dagster.inbox import NAME_MAX, REJECTED, Inbox
from threegen_dagster.keys import Prompt
from threegen_dagster.ledger import Generation, Ledger
from threegen_dagster.retention import RetentionPolicy, apply_retention
from threegen_dagster.settings import Settings
from threegen_dagster.sn17.queue import TaskQueue
from threegen_dagster.storage import LocalStore
from threegen_dagster.tasks import MAX_TASK_BYTES

KEY = "a-chair-0123456789-s1"


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def two_generations(root: Path, store: LocalStore | None = None):
    """A store with two generations in different shards, each with a version, indexed."""
    store = store or LocalStore(root)
    ledger, artifacts = Ledger(store), ArtifactStore(store)
    good, _ = ledger.add(Prompt.from_text("a good chair"), 1, "test")
    bad, _ = ledger.add(Prompt.from_text("a bad lamp"), 2, "test")
    assert shard_path(good.key) != shard_path(bad.key)
    for entry in (good, bad):
        artifacts.record(entry.key, "compressed_splat", b"spz " + entry.key.encode(), "spz", "r",
                         metadata={"seconds": 1.5})
    CatalogIndex(artifacts, ledger).rows()  # the index is built before anything goes wrong
    return store, ledger, artifacts, good, bad


def every_view(ledger: Ledger, artifacts: ArtifactStore) -> dict:
    """Each catalog view, so that a test sees all of them work."""
    index = CatalogIndex(artifacts, ledger)
    return {"catalog": build_catalog(artifacts, ledger).to_dict("records"), "rows": index.rows(),
            "refresh": index.refresh(), "rebuild": index.rebuild(), "stats": store_stats(artifacts, ledger),
            "full": store_stats(artifacts, ledger, full=True)}


# -- 1: a ledger entry whose time no date can show -----------------------------------------------------
@pytest.mark.parametrize("created_at", [b"1e300", b"-1e15", b"NaN", b"Infinity", b"253402300800.0"])
def test_a_ledger_entry_with_an_impossible_time_is_a_bad_record(tmp_path, created_at) -> None:
    store, ledger, artifacts, good, bad = two_generations(tmp_path)
    entry = json.loads((tmp_path / f"ledger/{bad.key}.json").read_text())
    (tmp_path / f"ledger/{bad.key}.json").write_bytes(
        json.dumps({**entry, "created_at": 0.0}).encode().replace(b'"created_at": 0.0', b'"created_at": ' + created_at))
    changes.mark_changed(store, [bad.key])
    unreadable: list = []
    assert [e.key for e in ledger.all(unreadable)] == [good.key]
    assert len(unreadable) == 1 and "created_at" in str(unreadable[0]) and bad.key in str(unreadable[0])
    views = every_view(ledger, artifacts)
    for name in ("catalog", "rows"):
        by_key = {row["key"]: row for row in views[name]}
        assert by_key[good.key]["status"] == "partial (1/7)", name
        assert by_key[bad.key]["status"] == "unreadable" and "created_at" in by_key[bad.key]["prompt"], name
    assert views["stats"]["generations"] == views["full"]["generations"] == 2


def test_a_row_shows_a_time_out_of_range_as_unknown() -> None:
    entry = Generation(key="a-chair-s0", kind="text", prompt="a chair", seed=0, source="test", created_at=1e300)
    assert catalog_row(entry, {}, set())["created"] == "?"


# -- 2: version metadata that is not a number ----------------------------------------------------------
def test_metadata_that_is_not_a_number_is_left_out_of_the_row(tmp_path) -> None:
    store, ledger, artifacts, good, bad = two_generations(tmp_path)
    artifacts.record(bad.key, "generated_image", b"png", "png", "r", metadata={"seconds": float("nan")})
    artifacts.record(bad.key, "foreground_image", b"png 2", "png", "r", metadata={"seconds": 10**400})
    artifacts.record(bad.key, "initial_mesh", b"mesh", "glb", "r", metadata={"seconds": 2.0})
    artifacts.record(bad.key, "refined_mesh", b"mesh 2", "glb", "r", metadata={"seconds": "slow"})
    artifacts.record(bad.key, "gaussian_splat", b"ply", "ply", "r", metadata={"seconds": [1], "gaussians": "many"})
    artifacts.record(bad.key, "validation_score", b"{}", "json", "r",
                     metadata={"seconds": True, "score": {"a": 1}, "passed": "yes"})
    views = every_view(ledger, artifacts)
    for name in ("catalog", "rows"):
        row = {row["key"]: row for row in views[name]}[bad.key]
        assert row["total_seconds"] == 3.5 and row["initial_mesh_seconds"] == 2.0, name
        assert row["refined_mesh_seconds"] is None and row["validation_score_seconds"] is None, name
        assert row["score"] is None and row["gaussians"] is None and row["passed"] is None, name
        assert row["status"] == "below threshold", name  # "yes" is not a verdict
    assert views["stats"]["generations"] == 2


# -- 3: a catalog shard of the wrong shape ------------------------------------------------------------
def entries_of(store: LocalStore, key: str) -> dict:
    return json.loads(store.read(shard_path(key)))["entries"]


SHARDS = {
    "entries not objects": lambda good, bad: {"format": 1, "entries": {bad.key: 5}},
    "row null": lambda good, bad: {"format": 1, "entries": {bad.key: {"row": None}}},
    "fields missing": lambda good, bad: {"format": 1, "entries": {bad.key: {"row": {"status": "ok"}}}},
    "a junk key": lambda good, bad: {"format": 1, "entries": {"../x": {}}},
    "no entries": lambda good, bad: {"format": 1, "entries": {}},
    "totals empty": lambda good, bad: b'{"format":1,"totals_length":2,"totals":{},"entries":{}}',
}


@pytest.mark.parametrize("body", SHARDS.values(), ids=SHARDS.keys())
def test_a_shard_of_the_wrong_shape_is_rebuilt_from_the_ledger(tmp_path, body) -> None:
    store, ledger, artifacts, good, bad = two_generations(tmp_path)
    written = body(good, bad)
    store.write(shard_path(bad.key), written if isinstance(written, bytes) else json.dumps(written).encode())
    index = CatalogIndex(artifacts, ledger)
    assert sorted(row["key"] for row in index.rows()) == sorted([good.key, bad.key])
    assert list(entries_of(store, bad.key)) == [bad.key]  # rewritten from the store
    assert index.stats()["generations"] == 2
    assert {row["key"] for row in index.rebuild().rows} == {good.key, bad.key}


def test_an_entry_filed_in_another_shard_or_under_another_key_is_damage(tmp_path) -> None:
    store, ledger, artifacts, good, bad = two_generations(tmp_path)
    theirs = entries_of(store, good.key)[good.key]
    store.write(shard_path(bad.key), json.dumps({"format": 1, "entries": {good.key: theirs}}).encode())
    index = CatalogIndex(artifacts, ledger)
    assert sorted(row["key"] for row in index.rows()) == sorted([good.key, bad.key])
    assert list(entries_of(store, bad.key)) == [bad.key]
    store.write(shard_path(bad.key), json.dumps({"format": 1, "entries": {bad.key: theirs}}).encode())
    assert {row["key"]: row["spz_bytes"] for row in index.rows()}[bad.key] == len(b"spz " + bad.key.encode())


def test_damaged_totals_beside_sound_entries_are_summed_from_the_entries(tmp_path) -> None:
    store, ledger, artifacts, good, bad = two_generations(tmp_path)
    rows, totals = json.dumps(entries_of(store, bad.key), separators=(",", ":")).encode(), b'{"stale":1}'
    store.write(shard_path(bad.key), b'{"format":1,"totals_length":%d,"totals":%b,"entries":%b}' % (
        len(totals), totals, rows))
    mine = CatalogIndex(artifacts, ledger).stats()
    full = store_stats(artifacts, ledger, full=True)
    for name in ("generations", "versions", "logical_bytes", "by_asset", "by_status"):
        assert mine[name] == full[name], name


# -- 4: a record removed between the listing and its read ----------------------------------------------
class RacingStore(LocalStore):
    """A real local store where a concurrent remover deletes ``victim`` just after a listing names it."""

    victim: str | None = None

    def list(self, prefix: str):
        listing = list(super().list(prefix))
        if any(info.path == self.victim for info in listing):
            self.delete(self.victim)
        return iter(listing)


def test_a_record_removed_between_listing_and_reading_is_skipped(tmp_path) -> None:
    store = RacingStore(tmp_path)
    store, ledger, artifacts, good, bad = two_generations(tmp_path, store)
    store.victim = artifacts.latest(bad.key, "compressed_splat").path
    assert {row["key"]: row["status"] for row in build_catalog(artifacts, ledger).to_dict("records")} == {
        good.key: "partial (1/7)", bad.key: "pending"}
    store.victim = None
    artifacts.record(bad.key, "compressed_splat", b"again", "spz", "r")
    store.victim = artifacts.latest(bad.key, "compressed_splat").path
    done = CatalogIndex(artifacts, ledger).refresh([bad.key])
    assert [row["status"] for row in done.rows] == ["pending"] and done.unreadable == []
    store.victim = f"ledger/{bad.key}.json"
    unreadable: list = []
    assert [e.key for e in ledger.all(unreadable)] == [good.key] and unreadable == []


def remove_after_listing(monkeypatch, store, victims: set[str]) -> None:
    """A concurrent remover on the real store (local or S3): each path in ``victims`` is deleted just after a
    listing names it, so the reader meets ENOENT (NoSuchKey on S3) for a path its listing gave it."""
    listed = store.list

    def racing(prefix: str):
        listing = list(listed(prefix))
        for info in listing:
            if info.path in victims:
                store.delete(info.path)
        return iter(listing)

    monkeypatch.setattr(store, "list", racing)


def test_retention_skips_a_task_record_removed_after_listing(store, monkeypatch) -> None:
    """Retention lists the SN17 task records, then reads each: one removed in between (the queue's own
    cleanup, or a second retention) is gone, not a failure of the whole run."""
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    for task_id in ("t-gone", "t-done"):
        store.write(f"sn17/tasks/{task_id}.json", json.dumps({"task_id": task_id, "state": "submitted"}).encode())
    remove_after_listing(monkeypatch, store, {"sn17/tasks/t-gone.json"})
    report = apply_retention(artifacts, ledger, RetentionPolicy(max_age_hours=1, gc_grace_hours=0), now=2e9)
    assert report.tasks_dropped == 1 and report.unreadable == []
    assert list(store.list("sn17/tasks")) == []


def test_latest_falls_back_when_the_newest_version_is_removed_after_listing(store, monkeypatch) -> None:
    """``latest`` lists the versions, then reads the newest: removed in between (retention dropping it), the
    newest version still there is the answer; with none left, there is none."""
    artifacts = ArtifactStore(store)
    v1 = artifacts.record(KEY, "compressed_splat", b"spz one", "spz", "r1")
    v2 = artifacts.record(KEY, "compressed_splat", b"spz two", "spz", "r2")
    remove_after_listing(monkeypatch, store, {v2.path})
    assert artifacts.latest(KEY, "compressed_splat") == v1
    assert artifacts.load(KEY, "compressed_splat")[1] == b"spz one"
    remove_after_listing(monkeypatch, store, {v1.path})
    assert artifacts.latest(KEY, "compressed_splat") is None
    with pytest.raises(IntegrityError, match=r"no 'compressed_splat' for a-chair-0123456789-s1 in "):
        artifacts.load(KEY, "compressed_splat")


# -- 5: an SN17 task record with a wrong-typed time -----------------------------------------------------
TASK = {"type": "text", "validator_uid": 1, "validator_hotkey": "h", "validator_ip": "127.0.0.1",
        "validator_port": 1, "validation_threshold": 0.5, "reason": ""}


def queued(store: LocalStore, task_id: str, body: bytes | dict) -> bytes | dict:
    """A task record as the queue writes it, pulled now (an old pull would expire), and its marker; what was written."""
    record = body if isinstance(body, bytes) else {**TASK, "pulled_at": time.time(), "task_id": task_id,
                                                   "prompt": f"a chair {task_id}", **body}
    store.write(f"sn17/tasks/{task_id}.json", record if isinstance(record, bytes) else json.dumps(record).encode())
    store.write(f"sn17/active/{task_id}.json", b"")
    return record


def test_retention_reports_a_task_record_too_large_to_be_one_and_leaves_it(store) -> None:
    """A task record holds at most a prompt image (base64) and a few fields: one larger than any task
    (MAX_TASK_BYTES) is damage, reported and left in place, never read whole; the others are cleaned up."""
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    store.write("sn17/tasks/t-done.json", json.dumps({"task_id": "t-done", "state": "submitted"}).encode())
    huge = b" " * MAX_TASK_BYTES + json.dumps({"task_id": "t-huge", "state": "submitted"}).encode()
    store.write("sn17/tasks/t-huge.json", huge)
    report = apply_retention(artifacts, ledger, RetentionPolicy(max_age_hours=1, gc_grace_hours=0), now=2e9)
    assert report.tasks_dropped == 1 and [i.path for i in store.list("sn17/tasks")] == ["sn17/tasks/t-huge.json"]
    assert report.unreadable == [f"bad record {store.uri('sn17/tasks/t-huge.json')}: it is {len(huge):,} bytes, "
                                 f"not a record (at most {MAX_TASK_BYTES:,}); not read; fix or delete it (the rest "
                                 f"of the store is unaffected)"]


@pytest.mark.parametrize("odd", [{"state": "pulled", "pulled_at": "yesterday"}, {"state": "pulled", "pulled_at": None},
                                 {"state": "running", "started_at": "soon", "keys": []},
                                 {"state": "pulled", "start_errors": "2"}])
def test_a_task_record_with_a_wrong_typed_field_is_skipped_by_both_sensors(tmp_path, instance, odd) -> None:
    settings = Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox",
                        sn17={"wallet_name": "miner", "wallet_path": str(tmp_path / "wallets")})
    store = LocalStore(tmp_path / "store")
    queued(store, "t-good", {"state": "pulled"})
    written = queued(store, "t-odd", odd)
    queued(store, "t-half", b'{"task_id": "t-half", "sta')
    resources = build_definitions(settings).resources
    resources = {"store": resources["store"], "sn17": resources["sn17"]}
    for sensor in (sn17_task_sensor, sn17_submission_sensor):
        with dg.build_sensor_context(instance=instance, resources=resources, cursor=INDEXED) as context:
            result = sensor(context)
        requests = result.run_requests if isinstance(result, dg.SensorResult) else list(result)
        assert {r.tags["threegen/task_id"] for r in requests} == ({"t-good"} if sensor is sn17_task_sensor else set())
    queue = TaskQueue(store)
    assert [e["task_id"] for e in queue.active()] == ["t-good"]
    assert sorted(note.split("/")[-1].split(":")[0] for note in queue.notes) == ["t-half.json", "t-odd.json"]
    assert [e["task_id"] for e in queue.all()] == ["t-good"] and len(queue.notes) == 2
    assert queue.get("t-odd") == written  # left as it was


# -- 6: an inbox file whose name leaves no room for a suffix ---------------------------------------------
def test_rejected_files_with_the_longest_names_are_set_aside_and_never_block_the_inbox(tmp_path, instance) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    names = [f"a{i}" + "x" * (NAME_MAX - 2 - 5) + ".json" for i in range(3)]  # 255 bytes each
    for name in names:
        (inbox / name).write_bytes(b"not json")
    (inbox / "b-good.json").write_text(json.dumps({"id": "good-1", "prompt": "a red chair"}))
    settings = Settings(store=str(tmp_path / "store"), inbox=inbox)
    requests = []
    for _ in range(2):
        with dg.build_sensor_context(instance=instance, resources={
                "store": build_definitions(settings).resources["store"],
                "inbox": InboxResource(path=str(inbox), max_per_tick=3)}) as context:
            requests += inbox_sensor(context).run_requests
    assert [r.tags["threegen/task_id"] for r in requests] == ["good-1"]
    assert sorted(os.listdir(inbox)) == ["b-good.json", REJECTED]
    aside = sorted(os.listdir(inbox / REJECTED))
    assert len(aside) == 6 and all(len(os.fsencode(name)) <= NAME_MAX for name in aside)
    errors = [name for name in aside if name.endswith(".error.txt")]
    assert len({name[:20] for name in errors}) == 3  # each file its own, under its own shortened name
    assert all("not JSON" in (inbox / REJECTED / name).read_text() for name in errors)


@pytest.mark.parametrize("stem", ["y" * 250, "é" * 125, "z" * 230])
def test_a_long_name_set_aside_twice_gets_two_names_that_fit(tmp_path, stem) -> None:
    name = stem + ".json"
    with Inbox(tmp_path) as box:
        got = []
        for _ in range(3):
            (tmp_path / name).write_text("{}")
            got.append(box.set_aside(name, REJECTED, "a reason"))
    assert len(set(got)) == 3 and not (tmp_path / name).exists()
    for target in got:
        assert len(os.fsencode(target)) <= NAME_MAX and target.endswith(".json") and target.startswith(stem[:50])
        assert (tmp_path / REJECTED / target).read_text() == "{}"
        assert (tmp_path / REJECTED / f"{target}.error.txt").read_text() == "a reason\n"
