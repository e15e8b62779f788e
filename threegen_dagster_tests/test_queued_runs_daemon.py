"""Queued runs under a real ``dagster-daemon``, on PostgreSQL and on SQLite, with the documented
deploy/dagster.postgres.yaml as the instance: task files dropped into the inbox and runs launched
with ``dagster job launch`` are queued, launched by the DefaultRunLauncher each in a process of
its own, and succeed; the run limit (2) and the inbox's tag limit (1) hold; the gpu
pool runs one step at a time across runs; the catalog sensor follows a generation with a run of its
own (waited for on Postgres only: its tick comes every 30 s). Every process is stopped at the end,
pass or fail."""

import json
import os
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from threegen_dagster import cli
from threegen_dagster.keys import Prompt
from threegen_dagster.settings import Settings

from .dagster_processes import BIN, ROOT, Daemon, most_at_once, processes_of, run_facts, wait_for, write_home

TASKS = [("task-1", "a wooden chair", 1), ("task-2", "a red mug", 2)]
LAUNCHED = [("a blue cup", 4)]  # `dagster job launch`, as an operator would
GPU_STEPS = {"generated_image", "foreground_image", "initial_mesh", "refined_mesh", "validation_score"}
IN_ORDER = [dg.DagsterEventType.RUN_ENQUEUED,
            dg.DagsterEventType.RUN_STARTING, dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS]


@pytest.fixture(params=["postgres", "sqlite"])
def deployment(request, tmp_path, monkeypatch) -> tuple[str, dict[str, str]]:
    """The storage, and the environment of every process of one deployment (and of this test, which
    reads its instance)."""
    env = {"DAGSTER_HOME": str(tmp_path / "dagster"), "THREEGEN_STORE": str(tmp_path / "store"),
           "THREEGEN_INBOX": str(tmp_path / "inbox")}
    if request.param == "postgres":
        server = request.getfixturevalue("pg_server")
        env.update(server.env(server.create_database()))
    write_home(Path(env["DAGSTER_HOME"]), request.param)
    (tmp_path / "inbox").mkdir()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return request.param, env


def drop_task(inbox: Path, task_id: str, prompt: str, seed: int) -> None:
    hidden = inbox / f".{task_id}.json"  # written under a hidden name, then renamed in
    hidden.write_text(json.dumps({"id": task_id, "prompt": prompt, "seed": seed}))
    hidden.rename(inbox / f"{task_id}.json")


def launch(key: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "dagster"), "job", "launch", "-w", str(ROOT / "workspace.yaml"), "-j", "generate",
         "--tags", json.dumps({"dagster/partition": key, "threegen/source": "cli"})],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_queued_runs_go_through_the_daemon_within_their_limits(deployment, tmp_path) -> None:
    storage, env = deployment[0], {**os.environ, **deployment[1]}
    home, inbox = Path(env["DAGSTER_HOME"]), Path(env["THREEGEN_INBOX"])
    settings = Settings.from_env()
    with dg.DagsterInstance.from_config(str(home)) as instance:  # creates the schema before any process
        keys = [cli.register(Prompt.from_text(text), seed, "test", settings, instance)[0].key
                for text, seed in LAUNCHED]

    with Daemon(env, tmp_path / "daemon.log") as daemon, dg.DagsterInstance.from_config(str(home)) as instance:
        launches = [launch(key, env) for key in keys]
        try:
            for task in TASKS:
                drop_task(inbox, *task)
            for process, key in zip(launches, keys):
                output = process.communicate(timeout=120)[0]
                assert process.returncode == 0, f"dagster job launch {key}: {output[-3000:]}"
        finally:
            for process in launches:
                if process.poll() is None:
                    process.kill()
                    process.wait()

        follow = storage == "postgres"  # the run-status sensor's tick waits up to 30 s: once is enough

        def finished() -> list | None:  # every generation, and (on Postgres) the catalog sensor's first follow-up
            runs = instance.get_runs()
            generations = [r for r in runs if r.job_name == "generate"]
            refreshed = [r for r in runs if r.job_name == "refresh_catalog" and r.is_finished]
            done = len(generations) == len(TASKS) + len(LAUNCHED) and all(r.is_finished for r in generations)
            return runs if done and (refreshed or not follow) else None

        wait_for(finished, daemon, timeout=240, what="every generation finished, and a catalog refresh after one")
        facts = run_facts(instance, GPU_STEPS)
        daemon_pid = daemon.process.pid
        now = time.time()

    assert processes_of(home) == []  # the daemon, its code server and every run worker are gone

    finished = [f for f in facts if f.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)]
    failed = {f.run_id: f.status for f in finished if f.status != dg.DagsterRunStatus.SUCCESS}
    assert not failed, f"runs that did not succeed: {failed}"
    for f in finished:  # every run was queued, then launched by the daemon, then ran
        assert [e for e in f.events if e in IN_ORDER] == IN_ORDER, (f.job, f.run_id, f.events)
    pids = [f.worker_pid for f in finished]
    assert None not in pids and len(set(pids)) == len(finished)  # a process of its own for each run
    assert not {daemon_pid, os.getpid()} & set(pids)

    generations = [f for f in facts if f.job == "generate"]
    assert sorted(f.tags["dagster/partition"] for f in generations if f.tags["threegen/source"] == "cli") == sorted(keys)
    inbox_runs = [f for f in generations if f.tags["threegen/source"] == "inbox"]
    assert sorted(f.tags["threegen/task_id"] for f in inbox_runs) == [t[0] for t in TASKS]
    assert sorted(p.name for p in (inbox / "accepted").iterdir()) == [f"{t[0]}.json" for t in TASKS]
    catalog_keys = {f.tags["dagster/run_key"] for f in facts if f.job == "refresh_catalog"}
    assert (catalog_keys or not follow) and catalog_keys <= {f"catalog-after-{f.run_id}" for f in generations}

    # the limits, by overlap of what the instance recorded: never exceeded, and reached
    started = [(f.start, f.end or now) for f in facts if f.start]  # a run still going is open until now
    # concurrency.runs.max_concurrent_runs: never exceeded (whether two runs overlap at all depends on
    # when the inbox sensor ticks against the launched run: on a quiet machine they may not)
    assert 1 <= most_at_once(started) <= 2
    assert most_at_once([(f.start, f.end) for f in inbox_runs]) == 1  # tag limit threegen/source=inbox
    gpu = [(start, end) for f in facts for _, start, end in f.gpu_steps]
    assert len(gpu) == len(GPU_STEPS) * len(generations) and most_at_once(gpu) == 1  # the gpu pool
