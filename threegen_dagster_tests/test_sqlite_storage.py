"""The project's instance storage: Dagster's SQLite files, its event log's connections kept open
(threegen_dagster/defs/sqlite_storage.py). Real instances on real files, read back by Dagster's own
storage and by other processes, shards deleted under it, a forked child, a process that exits."""

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef
import psutil
import pytest

from threegen_dagster.defs.instance import ensure_home
from threegen_dagster.defs.sqlite_storage import OPEN_FILES, PooledSqliteEventLogStorage

DEFAULT_YAML = "telemetry:\n  enabled: false\n"  # no storage key: Dagster's own SQLite storage


@dg.asset
def thing() -> int:
    return 1


def materialize(instance: dg.DagsterInstance) -> str:
    result = dg.materialize([thing], instance=instance)
    assert result.success
    return result.run_id


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    return ensure_home(tmp_path / "home")  # the project's dagster.yaml, as the CLI and the UI use it


def plain_instance(home: Path, tmp_path: Path) -> dg.DagsterInstance:
    """The same DAGSTER_HOME opened with Dagster's defaults: a dagster.yaml without our instance class."""
    other = tmp_path / "plain-config"
    other.mkdir(exist_ok=True)
    (other / "dagster.yaml").write_text(DEFAULT_YAML)
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), config_dir=str(other)))


def shard_files(home: Path, run_id: str) -> set[str]:
    return {p.name for p in (home / "history" / "runs").glob(f"{run_id}.db*")}


def test_the_project_instance_uses_it_on_dagster_s_own_files(home, tmp_path) -> None:
    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        first = materialize(instance)
        with plain_instance(home, tmp_path) as plain:  # Dagster's own storage reads what it wrote ...
            assert plain.get_run_by_id(first).status == dg.DagsterRunStatus.SUCCESS
            assert plain.get_latest_materialization_event(dg.AssetKey("thing")).run_id == first
            second = materialize(plain)  # ... and writes what it reads, while its connections stay open
        assert instance.get_latest_materialization_event(dg.AssetKey("thing")).run_id == second
        assert len(instance.all_logs(second)) == len(instance.all_logs(first)) > 5


def test_another_process_writes_while_this_one_keeps_its_connections(home) -> None:
    with dg.DagsterInstance.get() as instance:
        mine = materialize(instance)
        code = textwrap.dedent(f"""
            import dagster as dg
            from threegen_dagster_tests.test_sqlite_storage import materialize
            with dg.DagsterInstance.get() as instance:
                print(materialize(instance))
        """)
        theirs = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                env={**os.environ, "DAGSTER_HOME": str(home)}).stdout.split()[-1]
        assert instance.get_latest_materialization_event(dg.AssetKey("thing")).run_id == theirs
        assert {r.run_id for r in instance.get_runs()} == {mine, theirs}
        assert materialize(instance) not in (mine, theirs)  # and it goes on writing through the open index


def test_a_shard_deleted_under_it_is_recreated_not_written_into_the_deleted_file(home, tmp_path) -> None:
    with dg.DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        run_id = materialize(instance)
        kept = len(instance.all_logs(run_id))
        for name in shard_files(home, run_id):  # as `dagster run wipe` in another process does
            (home / "history" / "runs" / name).unlink()
        storage.store_event(a_message(run_id, "after the wipe"))
        with plain_instance(home, tmp_path) as plain:  # the event is in the new file, where others look
            assert [e.user_message for e in plain.all_logs(run_id)] == ["after the wipe"]
        assert kept > 1


def a_message(run_id: str, text: str) -> dg.EventLogEntry:
    return dg.EventLogEntry(error_info=None, level="INFO", user_message=text, run_id=run_id, timestamp=time.time())


def test_open_files_stay_bounded_however_many_runs_it_reads(home) -> None:
    with dg.DagsterInstance.get() as instance:
        runs = [materialize(instance) for _ in range(OPEN_FILES + 4)]
        for run_id in runs:
            assert instance.all_logs(run_id)
        open_dbs = {Path(f.path).name for f in psutil.Process().open_files() if f.path.startswith(str(home))
                    and f.path.endswith(".db")}
        assert "index.db" in open_dbs and len(open_dbs) <= OPEN_FILES
        assert {f"{run_id}.db" for run_id in runs[-3:]} <= open_dbs  # the most recently used ones


def test_a_process_that_exits_leaves_no_write_ahead_log_behind(home) -> None:
    code = textwrap.dedent("""
        import gc, sys
        import dagster as dg
        from threegen_dagster_tests.test_sqlite_storage import materialize
        instance = dg.DagsterInstance.get()  # never disposed, as a command that just ends
        print(materialize(instance))
        gc.freeze()  # as the `threegen` command does on its way out
        sys.exit(0)
    """)
    run_id = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                            env={**os.environ, "DAGSTER_HOME": str(home)}).stdout.split()[-1]
    assert shard_files(home, run_id) == {f"{run_id}.db"}  # the WAL was folded into the file on close
    with sqlite3.connect(home / "history" / "runs" / f"{run_id}.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM event_logs").fetchone()[0] > 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_opens_its_own_connections(home) -> None:
    with dg.DagsterInstance.get() as instance:
        before = materialize(instance)  # the parent holds open connections now
        pid = os.fork()
        if pid == 0:  # the child writes a run of its own through the same storage object
            code = 1
            try:
                materialize(instance)
                code = 0
            finally:
                os._exit(code)
        assert os.waitpid(pid, 0)[1] == 0
        after = materialize(instance)  # the parent's connections still work
        runs = {r.run_id for r in instance.get_runs()}
        assert len(runs) == 3 and {before, after} <= runs
        for run_id in runs:
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
        index = home / "history" / "runs" / "index.db"
        with sqlite3.connect(index) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_watched_run_sees_each_event_while_its_writer_keeps_the_connection_open(home) -> None:
    """The UI's live run page: Dagster's watcher woke on the run's file, which a writer that keeps its
    connection open leaves alone until a checkpoint; the events are in its write-ahead log."""
    run_id = "a1b2c3d4-0000-4000-8000-000000000001"
    seen: list[str] = []
    code = textwrap.dedent(f"""
        import sys, time
        import dagster as dg
        from threegen_dagster_tests.test_sqlite_storage import a_message
        instance = dg.DagsterInstance.get()
        for n in range(3):
            instance.event_log_storage.store_event(a_message({run_id!r}, f"event {{n}}"))
            time.sleep(0.2)
        print("written", flush=True)
        sys.stdin.read()  # alive, its connection open, until the test is done
    """)
    with dg.DagsterInstance.get() as instance:
        instance.event_log_storage.store_event(a_message(run_id, "before the watch"))
        instance.event_log_storage.watch(run_id, None, lambda entry, _cursor: seen.append(entry.user_message))
        writer = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "DAGSTER_HOME": str(home)},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout.readline() == "written\n"
            deadline = time.monotonic() + 60  # a guard against hanging, not a measurement
            while len(seen) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert writer.poll() is None  # still running: nothing was folded into the file at its exit
            assert seen == ["before the watch", "event 0", "event 1", "event 2"]
        finally:
            writer.communicate("")
