"""Removing generations completely, from the UI's remove_generations job and from `threegen remove`, on a
real instance (a DAGSTER_HOME folder, as the CLI and `make ui` use) and a real store: the partition, the
ledger entry, every version and the blobs only they used go; blobs another generation shares stay and
that generation still loads, hash-verified. Unknown keys, held generations and running ones are refused
in one line, with nothing removed."""

import contextlib
import io
import shutil

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from threegen_dagster import cli
from threegen_dagster.artifacts import blob_path
from threegen_dagster.catalog import STAGES
from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.instance import get_instance
from threegen_dagster.settings import Settings
from threegen_dagster.stores import OpenedStore

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A folder (store in artifacts/, instance in .dagster/) with three complete generations: one image
    prompt with seeds 1 and 2 (they share the image's blobs), and a text prompt."""
    root = tmp_path_factory.mktemp("remove")
    pixels = np.full((96, 120, 3), 245, np.uint8)
    pixels[20:76, 30:90] = (190, 30, 40)
    Image.fromarray(pixels, "RGB").save(root / "mug.png")
    keys = []
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("DAGSTER_HOME", raising=False)
        patch.setenv("THREEGEN_GAUSSIANS", "8000")
        for argv in (["--image", "mug.png", "--seed", "1", "a red mug"], ["--image", "mug.png", "--seed", "2"],
                     ["a wooden chair", "--seed", "5"]):
            code, out, err = run_cli(["generate", *argv, "--json"])
            assert code == 0, err
            keys.append(__import__("json").loads(out)["key"])
    return root, keys


@pytest.fixture
def here(template, tmp_path, monkeypatch):
    """A copy of the template, so each test removes from its own store and instance."""
    root, keys = template
    shutil.copytree(root, tmp_path / "w")
    monkeypatch.chdir(tmp_path / "w")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("THREEGEN_GAUSSIANS", "8000")
    store = OpenedStore.from_settings(Settings.from_env())
    return store, get_instance(), keys


def blobs_of(store: OpenedStore, key: str) -> set[str]:
    return {sha for stage in STAGES for m in store.artifacts().versions(key, stage) for sha in m.blobs()}


def assert_gone(store: OpenedStore, instance, key: str) -> None:
    assert not instance.has_dynamic_partition("generations", key)
    assert store.ledger().find(key) is None
    assert list(store.store().list(f"generations/{key}")) == []


def assert_whole(store: OpenedStore, instance, key: str) -> None:
    assert instance.has_dynamic_partition("generations", key) and store.ledger().find(key) is not None
    for stage in STAGES:
        store.artifacts().load(key, stage)  # every stage's bytes present and hash-verified


def remove_job(instance, keys: list[str]) -> dg.ExecuteInProcessResult:
    return build_definitions(Settings.from_env()).resolve_job_def("remove_generations").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={**QUIET, "ops": {"remove_keys": {"config": {"keys": keys}}}})


def test_the_remove_job_removes_a_generation_and_keeps_the_blobs_it_shares(here) -> None:
    store, instance, (one, two, chair) = here
    mine, theirs = blobs_of(store, one), blobs_of(store, two) | blobs_of(store, chair)
    shared, only_mine = mine & theirs, mine - theirs
    assert shared and only_mine  # the image's blobs are shared; the seed-dependent ones are not
    result = remove_job(instance, [one])
    assert result.success
    summary = result.output_for_node("remove_keys")
    assert summary["removed"] == [one] and summary["blobs_deleted"] == len(only_mine)
    assert summary["blobs_shared"] == len(shared) and summary["versions"] == len(STAGES)
    assert_gone(store, instance, one)
    assert not any(store.store().exists(blob_path(sha)) for sha in only_mine)
    assert all(store.store().exists(blob_path(sha)) for sha in shared)
    assert_whole(store, instance, two)
    assert_whole(store, instance, chair)


def test_threegen_remove_removes_several_keys(here) -> None:
    store, instance, (one, two, chair) = here
    code, out, err = run_cli(["remove", two, chair, two])
    assert code == 0, err
    assert out.splitlines()[:2] == [f"removed {two}", f"removed {chair}"]
    assert_gone(store, instance, two)
    assert_gone(store, instance, chair)
    assert_whole(store, instance, one)  # the image's blobs it shared with `two` are still there


def test_an_unknown_key_refuses_the_whole_removal_in_one_line(here) -> None:
    store, instance, (one, _, _) = here
    code, out, err = run_cli(["remove", one, "a-cup-0123456789-s1"])
    assert code == 2 and out == ""
    assert err == ("threegen: nothing removed: no generation 'a-cup-0123456789-s1': not in the ledger, the store "
                   "or the partitions; check the key (`threegen catalog`)\n")
    code, _, err = run_cli(["remove", "A Red Mug"])
    assert code == 2 and err.startswith("threegen: nothing removed: 'A Red Mug' is not a generation key: type "
                                        "lower-case words and a seed like a-red-mug-s0")
    result = remove_job(instance, ["a-cup-0123456789-s1"])
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_failure_data.user_failure_data.description.startswith(
        "nothing removed: no generation 'a-cup-0123456789-s1'")
    assert_whole(store, instance, one)


def test_held_and_running_generations_are_not_removed(here) -> None:
    store, instance, (one, two, _) = here
    store.ledger().hold(one, "sn17-task-7")
    run = instance.create_run_for_job(build_definitions(Settings.from_env()).resolve_job_def("generate"),
                                      status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": two})
    code, _, err = run_cli(["remove", one, two])
    assert code == 2
    assert err.count("\n") == 1 and f"{one} is held (sn17-task-7: a pending SN17 submission needs it)" in err
    assert f"{two} has a run in progress ({run.run_id}): wait for it or terminate it first" in err
    assert_whole(store, instance, one)
    assert_whole(store, instance, two)
    store.ledger().release(one, "sn17-task-7")
    instance.report_run_failed(run)
    assert run_cli(["remove", one, two])[0] == 0
    assert_gone(store, instance, one)


def test_junk_partitions_and_half_removed_generations_can_be_removed(here) -> None:
    store, instance, (one, _, _) = here
    instance.add_dynamic_partitions("generations", ["a-blue-vase", "a-cup-0123456789-s1"])  # typed into the UI
    store.ledger().remove(one)  # as if a removal died between the ledger and the partition
    result = remove_job(instance, ["a-blue-vase", "a-cup-0123456789-s1", one])
    assert result.success
    assert set(instance.get_dynamic_partitions("generations")).isdisjoint({"a-blue-vase", "a-cup-0123456789-s1", one})
    assert_gone(store, instance, one)
