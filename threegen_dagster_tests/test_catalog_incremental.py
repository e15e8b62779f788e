"""The catalog is never stale and costs what changed, not what the store holds: a UI-style asset run
(the implicit asset job, no `generate`) and a run failed by the blocking check are each followed by a
refresh of exactly their generations (run-status sensors over every job, driven through
``dg.build_run_status_sensor_context``); a refresh reads only the changed generations' records and
one shard; a change made during a refresh is not lost; concurrent refreshes of one shard keep every
row; the index agrees with a full scan; a damaged shard is rebuilt on read."""

import json
import threading
from pathlib import Path

import dagster as dg
import pytest

from threegen_dagster import changes, cli
from threegen_dagster.artifacts import ArtifactStore, blob_path
from threegen_dagster.catalog import build_catalog, statuses
from threegen_dagster.catalog_index import INDEX, CatalogIndex, shard_path
from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.catalog import INLINE_TAG, catalog_after_failed_run, catalog_after_generation
from threegen_dagster.defs.generation import PIPELINE
from threegen_dagster.keys import Prompt
from threegen_dagster.ledger import Ledger
from threegen_dagster.retention import RetentionPolicy, apply_retention
from threegen_dagster.settings import Settings
from threegen_dagster.storage import LocalStore

QUIET = cli.QUIET_RUN


def settings_for(root: Path, **overrides) -> Settings:
    return Settings(store=str(root / "artifacts"), inbox=root / "inbox", gaussians=20000, **overrides)


def index_of(settings: Settings) -> CatalogIndex:
    store = LocalStore(settings.store)
    return CatalogIndex(ArtifactStore(store), Ledger(store))


def stored_row(settings: Settings, key: str) -> dict | None:
    """The row as the index holds it now (the shard file itself: no reconciling on read)."""
    path = Path(settings.store) / shard_path(key)
    entry = json.loads(path.read_text())["entries"].get(key) if path.exists() else None
    return entry and entry["row"]


def sensor_answer(sensor, instance: dg.DagsterInstance, run_id: str, status: dg.DagsterEventType):
    (record,) = instance.get_records_for_run(run_id, of_type=status).records
    context = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance, dagster_run=instance.get_run_by_id(run_id))
    return sensor(context)


def run_request(defs: dg.Definitions, instance: dg.DagsterInstance, request: dg.RunRequest):
    return defs.resolve_job_def("refresh_catalog").execute_in_process(
        instance=instance, run_config=request.run_config, asset_selection=request.asset_selection,
        tags=request.tags)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_a_ui_asset_run_is_followed_by_a_refresh_of_its_generation(tmp_path, instance) -> None:
    settings = settings_for(tmp_path)
    defs = build_definitions(settings)
    entry, _ = cli.register(Prompt.from_text("a green teapot"), 3, "test", settings, instance)
    other, _ = cli.register(Prompt.from_text("a red mug"), 1, "test", settings, instance)
    index_of(settings).rows()  # reading reconciles with the ledger: both indexed, pending
    assert stored_row(settings, entry.key)["status"] == "pending"

    # what the UI's "Materialize" on one partition launches: the implicit asset job, not `generate`
    asset_job = defs.resolve_implicit_global_asset_job_def()
    run = asset_job.execute_in_process(instance=instance, partition_key=entry.key, run_config=QUIET,
                                       asset_selection=[a.key for a in PIPELINE])
    assert run.success and run.dagster_run.job_name == "__ASSET_JOB"
    assert stored_row(settings, entry.key)["status"] == "pending"  # stale until the sensor's run

    request = sensor_answer(catalog_after_generation, instance, run.run_id, dg.DagsterEventType.RUN_SUCCESS)
    assert isinstance(request, dg.RunRequest) and request.run_key == f"catalog-after-{run.run_id}"
    assert request.run_config["ops"]["generation_catalog"]["config"]["keys"] == [entry.key]
    refresh = run_request(defs, instance, request)
    assert refresh.success
    row = stored_row(settings, entry.key)
    assert row["status"] == "complete" and row["score"] >= 0.6 and row["versions"] == 7
    assert stored_row(settings, other.key)["status"] == "pending"
    metadata = refresh.asset_materializations_for_node("generation_catalog")[0].metadata
    assert metadata["refreshed"].value == 1 and entry.key in metadata["rows"].value
    assert changes.pending(LocalStore(settings.store)) == {}  # the journal was drained

    # the refresh run is not followed by another one
    again = sensor_answer(catalog_after_generation, instance, refresh.run_id, dg.DagsterEventType.RUN_SUCCESS)
    assert isinstance(again, dg.SkipReason) and "refreshed the catalog itself" in again.skip_message


