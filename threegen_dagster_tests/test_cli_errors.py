"""Errors say the cause: a failed stage is reported by its root cause in one line (human and
--json), and a registration whose run could not be created leaves no ledger entry. Real faults:
a store whose blob folder is a file, a model worker that is down, an instance database another
process holds locked, an instance on a disk that takes no more bytes."""

import json
import os
import resource
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from threegen_dagster import cli
from threegen_dagster.failures import root_cause
from threegen_dagster.keys import Prompt, generation_key
from threegen_dagster.storage import StorageError


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    for name in [k for k in os.environ if k.startswith("THREEGEN_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    monkeypatch.setenv("THREEGEN_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("THREEGEN_GAUSSIANS", "8000")
    return tmp_path


def ledger_keys(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "store" / "ledger").glob("*.json"))


def test_a_failed_stage_says_its_root_cause_in_one_line(env, capsys) -> None:
    (env / "store").mkdir()
    (env / "store" / "blobs").write_bytes(b"")  # the blob folder is a file: the first stage cannot store
    assert cli.main(["generate", "a cup", "--seed", "1", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    [error] = report["errors"]
    assert error.startswith("generated_image: ") and "NotADirectoryError" in error and "Not a directory" in error
    assert str(env / "store" / "blobs") in error and "\n" not in error and "Execution of step" not in error
    assert report["failures"] == [{"step_key": "generated_image", "cause": error.removeprefix("generated_image: ")}]

    assert cli.main(["generate", "a cup", "--seed", "1"]) == 1
    err = capsys.readouterr().err
    assert f"  error: {error}\n" in err


def test_a_worker_that_is_down_is_named_in_the_error(env, monkeypatch, capsys) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("THREEGEN_WORKER_URL", f"http://127.0.0.1:{port}")
    assert cli.main(["generate", "a cup", "--seed", "1"]) == 1
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("  error: ")]
    assert len(errors) == 1 and "FAILED" in out
    assert errors[0].startswith(f"  error: generated_image: BackendError: GPU worker at http://127.0.0.1:{port} is down")


def test_a_run_that_cannot_be_created_leaves_no_ledger_entry(env, capsys) -> None:
    assert cli.main(["add", "warm up", "--seed", "1"]) == 0  # the instance and its databases exist
    capsys.readouterr()
    key = generation_key(Prompt.from_text("a cup"), 1)
    lock = sqlite3.connect(env / "dagster_home" / "history" / "runs.db", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another process holds the runs database: no run can be created
    try:
        assert cli.main(["generate", "a cup", "--seed", "1", "--json"]) == 2
        out, err = capsys.readouterr()
        [error] = json.loads(out)["errors"]
        assert error == (f"could not create a run for {key}; its new ledger entry was removed again: "
                         f"OperationalError: database is locked")
        assert f"threegen: {error}\n" in err and "Traceback" not in err
        assert ledger_keys(env) == [f"{generation_key(Prompt.from_text('warm up'), 1)}.json"]
        with dg.DagsterInstance.get() as instance:
            assert not instance.has_dynamic_partition("generations", key)

        assert cli.main(["generate", "warm up", "--seed", "1"]) == 2  # registered before: it stays
        assert "could not create a run for warm-up-" in capsys.readouterr().err
        assert len(ledger_keys(env)) == 1
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert cli.main(["add", "a cup", "--seed", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"key": key, "new": True}


def _full_disk() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))  # no file may grow past 1 KiB


def test_an_instance_on_a_full_disk_is_one_line_and_nothing_is_registered(env, capsys) -> None:
    assert cli.main(["add", "warm up", "--seed", "1"]) == 0
    before = ledger_keys(env)
    done = subprocess.run([sys.executable, "-m", "threegen_dagster.cli", "generate", "a cup", "--seed", "1"],
                          env=dict(os.environ), capture_output=True, text=True, preexec_fn=_full_disk, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("threegen: ")]
    assert line.startswith(f"threegen: cannot open the Dagster instance at {env / 'dagster_home'}: OperationalError: ")
    assert ledger_keys(env) == before


def test_root_cause_follows_causes_and_keeps_this_project_s_message() -> None:
    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise StorageError(28, "cannot write blobs/ab/cd: the store's disk is full") from exc
    except StorageError as exc:
        wrapped = exc
    assert root_cause(wrapped) == ("StorageError: [Errno 28] cannot write blobs/ab/cd: the store's disk is full "
                                   "(caused by OSError: [Errno 28] No space left on device)")
    try:
        try:
            {}["x"]
        except KeyError:
            raise ValueError("bad\n  value") from None  # the context is suppressed: it is not the cause
    except ValueError as exc:
        assert root_cause(exc) == "ValueError: bad value"
    try:
        try:
            1 / 0
        except ZeroDivisionError:
            raise RuntimeError("while dividing")  # raised while handling: the context is followed
    except RuntimeError as exc:
        assert root_cause(exc) == "ZeroDivisionError: division by zero"
