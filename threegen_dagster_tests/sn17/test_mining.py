"""Mining end to end without a chain: local validators on bittensor's Axon hand out a text and an
image task; the puller queues them; the task sensor makes generations and runs; once the runs end
the submission sensor launches the submit job, which signs and sends the result (or an empty one)
through bittensor's Dendrite; the validator verifies the signature and answers."""

import asyncio
import base64
import gc
import io
import time

import bittensor as bt
import dagster as dg
import pytest
from bittensor.utils import networking
from PIL import Image

from threegen_dagster import cli
from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.resources import StoreResource
from threegen_dagster.settings import Settings
from threegen_dagster.sn17.client import MinerClient
from threegen_dagster.sn17.puller import TaskQueue, pull_once
from threegen_dagster.sn17.validators import Neuron, ValidatorBook, ValidatorPolicy
from threegen_dagster.defs.sn17 import sn17_submission_sensor, sn17_task_sensor
from threegen_dagster.splats import spz

from .local_validator import HOST, LocalValidator, make_wallet

POLICY = ValidatorPolicy(min_stake=0.0, manual_blacklist=frozenset())


def spz_gaussians(task, results: str) -> float:
    """The local validator's score: 0.9 for a decodable SPZ of at least 7000 gaussians."""
    return 0.9 if len(spz.decode(base64.b64decode(results))) >= 7000 else 0.1


@pytest.fixture
def mining(tmp_path, monkeypatch):
    monkeypatch.setattr(networking, "get_external_ip", lambda: HOST)  # no lookup on a closed network
    miner = make_wallet(tmp_path / "wallets", "miner")
    validators = [LocalValidator(tmp_path / f"v{n}", score=spz_gaussians).start() for n in range(2)]
    settings = Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox", gaussians=8000,
                        sn17={"wallet_name": "miner", "wallet_path": str(tmp_path / "wallets"), "variants": 2})
    with dg.instance_for_test() as instance:
        yield settings, instance, miner, validators
    for v in validators:
        v.stop()
    gc.collect()


def pull(settings, miner, validators) -> dict:
    store = StoreResource.from_settings(settings).store()
    neurons = [Neuron(n, v.hotkey, 1000.0, HOST, v.axon.port) for n, v in enumerate(validators)]

    async def main():
        async with MinerClient(miner, ValidatorBook(store), POLICY, dendrite=bt.Dendrite(wallet=miner)) as client:
            return await pull_once(client, neurons, TaskQueue(store))

    return asyncio.run(main())


def test_text_and_image_tasks_to_accepted_submissions(mining) -> None:
    settings, instance, miner, (v_text, v_image) = mining
    png = io.BytesIO()
    photo = Image.new("RGB", (256, 256), (240, 240, 240))
    photo.paste((160, 40, 40), (80, 60, 176, 200))  # a red block on a plain light background
    photo.save(png, format="PNG")
    text_task = v_text.add_task("a wooden chair")
    image_task = v_image.add_task(base64.b64encode(png.getvalue()).decode(), type="image")
    summary = pull(settings, miner, [v_text, v_image])
    assert summary["new"] == 2

    definitions = build_definitions(settings)
    resources = {k: definitions.resources[k] for k in ("store", "sn17")}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sn17_task_sensor(context)
    assert len(result.run_requests) == 4  # two tasks x two seed variants
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions("generations", list(request.partition_keys))
    job = definitions.resolve_job_def("generate")
    for request in result.run_requests:
        job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags,
                               run_config=cli.QUIET_RUN, raise_on_error=False)

    store = definitions.resources["store"]
    assert set(store.ledger().holds()) == {r.partition_key for r in result.run_requests}  # kept until submitted
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        submits = sn17_submission_sensor(context)
    assert sorted(r.run_key for r in submits) == sorted([f"submit:{text_task.id}", f"submit:{image_task.id}"])
    submit_job = definitions.resolve_job_def("submit")
    outputs = {}
    for request in submits:
        run = submit_job.execute_in_process(instance=instance, run_config=request.run_config, tags=request.tags)
        outputs[request.tags["threegen/task_id"]] = run.output_for_node("submit_task")

    text_out = outputs[text_task.id]
    assert text_out["accepted"] and text_out["feedback"]["task_fidelity_score"] == 0.9
    assert text_out["submitted_key"].startswith("a-wooden-chair-") and "best of 2" in text_out["decision"]
    received = {s.task_id: s for s in v_text.received + v_image.received}
    assert received[text_task.id].outcome == "accepted" and received[text_task.id].signature_ok
    image_out = outputs[image_task.id]
    assert image_out["accepted"] and received[image_task.id].outcome == "accepted"
    assert image_out["submitted_key"].startswith("img-") and store.ledger().get(image_out["submitted_key"]).kind == "image"

    queue = TaskQueue(store.store())
    assert {e["state"] for e in queue.all()} == {"submitted"} and store.ledger().holds() == {}
    book = ValidatorBook(store.store())
    assert book.record(v_text.hotkey).accepted == 1 and book.record(v_image.hotkey).accepted == 1
    again = submit_job.execute_in_process(instance=instance, run_config=submits[0].run_config)
    assert again.output_for_node("submit_task")["skipped"]  # never submitted twice
    assert len(v_text.received) + len(v_image.received) == 2

    frame = definitions.resolve_job_def("refresh_catalog").execute_in_process(
        instance=instance, run_config=cli.QUIET_RUN).output_for_node("sn17_submissions")
    assert sorted(frame["state"]) == ["submitted", "submitted"] and frame["accepted"].tolist().count(True) == 2


