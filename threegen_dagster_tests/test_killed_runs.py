"""A killed run must not stall the gpu pool. Real `threegen generate` processes on one temporary
instance and store, killed with SIGKILL (or stopped with SIGSTOP, a wedged process) while their
run holds the gpu slot; a run worker of another tool killed the same way; real processes for
the liveness rules (pid reuse, zombies, stopped processes)."""

import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import psutil
import pytest
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import EmptyWorkspaceTarget
from dagster._daemon.monitoring.concurrency import execute_concurrency_slots_iteration

from threegen_dagster.defs.instance import ensure_home
from threegen_dagster.processes import PID_TAG, Owner, identity_tags
from threegen_dagster.runs import free_dead_runs, pool_waits

HANG_GUARD_S = 600  # only so a regression fails instead of hanging the suite; nothing is timed


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:  # a test that failed half-way: stopped or waiting processes
            process.kill()
            process.wait()


class Proc:
    """A subprocess whose stdout and stderr are read line by line as they come."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        STARTED.append(self.process)
        self.pid = self.process.pid
        self.lines: queue.Queue = queue.Queue()
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, sink), daemon=True)
                        for stream, sink in ((self.process.stdout, self.out), (self.process.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str) -> str:
        """The first line (stdout or stderr) from now on that contains ``text``."""
        deadline, ended = time.monotonic() + HANG_GUARD_S, 0
        while ended < 2:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r}; stderr so far:\n{''.join(self.err)}") from None
            if line is None:
                ended += 1
            elif text in line:
                return line
        raise AssertionError(f"exited without a line with {text!r}; stderr:\n{''.join(self.err)}")

    def finish(self) -> tuple[int, str, str]:
        code = self.process.wait(timeout=HANG_GUARD_S)
        for reader in self.readers:
            reader.join()
        return code, "".join(self.out), "".join(self.err)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return ensure_home(tmp_path / "dagster_home")  # links the project's dagster.yaml, as the CLI does


@pytest.fixture
def cli_env(tmp_path, home) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREEGEN_")}
    return {**env, "DAGSTER_HOME": str(home), "THREEGEN_STORE": str(tmp_path / "store"),
            "THREEGEN_INBOX": str(tmp_path / "inbox"), "THREEGEN_GAUSSIANS": "8000"}


def threegen(env: dict[str, str], cwd: Path, *args: str) -> Proc:
    return Proc([sys.executable, "-m", "threegen_dagster.cli", *args], env, cwd)


def gpu_holders(instance: dg.DagsterInstance) -> list[str]:
    return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots]


def run_of(instance: dg.DagsterInstance, pid: int) -> str | None:
    records = instance.get_run_records(dg.RunsFilter(tags={PID_TAG: str(pid)}, job_name="generate"))
    return records[0].dagster_run.run_id if records else None


def holds_a_write_lock_in(pid: int, folder: Path) -> bool:
    """Whether ``pid`` holds an exclusive file lock (from /proc/locks) on a file under ``folder``. An
    open SQLite connection always holds shared ones (WAL's read marks), which block nobody."""
    inodes = {path.stat().st_ino for path in folder.rglob("*") if path.is_file()}
    for line in Path("/proc/locks").read_text().splitlines():
        fields = [field for field in line.split() if field != "->"]  # "->": a waiter for the lock above
        if fields[3] == "WRITE" and fields[4] == str(pid) and int(fields[5].rsplit(":", 1)[1]) in inodes:
            return True
    return False


def stop_while_holding_the_gpu(instance: dg.DagsterInstance, cli: Proc) -> str:
    """SIGSTOP `threegen generate` at a moment its run holds the gpu slot (between two steps it
    holds none: then let it go on and try again); returns its run id. Never while it holds an
    exclusive lock on the instance's SQLite files: a process frozen inside a WAL write blocks readers
    ("locking protocol"), a different fault from the one these tests are about (a killed process
    releases its locks; the kernel keeps a stopped one's)."""
    home = Path(instance.root_directory)
    while True:
        assert cli.process.poll() is None, f"it ended before holding the gpu slot:\n{''.join(cli.err)}"
        run_id = run_of(instance, cli.pid)
        if run_id and run_id in gpu_holders(instance):
            os.kill(cli.pid, signal.SIGSTOP)
            while psutil.Process(cli.pid).status() != psutil.STATUS_STOPPED:  # the signal is delivered
                time.sleep(0.001)
            if not holds_a_write_lock_in(cli.pid, home) and run_id in gpu_holders(instance):
                return run_id
            os.kill(cli.pid, signal.SIGCONT)
        time.sleep(0.05)


def kill(proc: Proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.finish()


def test_a_generate_killed_after_its_first_stage_no_longer_stalls_the_next(tmp_path, home, cli_env) -> None:
    first = threegen(cli_env, tmp_path, "generate", "a red cup", "--seed", "1")
    store = Path(cli_env["THREEGEN_STORE"])
    with dg.DagsterInstance.get() as instance:
        while not list(store.glob("generations/*/generated_image/v*.json")):  # its first stage is stored
            assert first.process.poll() is None, "".join(first.err)
            time.sleep(0.05)
        dead = stop_while_holding_the_gpu(instance, first)
        kill(first)
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.STARTED  # the fault, as it was
        assert gpu_holders(instance) == [dead]

        second = threegen(cli_env, tmp_path, "generate", "a blue cup", "--seed", "1", "--json")
        code, out, err = second.finish()
        assert code == 0, err
        report = json.loads(out)
        assert report["success"] and report["score"]["passed"]
        assert f"run {dead} was left STARTED by threegen process pid {first.pid}" in err
        assert "which is gone (killed?): marked it failed and freed its pool slots" in err
        assert [run["run_id"] for run in report["freed_runs"]] == [dead]

        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
        failure = instance.all_logs(dead, of_type=dg.DagsterEventType.RUN_FAILURE)[-1]
        assert f"threegen process pid {first.pid}" in failure.dagster_event.message
        gpu = instance.event_log_storage.get_concurrency_info("gpu")
        assert gpu.claimed_slots == [] and gpu.pending_steps == []  # nothing left behind by either run


def test_a_waiting_generate_says_who_holds_the_gpu_and_goes_on_when_that_process_dies(
        tmp_path, home, cli_env) -> None:
    holder = threegen(cli_env, tmp_path, "generate", "a tall lamp", "--seed", "2")
    with dg.DagsterInstance.get() as instance:
        held = stop_while_holding_the_gpu(instance, holder)  # alive, but wedged
        waiting = threegen(cli_env, tmp_path, "generate", "a short lamp", "--seed", "2", "--json")
        line = waiting.wait_for("waiting for the gpu pool")
        assert f"held by run {held} (generate a-tall-lamp-" in line
        assert f"threegen pid {holder.pid} on " in line and "it is running; this run goes on when" in line
        assert instance.get_run_by_id(held).status == dg.DagsterRunStatus.STARTED  # a live holder is left alone
        assert gpu_holders(instance) == [held]

        kill(holder)
        assert f"run {held} was left STARTED by threegen process pid {holder.pid}" in waiting.wait_for("freed")
        waiting.wait_for("got the pool slot")
        code, out, err = waiting.finish()
        assert code == 0, err
        report = json.loads(out)
        assert report["success"] and [run["run_id"] for run in report["freed_runs"]] == [held]
        assert instance.get_run_by_id(held).status == dg.DagsterRunStatus.FAILURE
        assert gpu_holders(instance) == []


def test_a_killed_run_worker_of_another_tool_is_freed_by_run_monitoring_not_guessed_at(home) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    argv = [sys.executable, "-m", "threegen_dagster_tests.pool_holder"]
    worker = Proc(argv, env, home)
    held = worker.wait_for("holding ").split()[1]
    queued = Proc(argv, env, home)  # a second run, waiting for the slot
    with dg.DagsterInstance.get() as instance:
        while not (waits := [w for r in instance.get_runs() if r.run_id != held for w in pool_waits(instance, r.run_id)]):
            time.sleep(0.1)
        line = waits[0].line()
        assert line.startswith("waiting for the gpu pool (1 slot) to run hold") and f"held by run {held} (hold_gpu" in line
        assert "launched by the daemon, the UI or another tool" in line and f"`dagster run delete {held}`" in line

        kill(worker)
        assert free_dead_runs(instance) == []  # no threegen tags: its process is not ours to judge
        run = instance.get_run_by_id(held)
        assert run.status == dg.DagsterRunStatus.STARTED and gpu_holders(instance) == [held]

        instance.report_run_failed(run, "run worker exited (SIGKILL)")  # what its code server reports
        ended = instance.get_run_record_by_id(held).end_time
        grace = instance.run_monitoring_settings["free_slots_after_run_end_seconds"]  # from dagster.yaml
        assert instance.run_monitoring_enabled and grace > 0
        with create_test_daemon_workspace_context(EmptyWorkspaceTarget(), instance) as workspace:
            for at, still_held in ((ended + grace / 2, True), (ended + grace + 1, False)):
                with freeze_time(at):  # Dagster's own clock hook for its daemons: no 30 s sleep
                    list(execute_concurrency_slots_iteration(workspace, logging.getLogger("monitoring")))
                assert (held in gpu_holders(instance)) == still_held
        queued.wait_for("holding ")  # the slot went to the run that was waiting
        queued.process.stdin.write("done\n")
        queued.process.stdin.flush()
        assert queued.finish()[0] == 0


def test_a_run_is_alive_only_while_its_pid_runs_the_process_that_started_it() -> None:
    me = Owner.from_tags(identity_tags())
    assert me is not None and me.state() == "alive"
    assert Owner(me.host, me.pid, me.started + 100).state() == "dead"  # the pid now belongs to another process
    assert Owner(me.host + "-elsewhere", me.pid, me.started).state() == "unknown"  # never judged from here
    assert Owner.from_tags({}) is None and Owner.from_tags({**identity_tags(), PID_TAG: "x"}) is None

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    STARTED.append(child)
    owner = Owner(me.host, child.pid, psutil.Process(child.pid).create_time())
    assert owner.state() == "alive"
    os.kill(child.pid, signal.SIGSTOP)
    assert owner.state() == "alive"  # stopped (wedged) is not dead
    os.kill(child.pid, signal.SIGKILL)
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    assert owner.state() == "dead"  # killed, not yet waited for
    child.wait()
    assert owner.state() == "dead"  # gone
