"""A request under a real ``dagster-daemon`` (what ``dagster dev`` runs beside the UI), on SQLite with
the documented dagster.yaml: ``dagster job launch`` of request_generations with its config (what the
Launchpad sends) is queued and run; the start_requested_generations sensor then starts one generate
run per generation, each tagged with the request's run, and they succeed. Every process is stopped
at the end, pass or fail."""

import os
import subprocess
from pathlib import Path

import dagster as dg
import yaml

from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.defs.requests import TAG_REQUEST
from threegen_dagster.keys import Prompt, generation_key
from threegen_dagster.storage import LocalStore

from .dagster_processes import BIN, ROOT, Daemon, processes_of, wait_for, write_home

PROMPT, SEEDS = "a blue vase", [3, 4]


def test_a_request_launched_like_the_launchpad_generates_under_the_daemon(tmp_path, monkeypatch) -> None:
    env = {"DAGSTER_HOME": str(tmp_path / "dagster"), "THREEGEN_STORE": str(tmp_path / "store"),
           "THREEGEN_INBOX": str(tmp_path / "inbox"), "THREEGEN_GAUSSIANS": "8000"}
    home = write_home(Path(env["DAGSTER_HOME"]), "sqlite")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    env = {**os.environ, **env}
    config = tmp_path / "request.yaml"
    config.write_text(yaml.safe_dump({"ops": {"register_request": {"config": {"prompts": [PROMPT], "seeds": SEEDS}}}}))
    keys = sorted(generation_key(Prompt.from_text(PROMPT), seed) for seed in SEEDS)
    with dg.DagsterInstance.from_config(str(home)) as instance:  # the schema, before any process
        pass

    with Daemon(env, tmp_path / "daemon.log") as daemon, dg.DagsterInstance.from_config(str(home)) as instance:
        launched = subprocess.run(
            [str(BIN / "dagster"), "job", "launch", "-w", str(ROOT / "workspace.yaml"), "-j", "request_generations",
             "-c", str(config)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]

        def finished() -> list | None:
            runs = instance.get_runs()
            generations = [r for r in runs if r.job_name == "generate"]
            return runs if len(generations) == len(SEEDS) and all(r.is_finished for r in generations) else None

        runs = wait_for(finished, daemon, timeout=300, what="the request's generations finished")
    assert processes_of(home) == []

    [request] = [r for r in runs if r.job_name == "request_generations"]
    generations = [r for r in runs if r.job_name == "generate"]
    assert request.status == dg.DagsterRunStatus.SUCCESS
    assert {r.status for r in generations} == {dg.DagsterRunStatus.SUCCESS}, daemon.tail()
    assert sorted(r.tags["dagster/partition"] for r in generations) == keys
    assert {r.tags[TAG_REQUEST] for r in generations} == {request.run_id}
    assert {r.tags["dagster/sensor_name"] for r in generations} == {"start_requested_generations"}
    artifacts = ArtifactStore(LocalStore(tmp_path / "store"))
    assert all(artifacts.load(key, "validation_score") for key in keys)  # scored, bytes hash-verified
