"""Task-to-submission overhead outside generation, against a local validator on bittensor's Axon:
pull, the task sensor's tick, the submission sensor's tick, signing, and the submit job's run
(in-process: a daemon-launched run adds a process start on top). Figures are printed, not asserted."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import bittensor as bt  # noqa: E402
import dagster as dg  # noqa: E402
from bittensor.utils import networking  # noqa: E402

from benchmarks._common import machine  # noqa: E402
from threegen_dagster import cli  # noqa: E402
from threegen_dagster.definitions import build_definitions  # noqa: E402
from threegen_dagster.settings import Settings  # noqa: E402
from threegen_dagster.sn17.client import MinerClient  # noqa: E402
from threegen_dagster.sn17.puller import TaskQueue, pull_once  # noqa: E402
from threegen_dagster.sn17.signing import sign_submission  # noqa: E402
from threegen_dagster.sn17.validators import Neuron, ValidatorBook, ValidatorPolicy  # noqa: E402
from threegen_dagster.defs.sn17 import sn17_submission_sensor, sn17_task_sensor  # noqa: E402
from threegen_dagster_tests.sn17.local_validator import HOST, LocalValidator, make_wallet  # noqa: E402

ROUNDS = 5


def main() -> None:
    networking.get_external_ip = lambda: HOST
    figures: dict[str, list[float]] = {k: [] for k in ("pull", "task sensor", "generation (excluded)",
                                                      "submission sensor", "submit job", "sign")}
    with tempfile.TemporaryDirectory() as tmp, dg.instance_for_test() as instance:
        root = Path(tmp)
        miner = make_wallet(root / "wallets", "miner")
        validator = LocalValidator(root / "v", task_cooldown=0).start()
        settings = Settings(store=str(root / "store"), inbox=root / "inbox", gaussians=8000,
                            sn17={"wallet_name": "miner", "wallet_path": str(root / "wallets")})
        definitions = build_definitions(settings)
        store = definitions.resources["store"]
        neuron = Neuron(0, validator.hotkey, 1e6, HOST, validator.axon.port)
        generate, submit = definitions.resolve_job_def("generate"), definitions.resolve_job_def("submit")

        def timed(name: str, fn):
            t = time.perf_counter()
            out = fn()
            figures[name].append(time.perf_counter() - t)
            return out

        for n in range(ROUNDS):
            validator.add_task(f"a wooden chair number {n}")

            async def pull():
                async with MinerClient(miner, ValidatorBook(store.store()), ValidatorPolicy(min_stake=0),
                                       dendrite=bt.Dendrite(wallet=miner)) as client:
                    return await pull_once(client, [neuron], TaskQueue(store.store()))

            timed("pull", lambda: asyncio.run(pull()))
            with dg.build_sensor_context(instance=instance, resources={
                    "store": store, "sn17": definitions.resources["sn17"]}) as context:
                result = timed("task sensor", lambda: sn17_task_sensor(context))
            (request,) = result.run_requests
            instance.add_dynamic_partitions("generations", [request.partition_key])
            timed("generation (excluded)", lambda: generate.execute_in_process(
                instance=instance, partition_key=request.partition_key, tags=request.tags, run_config=cli.QUIET_RUN))
            with dg.build_sensor_context(instance=instance, resources={
                    "store": store, "sn17": definitions.resources["sn17"]}) as context:
                (submit_request,) = timed("submission sensor", lambda: sn17_submission_sensor(context))
            timed("submit job", lambda: submit.execute_in_process(
                instance=instance, run_config={**submit_request.run_config, **cli.QUIET_RUN}))
            timed("sign", lambda: sign_submission(miner.hotkey, time.time_ns(), "a prompt", validator.hotkey))
        validator.stop()
    print(f"SN17 task-to-submission overhead, median of {ROUNDS} ({machine()})")
    overhead = 0.0
    for name, values in figures.items():
        median = statistics.median(values)
        if name not in ("generation (excluded)", "sign"):
            overhead += median
        print(f"  {name:<24} {median * 1e3:9.1f} ms")
    print(f"  {'overhead':<24} {overhead * 1e3:9.1f} ms   (pull + both sensor ticks + submit job; signing is inside it)")
    print(f"  accepted {sum(s.outcome == 'accepted' for s in validator.received)} of {len(validator.received)}")
    history()


def history(sizes=(0, 1000), active: int = 4, repeat: int = 5) -> None:
    """A sensor tick against a queue holding a week of finished tasks: it should cost what is active."""
    from threegen_dagster.settings import Settings as S
    from threegen_dagster.sn17.client import PulledTask
    from threegen_dagster.sn17.protocol import Task
    from threegen_dagster.defs.sn17 import INDEXED
    from threegen_dagster_tests.s3_server import BUCKET, S3Server
    from threegen_dagster_tests.sn17.harness import CALLS, CountingStoreResource, write_old_record

    print(f"SN17 sensor ticks with {active} active tasks and a history of finished ones, median of {repeat}")
    with tempfile.TemporaryDirectory() as tmp, S3Server(tmp) as server:
        for name, value in server.env().items():
            os.environ[name] = value
        for kind in ("local", "s3"):
            for finished in sizes:
                uri = str(Path(tmp) / f"{kind}-{finished}") if kind == "local" else f"s3://{BUCKET}/h{finished}"
                settings = S(store=uri, inbox=Path(tmp) / "inbox", s3_endpoint=server.endpoint if kind == "s3" else None,
                             s3_region="us-east-1" if kind == "s3" else None)
                store = CountingStoreResource.from_settings(settings)
                queue = TaskQueue(store.store())
                for n in range(finished):
                    write_old_record(store.store(), f"done-{n:05d}", "a chair", state="submitted")
                for n in range(active):  # running, so a tick reads them but starts nothing
                    queue.add(PulledTask(0, "5V", Task(prompt=f"busy {n}", id=f"busy-{n}"), 0.6, 1.0, HOST, 1))
                    queue.set_state(f"busy-{n}", "running", keys=[], started_at=time.time())
                with dg.instance_for_test() as instance:
                    for sensor in (sn17_task_sensor, sn17_submission_sensor):
                        times = []
                        for _ in range(repeat):
                            CALLS.clear()
                            with dg.build_sensor_context(instance=instance, cursor=INDEXED, resources={
                                    "store": store, "sn17": build_definitions(settings).resources["sn17"]}) as c:
                                t = time.perf_counter()
                                sensor(c)
                                times.append(time.perf_counter() - t)
                        reads = sum(op == "read" for op, _ in CALLS)
                        print(f"  {kind:<5} {finished:>5} finished  {sensor.name:<24} "
                              f"{statistics.median(times) * 1e3:8.1f} ms  {reads:3d} reads, "
                              f"{sum(op == 'list' for op, _ in CALLS)} listing")
                t = time.perf_counter()
                queue.all()
                print(f"  {kind:<5} {finished:>5} finished  {'(reading every record)':<24} "
                      f"{(time.perf_counter() - t) * 1e3:8.1f} ms  what each tick read before the active index")


if __name__ == "__main__":
    main()
