"""Real Dagster processes for the tests: a DAGSTER_HOME whose dagster.yaml is the documented
``deploy/dagster.postgres.yaml`` (on PostgreSQL, or the same without its ``storage`` block: SQLite
in DAGSTER_HOME), ``dagster-daemon run`` over the repository's ``workspace.yaml`` started as its own
process tree and always stopped, and what the instance recorded about the runs it launched."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_YAML = ROOT / "deploy" / "dagster.postgres.yaml"
PROJECT_YAML = ROOT / "threegen_dagster" / "dagster.yaml"
BIN = Path(sys.executable).parent
STARTED_PROCESS = re.compile(r"Started process for run \(pid: (\d+)\)")


def write_home(home: Path, storage: str) -> Path:
    """DAGSTER_HOME with the deployment's dagster.yaml: verbatim for ``postgres`` (its DAGSTER_PG_*
    variables say where); for ``sqlite``, its ``storage`` block replaced by the project's instance class
    (threegen_dagster/dagster.yaml: Dagster's SQLite files, connections kept open)."""
    home.mkdir(parents=True, exist_ok=True)
    text = DEPLOY_YAML.read_text()
    if storage == "sqlite":
        config = yaml.safe_load(text)
        del config["storage"]
        config["instance_class"] = yaml.safe_load(PROJECT_YAML.read_text())["instance_class"]
        text = yaml.safe_dump(config, sort_keys=False)
    (home / "dagster.yaml").write_text(text)
    return home


class Daemon:
    """``dagster-daemon run -w workspace.yaml``: its code server and the run workers launched from it are
    its descendants; ``stop`` ends them all (SIGTERM, then SIGKILL) and reports what it had to kill."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log_path = env, log
        self.process: subprocess.Popen | None = None

    def start(self) -> Daemon:
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
                                        cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            tree = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for proc in tree:
            _signal(proc, signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=10)
        for proc in alive:
            _signal(proc, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # anything else left in its session
        except ProcessLookupError:
            pass
        self.process.wait()
        self.log.close()
        self.process = None

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def processes_of(home: Path) -> list[int]:
    """The live processes whose DAGSTER_HOME is ``home`` (the daemon, code servers, run workers)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("DAGSTER_HOME") == str(home) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


@dataclass(frozen=True)
class RunFacts:
    run_id: str
    job: str
    status: dg.DagsterRunStatus
    tags: dict
    start: float | None
    end: float | None
    events: list  # the run's event types, in order
    worker_pid: int | None  # the process that executed it (from Dagster's own engine event)
    gpu_steps: list  # (step key, start, end) of the steps in the gpu pool


def run_facts(instance: dg.DagsterInstance, gpu_steps: set[str]) -> list[RunFacts]:
    facts = []
    for record in instance.get_run_records():
        run = record.dagster_run
        logs = instance.all_logs(run.run_id)
        pids = [int(m.group(1)) for e in logs if e.is_dagster_event and (m := STARTED_PROCESS.search(e.message or ""))]
        started, ended = {}, {}
        for e in logs:
            if e.is_dagster_event and e.step_key in gpu_steps:
                if e.dagster_event_type == dg.DagsterEventType.STEP_START:
                    started[e.step_key] = e.timestamp
                elif e.dagster_event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
                    ended[e.step_key] = e.timestamp
        facts.append(RunFacts(
            run.run_id, run.job_name, run.status, dict(run.tags), record.start_time, record.end_time,
            [e.dagster_event_type for e in logs if e.is_dagster_event], pids[0] if pids else None,
            [(k, started[k], ended.get(k)) for k in started]))
    return facts


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant (one that ends as another starts: not both)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda edge: (edge[0], edge[1]))
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def wait_for(check, daemon: Daemon, timeout: float, what: str, every: float = 0.5):
    """Poll ``check()`` until it returns something truthy; fail naming ``what`` if the daemon dies
    or ``timeout`` seconds pass (a guard against hanging, not a measurement)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if not daemon.alive():
            raise AssertionError(f"dagster-daemon exited while waiting for {what}:\n{daemon.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s; daemon log:\n{daemon.tail()}")
        time.sleep(every)
