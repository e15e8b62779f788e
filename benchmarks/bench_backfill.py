"""A backfill through Dagster's own engine: N generations on the embedded backends, launched with
``dagster job backfill`` and run by ``dagster-daemon`` with queued runs (deploy/dagster.postgres.yaml:
2 runs at once, each in a process of its own, run monitoring on), on SQLite and on PostgreSQL (the
tests' own server, threegen_dagster_tests/pg_server.py), with 1 and with 2 `threegen worker`s
(THREEGEN_WORKERS; the `gpu` pool's limit set to the number of workers). Printed, never asserted:

- generations per minute (from the backfill's submission to the last run's end);
- the highest number of gpu steps running at once, from the event log (never above the pool's limit);
- runs failed, and lost (requested but never finished);
- orchestration seconds per generation: a run's wall time (start to end, from the instance) less
  the seconds its stages computed (each materialization's ``seconds``).

    .venv/bin/python benchmarks/bench_backfill.py                       # 100 generations, every case
    .venv/bin/python benchmarks/bench_backfill.py --generations 6 --storage sqlite --workers 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402
from threegen_dagster import cli  # noqa: E402
from threegen_dagster.keys import Prompt  # noqa: E402
from threegen_dagster.settings import Settings  # noqa: E402
from threegen_dagster.worker_client import WorkerClient  # noqa: E402
from threegen_dagster_tests.dagster_processes import (  # noqa: E402
    BIN, ROOT, Daemon, most_at_once, run_facts, write_home)

GPU_STEPS = {"generated_image", "foreground_image", "initial_mesh", "refined_mesh", "validation_score"}
SHAPES = ["chair", "mug", "vase", "lamp", "table", "bottle", "stool", "bowl", "teapot", "cup"]
COLOURS = ["red", "blue", "green", "wooden", "white", "black", "golden", "stone", "glass", "clay"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(stack: ExitStack, folder: Path) -> str:
    port = free_port()
    log = open(folder / f"worker-{port}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "threegen_dagster.cli", "worker", "--port", str(port)],
                               stdout=log, stderr=subprocess.STDOUT)
    stack.callback(lambda: (process.terminate(), process.wait(20), log.close()))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if WorkerClient(url).health(timeout_s=1):
                return url
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.2)
    raise RuntimeError(f"worker on {url} did not come up")


def stage_seconds(instance: dg.DagsterInstance, run_id: str) -> float:
    total = 0.0
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        seconds = event.dagster_event.event_specific_data.materialization.metadata.get("seconds")
        total += float(seconds.value) if seconds is not None else 0.0
    return total


def one_case(storage: str, workers: int, generations: int, pg, folder: Path) -> dict:
    env = {**os.environ, "DAGSTER_HOME": str(folder / "dagster"), "THREEGEN_STORE": str(folder / "store"),
           "THREEGEN_INBOX": str(folder / "inbox")}
    env.pop("THREEGEN_WORKER_URL", None)
    if storage == "postgres":
        env.update(pg.env(pg.create_database()))
    (folder / "inbox").mkdir(parents=True)
    home = write_home(Path(env["DAGSTER_HOME"]), storage)
    with ExitStack() as stack:
        env["THREEGEN_WORKERS"] = ",".join(start_worker(stack, folder) for _ in range(workers))
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "THREEGEN_STORE", "THREEGEN_INBOX")})
        os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_PG_")})
        settings = Settings.from_env(env)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            instance.event_log_storage.set_concurrency_slots("gpu", workers)  # = dagster instance concurrency set gpu N
            keys = [cli.register(Prompt.from_text(f"a {COLOURS[i % 10]} {SHAPES[i // 10 % 10]} number {i}"), i,
                                 "bench", settings, instance)[0].key for i in range(generations)]
        daemon = stack.enter_context(Daemon(env, folder / "daemon.log"))
        submitted = time.time()
        done = subprocess.run([str(BIN / "dagster"), "job", "backfill", "-w", str(ROOT / "workspace.yaml"),
                               "-j", "generate", "--partitions", ",".join(keys), "--noprompt"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"dagster job backfill failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        deadline = time.monotonic() + 120 + 90 * generations  # a guard against hanging
        with dg.DagsterInstance.from_config(str(home)) as instance:
            while time.monotonic() < deadline and daemon.alive():
                runs = instance.get_runs(dg.RunsFilter(job_name="generate"))
                if len(runs) == generations and all(r.is_finished for r in runs):
                    break
                time.sleep(1)
            facts = [f for f in run_facts(instance, GPU_STEPS) if f.job == "generate"]
            orchestration = [(f.end - f.start) - stage_seconds(instance, f.run_id)
                             for f in facts if f.start and f.end and f.status == dg.DagsterRunStatus.SUCCESS]
            why = [failure(instance, f.run_id) for f in facts if f.end and f.status != dg.DagsterRunStatus.SUCCESS]
    finished = [f for f in facts if f.end]
    gpu = [(start, end) for f in facts for _, start, end in f.gpu_steps if end]
    steps = sorted((start, end, f"{f.run_id[:8]} {step}") for f in facts for step, start, end in f.gpu_steps if end)
    crowded = [[f"{name} {s0:.3f}-{s1:.3f}" for s0, s1, name in steps if s0 <= start < s1]
               for start, _, _ in steps]  # the gpu steps running as each one started
    over = next((names for names in crowded if len(names) > workers), [])
    wall = max(f.end for f in finished) - submitted if finished else float("nan")
    return {"storage": storage, "workers": workers, "generations": generations,
            "per_minute": len([f for f in finished if f.status == dg.DagsterRunStatus.SUCCESS]) / wall * 60,
            "gpu_at_once": most_at_once(gpu) if gpu else 0, "pool_limit": workers,
            "failed": len([f for f in finished if f.status != dg.DagsterRunStatus.SUCCESS]),
            "lost": generations - len(finished), "wall_s": wall,
            "orchestration_s": statistics.mean(orchestration) if orchestration else float("nan"),
            "run_s": statistics.mean(f.end - f.start for f in finished if f.start) if finished else float("nan"),
            "why": why, "over": over}


def failure(instance: dg.DagsterInstance, run_id: str) -> str:
    """What failed a run, in one line: its first step or run failure."""
    for event in instance.all_logs(run_id):
        if event.is_dagster_event and event.dagster_event.event_type in (
                dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
            data = event.dagster_event.event_specific_data
            error = getattr(data, "error", None)
            text = error.message if error is not None else event.message or ""
            return f"{run_id[:8]} {event.step_key or 'run'}: {' '.join(text.split())[:300]}"
    return f"{run_id[:8]}: no failure event"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=100, help="generations per case (default 100)")
    parser.add_argument("--storage", nargs="+", choices=("sqlite", "postgres"), default=["sqlite", "postgres"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2], help="GPU workers per case")
    args = parser.parse_args()
    print(f"backfill of {args.generations} generations through dagster-daemon, queued runs (2 at once), "
          f"embedded backends; {machine()}")
    print(f"  {'storage':<9} {'workers':>7} {'gen/min':>8} {'gpu at once':>11} {'failed':>6} {'lost':>5} "
          f"{'wall s':>7} {'run s':>6} {'orchestration s/gen':>20}")
    with ExitStack() as stack:
        pg = None
        if "postgres" in args.storage:
            from threegen_dagster_tests.pg_server import PgServer

            pg = stack.enter_context(PgServer())
        for storage in args.storage:
            for workers in args.workers:
                with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
                    r = one_case(storage, workers, args.generations, pg, Path(tmp))
                print(f"  {r['storage']:<9} {r['workers']:>7} {r['per_minute']:>8.2f} "
                      f"{r['gpu_at_once']:>5} (<={r['pool_limit']}) {r['failed']:>6} {r['lost']:>5} "
                      f"{r['wall_s']:>7.1f} {r['run_s']:>6.1f} {r['orchestration_s']:>20.1f}", flush=True)
                for line in r["why"]:
                    print(f"    failed: {line}", flush=True)
                if r["over"]:  # more gpu steps at once than the pool allows: which, from their events
                    print(f"    over the pool's limit: {'; '.join(r['over'])}", flush=True)


if __name__ == "__main__":
    main()