def test_a_run_failed_by_the_blocking_check_is_followed_by_a_refresh(tmp_path, instance) -> None:
    settings = settings_for(tmp_path, score_threshold=0.999)
    defs = build_definitions(settings)
    entry, _ = cli.register(Prompt.from_text("a tall lamp"), 2, "test", settings, instance)
    run = defs.resolve_job_def("generate").execute_in_process(
        instance=instance, partition_key=entry.key, run_config=QUIET, raise_on_error=False)
    assert not run.success
    request = sensor_answer(catalog_after_failed_run, instance, run.run_id, dg.DagsterEventType.RUN_FAILURE)
    assert isinstance(request, dg.RunRequest)
    assert run_request(defs, instance, request).success
    assert stored_row(settings, entry.key)["status"] == "below threshold"


def test_a_cli_run_refreshes_inline_and_the_sensor_skips_it(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("THREEGEN_GAUSSIANS", "20000")
    assert cli.main(["generate", "a small boat", "--seed", "5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    settings = Settings(store=str(tmp_path / "artifacts"), inbox=tmp_path)
    assert stored_row(settings, report["key"])["status"] == "complete"  # no second run needed
    with dg.DagsterInstance.get() as instance:
        assert {r.job_name for r in instance.get_runs()} == {"generate"}
        event = instance.get_latest_materialization_event(dg.AssetKey("generation_catalog"))
        assert event.asset_materialization.metadata["after_run"].value == report["run_id"]
        assert instance.get_run_by_id(report["run_id"]).tags[INLINE_TAG] == "inline"
        skip = sensor_answer(catalog_after_generation, instance, report["run_id"], dg.DagsterEventType.RUN_SUCCESS)
    assert isinstance(skip, dg.SkipReason) and "refreshed the catalog itself" in skip.skip_message


# -- cost and correctness of the index, on stores built directly -------------------------------
class CountingStore(LocalStore):
    """A real local store that notes what it reads and lists."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.reads: list[str] = []
        self.lists: list[str] = []
        self.on_list = None

    def read(self, relative: str, max_bytes: int | None = None) -> bytes:
        self.reads.append(relative)
        return super().read(relative, max_bytes)

    def read_tagged(self, relative: str, max_bytes: int | None = None):
        self.reads.append(relative)
        return super().read_tagged(relative, max_bytes)

    def list(self, prefix: str):
        self.lists.append(prefix)
        listing = super().list(prefix)
        if self.on_list is not None and prefix == changes.CHANGES:
            listing = iter(list(listing))
            self.on_list()
        return listing


def populate(root: Path, n: int) -> tuple[CountingStore, list[str]]:
    store = CountingStore(root)
    ledger, artifacts = Ledger(store), ArtifactStore(store)
    keys = []
    for i in range(n):
        entry, _ = ledger.add(Prompt.from_text(f"thing number {i}"), i, "test")
        artifacts.record(entry.key, "compressed_splat", f"splat {i}".encode(), "spz", "r")
        artifacts.record(entry.key, "validation_score", b'{"score": 0.7}', "json", "r",
                         metadata={"score": 0.7, "passed": True})  # the same bytes everywhere: one blob
        keys.append(entry.key)
    return store, keys


def test_a_refresh_reads_only_the_generations_that_changed(tmp_path) -> None:
    store, keys = populate(tmp_path, 40)
    index = CatalogIndex(ArtifactStore(store), Ledger(store))
    assert len(index.rebuild().rows) == 40
    store.reads.clear(), store.lists.clear()

    changed = keys[17]
    ArtifactStore(store).record(changed, "compressed_splat", b"a better splat", "spz", "r")
    store.reads.clear(), store.lists.clear()
    done = index.refresh()
    assert [row["key"] for row in done.rows] == [changed] and done.rows[0]["versions"] == 3
    assert set(store.lists) == {changes.CHANGES, f"generations/{changed}"}
    assert set(store.reads) == {f"ledger/{changed}.json", shard_path(changed),
                                *(f"generations/{changed}/compressed_splat/v00000{v}.json" for v in (1, 2)),
                                f"generations/{changed}/validation_score/v000001.json"}
    store.reads.clear(), store.lists.clear()
    assert index.refresh().rows == [] and set(store.reads) == set()  # nothing changed: nothing read


def test_a_change_made_during_a_refresh_is_picked_up_by_the_next(tmp_path) -> None:
    store, keys = populate(tmp_path, 3)
    index = CatalogIndex(ArtifactStore(store), Ledger(store))
    index.rebuild()
    late = ArtifactStore(store)
    store.on_list = lambda: late.record(keys[1], "refined_mesh", b"glb", "glb", "r")  # lands mid-refresh
    index.refresh()
    store.on_list = None
    assert set(changes.pending(store)) == {keys[1]}  # its marker came after the listing: kept
    index.refresh()
    assert changes.pending(store) == {} and stored_row(Settings(store=str(tmp_path), inbox=tmp_path),
                                                       keys[1])["status"] == "partial (3/7)"


def test_concurrent_refreshes_of_one_shard_keep_every_row(tmp_path) -> None:
    store = LocalStore(tmp_path)
    ledger, artifacts = Ledger(store), ArtifactStore(store)
    same_shard: list[str] = []
    for i in range(3000):  # keys that fall into one shard
        entry, _ = ledger.add(Prompt.from_text(f"crowd {i}"), 0, "test")
        if shard_path(entry.key) == f"{INDEX}/00.json":
            same_shard.append(entry.key)
        else:
            ledger.remove(entry.key)
        if len(same_shard) == 8:
            break
    barrier = threading.Barrier(8)

    def refresh(key: str) -> None:
        barrier.wait()
        CatalogIndex(artifacts, ledger).refresh([key])

    threads = [threading.Thread(target=refresh, args=(key,)) for key in same_shard]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shard = json.loads((tmp_path / INDEX / "00.json").read_text())["entries"]
    assert sorted(shard) == sorted(same_shard)


def test_the_index_agrees_with_a_full_scan_and_follows_keep_and_retention(tmp_path) -> None:
    store, keys = populate(tmp_path, 6)
    ledger, artifacts = Ledger(store), ArtifactStore(store)
    artifacts.record(keys[0], "initial_mesh", b"mesh", "glb", "r", extras={"ply": b"ply bytes"})
    artifacts.record(None, "validator_records", b"uid\n1\n", "csv", "r")
    ledger.set_keep(keys[2])
    index = CatalogIndex(artifacts, ledger)

    def agree() -> None:
        full = build_catalog(artifacts, ledger)
        assert index.rows() == full.to_dict("records")
        scan = artifacts.stats(statuses(full))
        mine = index.stats()
        for name in ("generations", "versions", "blobs", "logical_bytes", "stored_bytes", "dedup_ratio",
                     "missing_blobs", "by_asset", "by_status", "unreadable_records"):
            assert mine[name] == scan[name], name

    agree()
    assert {row["key"]: row["keep"] for row in index.rows()}[keys[2]] is True
    old = json.loads((tmp_path / f"ledger/{keys[3]}.json").read_text())["created_at"]
    report = apply_retention(artifacts, ledger, RetentionPolicy(max_age_hours=1, keep_passed_hours=1,
                                                                gc_grace_hours=0), now=old + 10**5)
    assert report.removed and keys[2] not in report.removed
    agree()
    assert [row["key"] for row in index.rows()] == [keys[2]]


def test_a_damaged_shard_is_rebuilt_on_read(tmp_path) -> None:
    store, keys = populate(tmp_path, 5)
    index = CatalogIndex(ArtifactStore(store), Ledger(store))
    index.rebuild()
    (tmp_path / shard_path(keys[0])).write_bytes(b'{"format": 1, "entr')
    assert sorted(row["key"] for row in index.rows()) == sorted(keys)
    assert stored_row(Settings(store=str(tmp_path), inbox=tmp_path), keys[0])["key"] == keys[0]


def test_stats_come_from_the_shard_totals_and_stay_exact_across_shards(tmp_path) -> None:
    """Each shard carries its entries' totals; stats sums them (blobs shared across shards counted once,
    a missing shared blob once), and agrees with a full scan after bad records, a removal, a retention
    change, a shard of the older layout (no totals) and a damaged shard."""
    store, keys = populate(tmp_path, 12)  # every generation shares the validation_score blob
    ledger, artifacts = Ledger(store), ArtifactStore(store)
    assert len({shard_path(key) for key in keys}) > 1
    artifacts.record(keys[1], "initial_mesh", b"mesh", "glb", "r", extras={"ply": b"ply bytes"})
    artifacts.record(keys[5], "initial_mesh", b"mesh", "glb", "r", extras={"ply": b"ply bytes"})  # shared too
    for key in (keys[7], keys[3]):  # bad version records in two generations: named in (created, key) order
        (tmp_path / f"generations/{key}/refined_mesh").mkdir(parents=True)
        (tmp_path / f"generations/{key}/refined_mesh/v000001.json").write_text('{"asset": "refined_me')
    index = CatalogIndex(artifacts, ledger)

    def agree() -> dict:
        scan = artifacts.stats(statuses(build_catalog(artifacts, ledger)))
        mine = index.stats()
        assert mine["source"] == "index"
        for name in ("generations", "versions", "blobs", "logical_bytes", "stored_bytes", "dedup_ratio",
                     "missing_blobs", "by_asset", "by_status", "unreadable_records"):
            assert mine[name] == scan[name], name
        return mine

    first = agree()
    assert first["generations"] == 12 and first["by_asset"]["validation_score"]["unique_blobs"] == 1
    assert len(first["unreadable_records"]) == 2
    shards = sorted((tmp_path / INDEX).glob("*.json"))
    body = json.loads(shards[0].read_text())
    assert body["totals"]["generations"] == len(body["entries"])  # the totals travel with their rows

    totals = json.loads((tmp_path / shard_path(keys[0])).read_text())["totals"]
    (blob,) = totals["by_asset"]["validation_score"]["blobs"]
    (tmp_path / blob_path(blob)).unlink()  # a blob every shard refers to, gone
    for key in keys:
        changes.mark_changed(store, [key])
    assert agree()["missing_blobs"] == 1

    ledger.remove(keys[4])
    ledger.set_keep(keys[6])
    old = json.loads((tmp_path / f"ledger/{keys[9]}.json").read_text())["created_at"]
    report = apply_retention(artifacts, ledger, RetentionPolicy(max_age_hours=1, keep_passed_hours=1,
                                                                gc_grace_hours=0), now=old + 10**5)
    assert report.removed and keys[6] not in report.removed
    assert agree()["generations"] == 1

    (tmp_path / shard_path(keys[6])).write_text(json.dumps({"format": 1, "entries": json.loads(
        (tmp_path / shard_path(keys[6])).read_text())["entries"]}))  # the layout before totals
    agree()
    (tmp_path / shard_path(keys[6])).write_bytes(b'{"format":1,"totals_length":9,"tot')  # damaged
    assert agree()["by_status"]
