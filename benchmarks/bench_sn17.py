"""Task-to-submission overhead outside generation, against a local validator on bittensor's Axon:
pull, the task sensor's tick, the submission sensor's tick, signing, and the submit job's run
(in-process: a daemon-launched run adds a process start on top). Figures are printed, not asserted."""

from __future__ import annotations

import asyncio
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
from threegen_dagster.sn17_jobs import sn17_submission_sensor, sn17_task_sensor  # noqa: E402
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
            with dg.build_sensor_context(instance=instance, resources={"store": store}) as context:
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


if __name__ == "__main__":
    main()
