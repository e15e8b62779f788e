"""The inbox under Dagster's real sensor daemon, in separate processes that are killed: a daemon that
dies right after creating a task's run (before launching it), with every kind of bad entry in the same
tick, loses no task and runs none twice; a FIFO never blocks a tick (a daemon stuck on one is killed)."""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]


def daemon_iteration(env: dict, at: float, kill_at: str = "", fifo: Path | None = None) -> None:
    """One sensor-daemon iteration in a fresh process (threegen_dagster_tests/daemon_tick.py), which must
    exit cleanly, or by SIGKILL when ``kill_at`` is given. Its memory is capped, so following /dev/zero
    would fail it rather than the machine; if it opens ``fifo`` for reading (it would block there for
    ever), it is killed."""
    args = [sys.executable, "-m", "threegen_dagster_tests.daemon_tick", "--at", str(at)]
    cap = lambda: resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, 4 << 30))  # noqa: E731
    log = Path(env["DAGSTER_HOME"]) / f"daemon-{at:.0f}.log"
    with open(log, "wb") as out:
        child = subprocess.Popen(args + (["--kill-at", kill_at] if kill_at else []), cwd=ROOT, env=env,
                                 preexec_fn=cap, stdout=out, stderr=subprocess.STDOUT)
        while child.poll() is None:
            if fifo is not None and _reader_waits_on(fifo):
                child.kill()
                child.wait()
                raise AssertionError("the daemon's tick opened the FIFO and blocked on it; it was killed")
            time.sleep(0.02)
    expected = -9 if kill_at else 0  # killed at kill_at (SIGKILL), or a clean iteration
    assert child.returncode == expected, f"daemon exit {child.returncode}, not {expected}: {log.read_text()[-3000:]}"


def _reader_waits_on(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # succeeds only while a reader has it open
    except OSError:  # ENXIO: no reader; ENOENT: set aside already
        return False
    return True


def test_a_daemon_killed_mid_tick_loses_no_task_and_runs_none_twice(tmp_path) -> None:
    home, inbox = tmp_path / "dagster", tmp_path / "inbox"
    home.mkdir()
    (home / "dagster.yaml").write_text(  # runs are queued, not executed: no run-queue daemon here
        "run_coordinator:\n  module: dagster._core.run_coordinator\n  class: QueuedRunCoordinator\n"
        "telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "THREEGEN_STORE": str(tmp_path / "store"),
           "THREEGEN_INBOX": str(inbox)}
    inbox.mkdir()
    for name, body in (("a.json", {"id": "task-a", "prompt": "a green vase", "seed": 3}),
                       ("y.json", {"id": "task-y", "prompt": "a red mug"}),
                       ("z-again.json", {"id": "task-a", "prompt": "a green vase", "seed": 3})):
        (inbox / name).write_text(json.dumps(body))
    (inbox / "b.json").mkdir()
    (inbox / "c.json").symlink_to(tmp_path / "nowhere")
    (inbox / "d.json").write_bytes(b"[" * 100_000)
    os.mkfifo(inbox / "e.json")
    (inbox / "f.json").symlink_to("/dev/zero")

    now = time.time()
    # the daemon dies right after creating the first task's run, before launching it
    daemon_iteration(env, now, kill_at="RUN_CREATED", fifo=inbox / "e.json")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert [r.status for r in runs] == [dg.DagsterRunStatus.NOT_STARTED]
    assert sorted(p.name for p in inbox.iterdir()) == ["a.json", "duplicate", "rejected", "y.json"]
    assert sorted(p.name for p in (inbox / "rejected").iterdir() if not p.name.endswith(".error.txt")) == \
        ["b.json", "c.json", "d.json", "e.json", "f.json"]
    assert "already taken (file a.json)" in (inbox / "duplicate" / "z-again.json.error.txt").read_text()

    for k in (1, 2):  # fresh daemons past the sensor's minimum interval: the 1st resumes the killed tick
        daemon_iteration(env, now + 30 * k)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
    assert sorted(r.tags["threegen/task_id"] for r in runs) == ["task-a", "task-y"]  # each once
    assert {r.status for r in runs} == {dg.DagsterRunStatus.QUEUED}
    assert sorted(p.name for p in inbox.iterdir()) == ["accepted", "duplicate", "rejected"]
    assert sorted(p.name for p in (inbox / "accepted").iterdir()) == ["a.json", "y.json"]
