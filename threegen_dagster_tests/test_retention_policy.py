"""One retention policy: the environment's, whether the schedule launches ``cleanup`` or a person does
(run config only overrides a field); and nothing retention or a released hold deletes leaves an empty
folder behind in a local store, even with a writer filling the same folder at the same time."""

import multiprocessing
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.cli import QUIET_RUN
from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.retention import RetentionConfig
from threegen_dagster.keys import Prompt
from threegen_dagster.ledger import Ledger
from threegen_dagster.retention import RetentionPolicy, apply_retention
from threegen_dagster.settings import Settings
from threegen_dagster.storage import LocalStore

HOUR = 3600.0


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def env_settings(tmp_path, monkeypatch, **env) -> Settings:
    monkeypatch.chdir(tmp_path)
    for name in ("THREEGEN_RETENTION_HOURS", "THREEGEN_KEEP_PASSED_HOURS", "THREEGEN_SLIM_HOURS",
                 "THREEGEN_KEEP_VERSIONS", "THREEGEN_STORE", "THREEGEN_INBOX"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def generation(settings: Settings, text: str, age_h: float, versions: int = 1) -> str:
    store = LocalStore(settings.store)
    entry, _ = Ledger(store).add(Prompt.from_text(text), 0, "test", now=time.time() - age_h * HOUR)
    for n in range(versions):
        ArtifactStore(store).record(entry.key, "compressed_splat", f"{text} {n}".encode(), "spz", "r",
                                    now=time.time() - age_h * HOUR)
    return entry.key


def cleanup(instance, settings: Settings, **overrides) -> dict:
    job = build_definitions(settings).resolve_job_def("cleanup")
    config = {"ops": {"apply_retention": {"config": overrides}}} if overrides else {}
    return job.execute_in_process(instance=instance, run_config={**config, **QUIET_RUN}).output_for_node(
        "apply_retention")


@pytest.mark.parametrize("hours,survivors", [("0", ["kept"]), ("1", ["kept", "young"])])
def test_cleanup_launched_by_hand_applies_the_environments_policy(tmp_path, monkeypatch, instance, hours,
                                                                   survivors) -> None:
    settings = env_settings(tmp_path, monkeypatch, THREEGEN_RETENTION_HOURS=hours)
    keys = {name: generation(settings, name, age) for name, age in (("old", 2), ("young", 0.5), ("kept", 2))}
    Ledger(LocalStore(settings.store)).set_keep(keys["kept"])

    report = cleanup(instance, settings)  # no run config at all: as launched from the UI's launchpad
    assert sorted(report["removed"]) == sorted(keys[name] for name in keys if name not in survivors)
    ledger = Ledger(LocalStore(settings.store))
    assert sorted(e.prompt for e in ledger.all()) == survivors


def test_the_schedule_and_a_manual_run_apply_one_policy(tmp_path, monkeypatch, instance) -> None:
    settings = env_settings(tmp_path, monkeypatch, THREEGEN_RETENTION_HOURS="1", THREEGEN_KEEP_VERSIONS="1")
    schedule = build_definitions(settings).resolve_schedule_def("daily_cleanup")
    with dg.build_schedule_context(instance=instance) as context:
        request = schedule.evaluate_tick(context).run_requests[0]
    assert "older than 1 h" in schedule.description and "keep 1 versions" in schedule.description
    old = generation(settings, "old", 2)
    young = generation(settings, "young", 0.5, versions=3)
    job = build_definitions(settings).resolve_job_def("cleanup")
    report = job.execute_in_process(instance=instance, run_config={**request.run_config, **QUIET_RUN},
                                    tags=request.tags).output_for_node("apply_retention")
    assert report["removed"] == [old] and report["versions_dropped"] == 2  # THREEGEN_KEEP_VERSIONS=1
    assert [m.version for m in ArtifactStore(LocalStore(settings.store)).versions(young, "compressed_splat")] == [3]


def test_run_config_overrides_a_field_and_the_rest_stays_the_environments(tmp_path, monkeypatch, instance) -> None:
    settings = env_settings(tmp_path, monkeypatch, THREEGEN_KEEP_VERSIONS="1", THREEGEN_RETENTION_HOURS="1")
    old = generation(settings, "old", 2, versions=3)
    dry = cleanup(instance, settings, max_age_hours=1000, dry_run=True)
    assert dry["removed"] == [] and dry["versions_dropped"] == 2  # keep_versions still 1, from the environment
    assert cleanup(instance, settings)["removed"] == [old]


def test_retention_defaults_have_one_source(tmp_path, monkeypatch) -> None:
    assert env_settings(tmp_path, monkeypatch).retention == RetentionPolicy()
    policy = RetentionPolicy(max_age_hours=5, keep_passed_hours=6, slim_after_hours=0, keep_versions=2)
    assert RetentionConfig().policy(policy) == policy
    assert RetentionConfig(keep_versions=4).policy(policy) == RetentionPolicy(5, 6, 0, 4)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        RetentionConfig(keep_versions=0)


def empty_folders(root: Path) -> list[str]:
    return sorted(str(Path(d).relative_to(root)) for d, subdirs, files in os.walk(root)
                  if not subdirs and not files and Path(d) != root)


def test_released_holds_and_retention_leave_no_empty_folders(tmp_path) -> None:
    store = LocalStore(tmp_path / "store")
    ledger, artifacts = Ledger(store), ArtifactStore(store)
    now = time.time()
    keys = []
    for n in range(3):
        age = 0 if n == 1 else 100 * HOUR  # thing 1 is young: only its old versions go
        entry, _ = ledger.add(Prompt.from_text(f"thing {n}"), 0, "test", now=now - age)
        keys.append(entry.key)
        for v in range(3):
            artifacts.record(entry.key, "compressed_splat", f"{n}-{v}".encode(), "spz", "r", now=now - 100 * HOUR)
    ledger.hold(keys[0], "submission-1")
    ledger.hold(keys[0], "submission-2")
    ledger.release(keys[0], "submission-1")
    assert empty_folders(store.root) == [] and ledger.holds() == {keys[0]: ["submission-2"]}
    ledger.release(keys[0], "submission-2")
    assert empty_folders(store.root) == [] and not (store.root / "ledger" / "holds").exists()

    report = apply_retention(artifacts, ledger, RetentionPolicy(max_age_hours=10, keep_versions=1, gc_grace_hours=0,
                                                                slim_after_hours=0), now=now)
    assert sorted(report.removed) == sorted([keys[0], keys[2]]) and report.versions_dropped == 2
    assert report.blobs_deleted == 8
    assert empty_folders(store.root) == []
    assert [m.version for m in artifacts.versions(keys[1], "compressed_splat")] == [3]


def _churn(root: str, name: str, rounds: int) -> None:
    store = LocalStore(root)
    for n in range(rounds):
        store.write(f"blobs/ab/cd/{name}-{n}", b"x")
        assert store.read(f"blobs/ab/cd/{name}-{n}") == b"x"
        store.delete(f"blobs/ab/cd/{name}-{n}")  # often empties the folder: pruned up to the root


def test_writers_racing_the_pruning_of_their_folder_never_fail(tmp_path) -> None:
    """Three processes write into one folder and delete what they wrote, so the folder is emptied and
    removed over and over while the others are making it to write: a write that does not retry fails
    there (between making the folder and creating its file in it)."""
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=_churn, args=(str(tmp_path), f"w{i}", 500)) for i in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    assert [p.exitcode for p in workers] == [0, 0, 0]
    assert list(tmp_path.iterdir()) == []  # and nothing left behind, not even the folders


