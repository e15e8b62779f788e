"""A pool of GPU workers behind one deployment, for real: two `threegen worker` processes on loopback
(embedded backends), THREEGEN_WORKERS naming both, the `gpu` pool's limit set to 2 with Dagster's own
CLI, and `threegen generate` processes running side by side. Which worker ran each stage, and when
the run sent it and had the answer, are in each stage's materialization metadata: by the overlap of
those intervals (never by durations), both workers were used, two stages ran at once, and never two
on one worker. A worker killed (SIGKILL) while it runs a stage is skipped with one log line and the
stage is sent to the other; the run succeeds and `threegen workers` shows the dead one down."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from threegen_dagster import cli
from threegen_dagster.backends.gpu import BackendError
from threegen_dagster.defs.instance import PROJECT_YAML
from threegen_dagster.settings import Settings, SettingsError
from threegen_dagster.worker_client import WorkerClient
from threegen_dagster.workers import WorkerPool

from .dagster_processes import BIN, ROOT, most_at_once
from .test_worker import Worker, free_port

ON_WORKER = ("generated_image", "foreground_image", "initial_mesh", "refined_mesh")  # the proxy score runs in the run
PROMPTS = [("a wooden chair", 1), ("a red mug", 2), ("a blue vase", 3), ("a green lamp", 4)]


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    workers = [Worker({}, root), Worker({}, root)]
    yield workers
    for worker in workers:
        worker.stop()


def deployment(tmp_path: Path, urls: list[str], pool_limit: int) -> dict[str, str]:
    """The environment of one deployment's processes: its own instance (the project's dagster.yaml),
    store and inbox, the pool of workers, and the `gpu` pool's limit set as the README says."""
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(PROJECT_YAML.read_text())
    env = {**os.environ, "DAGSTER_HOME": str(home), "THREEGEN_STORE": str(tmp_path / "store"),
           "THREEGEN_INBOX": str(tmp_path / "inbox"), "THREEGEN_WORKERS": ",".join(urls)}
    env.pop("THREEGEN_WORKER_URL", None)
    done = subprocess.run([str(BIN / "dagster"), "instance", "concurrency", "set", "gpu", str(pool_limit)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return env


def generate(env: dict[str, str], text: str, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "threegen_dagster.cli", "generate", text, "--seed", str(seed),
                             "--json"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=600)  # a guard against hanging, not a measurement
    assert process.returncode == 0, f"threegen generate failed:\n{out[-2000:]}\n{err[-3000:]}"
    return json.loads(out)


def stage_calls(home: str) -> tuple[list[dict], list[str]]:
    """Per worker stage of every run: its asset, the worker that ran it and the call's interval; and
    every message the runs logged."""
    calls, messages = [], []
    with dg.DagsterInstance.from_config(home) as instance:
        for run in instance.get_runs():
            assert run.status == dg.DagsterRunStatus.SUCCESS, run.run_id
            for event in instance.all_logs(run.run_id):
                messages.append(event.user_message)
                if event.is_dagster_event and event.dagster_event.is_step_materialization:
                    materialization = event.dagster_event.event_specific_data.materialization
                    meta = {k: v.value for k, v in materialization.metadata.items()}
                    if "worker" in meta:
                        calls.append({"asset": materialization.asset_key.path[-1], "run": run.run_id, **meta})
    return calls, messages


def test_generations_side_by_side_use_every_worker_and_never_two_stages_on_one(two_workers, tmp_path) -> None:
    urls = [w.url for w in two_workers]
    served_before = {url: sum(WorkerClient(url).status()["served"].values()) for url in urls}
    env = deployment(tmp_path, urls, pool_limit=2)
    for report in [finish(p) for p in [generate(env, text, seed) for text, seed in PROMPTS]]:
        assert report["success"] is True

    calls, _ = stage_calls(env["DAGSTER_HOME"])
    assert sorted(c["asset"] for c in calls) == sorted(ON_WORKER * len(PROMPTS))
    assert all(c["where"] == "worker" for c in calls)
    # the intervals each worker held its GPU lock, from the worker's own clock: the run's view of a call
    # (worker_call_start/end) also covers the request and the answer in transit, and may overlap the next call
    by_worker = {url: [(c["gpu_lock_start"], c["gpu_lock_end"]) for c in calls if c["worker"] == url] for url in urls}
    assert all(c["worker_call_start"] <= c["gpu_lock_start"] <= c["gpu_lock_end"] <= c["worker_call_end"]
               for c in calls)
    assert all(by_worker.values()), {u: len(v) for u, v in by_worker.items()}  # both workers were used
    for url, intervals in by_worker.items():
        assert most_at_once(intervals) == 1, f"two stages at once on {url}"  # each call found its worker free
    assert most_at_once([i for v in by_worker.values() for i in v]) == 2  # side by side, never above the pool's 2
    served = {url: sum(WorkerClient(url).status()["served"].values()) - served_before[url] for url in urls}
    assert served == {url: len(v) for url, v in by_worker.items()}  # the workers agree on who ran what


def test_a_dead_worker_is_skipped_and_an_all_dead_pool_says_why(two_workers) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    logged: list[str] = []
    image, meta = WorkerPool([dead, two_workers[0].url], log=logged.append).call("text_to_image", "a red mug", 3)
    assert image.mode == "RGB" and meta["worker"] == two_workers[0].url and meta["where"] == "worker"
    assert len(logged) == 1 and "\n" not in logged[0]
    assert logged[0].startswith(f"GPU worker at {dead} is down (") and "text_to_image goes to another worker" in logged[0]
    other = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendError, match=rf"no GPU worker could run background: GPU worker at {dead} is down .*; "
                                           rf"GPU worker at {other} is down"):
        WorkerPool([dead, other], log=logged.append).call("background", image)


def test_a_worker_killed_mid_stage_is_skipped_and_the_stage_runs_on_another(tmp_path, capsys, monkeypatch) -> None:
    workers = [Worker({}, tmp_path), Worker({}, tmp_path)]
    try:
        env = deployment(tmp_path, [w.url for w in workers], pool_limit=2)
        runs = [generate(env, text, seed) for text, seed in PROMPTS[:2]]
        killed, stage = kill_one_mid_stage(workers, runs)
        for report in [finish(p) for p in runs]:
            assert report["success"] is True
        survivor = next(w for w in workers if w is not killed)

        calls, messages = stage_calls(env["DAGSTER_HOME"])
        lost = [m for m in messages if m.startswith(f"GPU worker at {killed.url} is down: the connection broke "
                                                    f"during /v1/{stage} (")]
        assert len(lost) == 1 and lost[0].endswith(f": {stage} is sent again to another worker (1 left)"), messages
        asset = {"text_to_image": "generated_image", "background": "foreground_image",
                 "image_to_mesh": "initial_mesh", "refine": "refined_mesh"}[stage]
        assert [c["worker"] for c in calls if c["asset"] == asset] .count(survivor.url) >= 1
        assert len(calls) == len(ON_WORKER) * 2  # every stage of both runs ran, once each
        after = [c for c in calls if c["worker_call_start"] > killed.killed_at]
        assert after and all(c["worker"] == survivor.url for c in after)  # the dead one was never used again

        for name in ("DAGSTER_HOME", "THREEGEN_WORKERS"):
            monkeypatch.setenv(name, env[name])
        monkeypatch.delenv("THREEGEN_WORKER_URL", raising=False)
        assert cli.main(["workers"]) == 1  # one is down
        out = capsys.readouterr().out
        assert re.search(rf"^{re.escape(killed.url)} +down ", out, re.M)
        assert re.search(rf"^{re.escape(survivor.url)} +up +no ", out, re.M)
        assert f"last error: GPU worker at {killed.url} is down" in out
        assert "gpu pool limit: 2, workers: 2 (1 up)" in out
        assert cli.main(["workers", "--json"]) == 1
        rows = {r["url"]: r for r in json.loads(capsys.readouterr().out)["workers"]}
        assert rows[killed.url]["up"] is False and rows[survivor.url]["up"] is True
        assert "text_to_image:procedural" in rows[survivor.url]["models"] and rows[survivor.url]["card"]
    finally:
        for worker in workers:
            worker.stop()


def kill_one_mid_stage(workers: list[Worker], runs: list[subprocess.Popen]) -> tuple[Worker, str]:
    """Wait for a worker to be busy, freeze it (SIGSTOP), and kill it (SIGKILL) if its log shows a stage
    started and not finished (it is mid-stage, and frozen it cannot finish); otherwise let it go on."""
    while any(p.poll() is None for p in runs):
        for worker in workers:
            try:
                busy = WorkerClient(worker.url).load(timeout_s=2)["busy"]
            except BackendError:
                continue
            if not busy:
                continue
            worker.process.send_signal(signal.SIGSTOP)
            calls = re.findall(r"^\d\d:\d\d:\d\d (\w+) (started|\d+\.\d\d s)$", worker.output(), re.M)
            if calls and calls[-1][1] == "started":
                worker.killed_at = time.time()
                worker.process.send_signal(signal.SIGKILL)
                worker.process.wait(10)
                return worker, calls[-1][0]
            worker.process.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError("the runs ended before a worker was caught mid-stage")


def test_an_if_idle_call_takes_the_gpu_at_once_or_is_answered_busy() -> None:
    """The lease, on the worker's own runner: while a call holds the GPU an if-idle call is answered 409
    and never waits or queues; a plain call would wait its turn; once free, the if-idle call runs."""
    from threegen_dagster.worker import StageRunner, TextToImageBody

    runner = StageRunner({})
    body = TextToImageBody(prompt="a red mug", seed=3)
    with runner._gpu:  # another call is running
        status, answer = runner.call("text_to_image", body, if_idle=True)
        assert (status, answer["busy"]) == (409, True) and "busy" in answer["error"]
        assert runner.load()["busy"] is True and runner.load()["queue"] == 0 and runner.served["text_to_image"] == 0
    status, answer = runner.call("text_to_image", body, if_idle=True)
    assert status == 200 and answer["meta"]["backend"] == "procedural"
    assert runner.load() == {"busy": False, "queue": 0, "served": 1, "device": runner.device(), "last_error": ""}


@pytest.mark.parametrize("env, error", [
    ({"THREEGEN_WORKERS": "http://a:1,http://b:2", "THREEGEN_WORKER_URL": "http://c:3"}, "both set"),
    ({"THREEGEN_WORKERS": "http://a:1,http://a:1"}, r"lists http://a:1 more than once"),
    ({"THREEGEN_WORKERS": "http://a:1/v1"}, r"'http://a:1/v1' is not a worker's address: use http://HOST:PORT"),
    ({"THREEGEN_WORKERS": "a:1"}, r"'a:1' is not a worker's address"),
    ({"THREEGEN_WORKERS": "http://a"}, r"'http://a' is not a worker's address"),
    ({"THREEGEN_WORKERS": "http://a:99999"}, r"'http://a:99999' is not a URL \(Port out of range"),
    ({"THREEGEN_WORKERS": ",".join(f"http://h{i}:1" for i in range(65))}, "lists 65 workers; at most 64"),
])
def test_a_bad_worker_list_is_refused_naming_the_url(env, error, tmp_path) -> None:
    with pytest.raises(SettingsError, match=error):
        Settings.from_env(env, cwd=tmp_path)


def test_the_worker_list_and_the_single_worker_setting(tmp_path) -> None:
    pool = Settings.from_env({"THREEGEN_WORKERS": " http://10.0.0.5:8765/, http://[::1]:8766 "}, cwd=tmp_path)
    assert pool.worker_urls == ("http://10.0.0.5:8765", "http://[::1]:8766")
    assert Settings.from_env({"THREEGEN_WORKER_URL": "http://127.0.0.1:8765/"}, cwd=tmp_path).worker_urls == (
        "http://127.0.0.1:8765",)
    assert Settings.from_env({}, cwd=tmp_path).worker_urls == ()


def test_the_gpu_workers_asset_tables_every_worker(two_workers) -> None:
    from threegen_dagster.defs.resources import StageResource
    from threegen_dagster.defs.workers import gpu_workers

    dead = f"http://127.0.0.1:{free_port()}"
    stage = StageResource(stage="text_to_image", backend="procedural", workers=[two_workers[1].url, dead])
    with dg.instance_for_test() as instance:
        result = dg.materialize([gpu_workers], resources={"text_to_image": stage}, instance=instance)
        warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level >= 30]
    assert result.success
    meta = result.asset_materializations_for_node("gpu_workers")[0].metadata
    assert (meta["workers"].value, meta["up"].value) == (2, 1)
    rows = {r.data["url"]: r.data for r in meta["status"].value.records}
    assert rows[two_workers[1].url]["up"] is True and "image_to_mesh:inflate" in rows[two_workers[1].url]["models"]
    assert rows[dead]["up"] is False and rows[dead]["last_error"].startswith(f"GPU worker at {dead} is down")
    assert any(w.startswith(f"gpu_workers: GPU worker at {dead} is down") for w in warnings)