def test_a_low_score_sends_an_empty_result(mining) -> None:
    settings, instance, miner, (validator, _) = mining
    settings = Settings(**{**settings.__dict__, "score_threshold": 0.99})  # nothing reaches it
    task = validator.add_task("a wooden chair")
    pull(settings, miner, [validator])
    definitions = build_definitions(settings)
    with dg.build_sensor_context(instance=instance, resources={k: definitions.resources[k]
                                                                  for k in ("store", "sn17")}) as context:
        result = sn17_task_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions("generations", list(request.partition_keys))
    for request in result.run_requests:
        definitions.resolve_job_def("generate").execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=request.tags, run_config=cli.QUIET_RUN,
            raise_on_error=False)  # the blocking check fails these runs: the score is below 0.99
    with dg.build_sensor_context(instance=instance, resources={k: definitions.resources[k]
                                                                  for k in ("store", "sn17")}) as context:
        (submit_request,) = sn17_submission_sensor(context)
    before = time.time()
    run = definitions.resolve_job_def("submit").execute_in_process(instance=instance,
                                                                  run_config=submit_request.run_config)
    out = run.output_for_node("submit_task")
    assert out["decision"].startswith("empty result: best score") and "< 0.99" in out["decision"]
    assert validator.received[-1].outcome == "empty" and validator.received[-1].task_id == task.id
    cooldown_until = validator.miners[miner.hotkey.ss58_address].cooldown_until
    assert int(before) + 300 <= cooldown_until <= time.time() + 300  # the task's 300 s only: no 600 s penalty


def test_the_puller_command_queues_tasks(mining, monkeypatch, capsys) -> None:
    import json

    settings, _, miner, (validator, _) = mining
    task = validator.add_task("a blue vase")
    monkeypatch.setenv("THREEGEN_STORE", settings.store)
    monkeypatch.setenv("THREEGEN_WALLET_NAME", "miner")
    monkeypatch.setenv("THREEGEN_WALLET_PATH", settings.sn17["wallet_path"])
    monkeypatch.setenv("THREEGEN_SN17_MIN_STAKE", "0")
    spec = f"0:{validator.hotkey}@{HOST}:{validator.axon.port}"
    assert cli.main(["puller", "--once", "--validator", spec]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert summary["new"] == 1 and summary["failed"] == {}
    assert TaskQueue(StoreResource.from_settings(settings).store()).get(task.id)["prompt"] == "a blue vase"
    assert cli.main(["puller", "--once", "--validator", "not-a-spec"]) == 2