def test_kept_and_held_generations_are_neither_slimmed_nor_thinned(tmp_path) -> None:
    """Due to be slimmed and with more versions than are kept: an unmarked generation loses its heavy
    blobs and old versions; a kept one and a held one lose nothing."""
    store = LocalStore(tmp_path)
    ledger, artifacts = Ledger(store), ArtifactStore(store)
    keys = {}
    for name in ("plain", "kept", "held"):
        entry, _ = ledger.add(Prompt.from_text(f"a {name} vase"), 0, "test", now=time.time() - 10 * HOUR)
        for n in range(3):
            for asset, ext in (("generated_image", "png"), ("compressed_splat", "spz")):
                artifacts.record(entry.key, asset, f"{name} {asset} {n}".encode(), ext, "r",
                                 now=time.time() - 10 * HOUR)
        keys[name] = entry.key
    ledger.set_keep(keys["kept"])
    ledger.hold(keys["held"], "submission-t1")
    policy = RetentionPolicy(max_age_hours=100, keep_passed_hours=100, slim_after_hours=5, keep_versions=1)
    report = apply_retention(artifacts, ledger, policy)

    assert sorted(report.protected) == sorted([keys["kept"], keys["held"]]) and report.removed == []
    plain = artifacts.versions(keys["plain"], "generated_image")
    assert [m.version for m in plain] == [3] and plain[0].pruned_at is not None  # thinned, then slimmed
    assert [m.version for m in artifacts.versions(keys["plain"], "compressed_splat")] == [3]
    for name in ("kept", "held"):
        for asset in ("generated_image", "compressed_splat"):
            versions = artifacts.versions(keys[name], asset)
            assert [m.version for m in versions] == [1, 2, 3], (name, asset)
            assert all(m.pruned_at is None for m in versions), (name, asset)
            assert [artifacts.load(keys[name], asset, version=m.version)[1] for m in versions] == [
                f"{name} {asset} {n}".encode() for n in range(3)]
