"""The SN17 protocol end to end on loopback: a miner's real bittensor Dendrite against a LocalValidator's
real Axon. Needs the ``sn17`` extra (bittensor); skipped without it."""

import asyncio
import base64
import time

import pytest

bt = pytest.importorskip("bittensor")

from bittensor.utils import networking

from threegen_dagster.sn17.protocol import (
    PULL_TASK_TIMEOUT,
    SUBMIT_RESULTS_TIMEOUT,
    PullTask,
    SubmitResults,
    Task,
)
from threegen_dagster.sn17.signing import sign_submission

from .local_validator import LocalValidator, make_wallet


RESULT = base64.b64encode(b"\x28\xb5\x2f\xfd stand-in SPZ bytes").decode()


@pytest.fixture
def validator(tmp_path):
    v = LocalValidator(tmp_path / "validator").start()
    yield v
    v.stop()


@pytest.fixture
def miner(tmp_path, monkeypatch):
    # Dendrite() asks checkip.amazonaws.com (then curl) for the machine's external IP; there is no
    # such network here, and on loopback the miner's "external" IP is the axon's own: 127.0.0.1.
    monkeypatch.setattr(networking, "get_external_ip", lambda: "127.0.0.1")
    return make_wallet(tmp_path, "miner")


class Miner:
    """The miner's side of one conversation with the validator (one event loop, one aiohttp session)."""

    def __init__(self, wallet, validator: LocalValidator) -> None:
        self.dendrite = bt.Dendrite(wallet=wallet)
        self.keypair = wallet.hotkey
        self.validator = validator

    async def pull(self) -> PullTask:
        synapse = PullTask()
        return await self.dendrite.call(self.validator.info(), synapse, timeout=PULL_TASK_TIMEOUT, deserialize=False)

    async def submit(self, task: Task, results: str, signed_prompt: str | None = None) -> SubmitResults:
        submit_time = time.time_ns()
        prompt = task.prompt if signed_prompt is None else signed_prompt
        signature = sign_submission(self.keypair, submit_time, prompt, self.validator.hotkey)
        synapse = SubmitResults(task=task, results=results, submit_time=submit_time, signature=signature)
        return await self.dendrite.call(
            self.validator.info(), synapse, timeout=SUBMIT_RESULTS_TIMEOUT, deserialize=False
        )


def converse(wallet, validator, scenario):
    miner = Miner(wallet, validator)  # made (and so dropped) outside the loop: Dendrite.__del__ warns inside one

    async def run():
        async with miner.dendrite:  # closes its aiohttp session
            return await scenario(miner)

    return asyncio.run(run())


def assert_cooldown(until: int, before: float, seconds: int) -> None:
    assert int(before) + seconds <= until <= time.time() + seconds + 1


def test_pull_sign_submit_accepted(validator, miner):
    queued = validator.add_task("a wooden chair")

    async def scenario(m: Miner):
        pulled = await m.pull()
        assert pulled.is_success, pulled.dendrite.status_message
        assert pulled.task == queued
        assert (pulled.validation_threshold, pulled.throttle_period, pulled.cooldown_until) == (0.6, 30, 0)
        before = time.time()
        answer = await m.submit(pulled.task, RESULT)
        again = await m.pull()  # during the cooldown: no task, one violation
        return before, answer, again

    before, answer, again = converse(miner, validator, scenario)
    assert answer.is_success, answer.dendrite.status_message
    got = validator.received[-1]
    assert (got.miner_hotkey, got.task_id, got.results) == (miner.hotkey.ss58_address, queued.id, RESULT)
    assert got.signature_ok and got.outcome == "accepted"
    assert not answer.feedback.validation_failed
    assert answer.feedback.task_fidelity_score == 1.0
    assert answer.feedback.generations_within_the_window == 1
    assert answer.results == ""  # the validator does not echo the payload
    assert_cooldown(answer.cooldown_until, before, 300)
    assert again.task is None
    assert (again.cooldown_until, again.cooldown_violations) == (answer.cooldown_until, 1)


def test_bad_signature_is_rejected_with_the_penalty(validator, miner):
    validator.add_task("a red teapot")

    async def scenario(m: Miner):
        task = (await m.pull()).task
        before = time.time()
        return before, await m.submit(task, RESULT, signed_prompt="some other prompt")

    before, answer = converse(miner, validator, scenario)
    got = validator.received[-1]
    assert got.signature_ok is False and got.outcome == "rejected_signature"
    assert answer.feedback.task_fidelity_score == 0.0
    assert answer.feedback.generations_within_the_window == 0
    assert_cooldown(answer.cooldown_until, before, 300 + 600)


def test_low_score_is_rejected_with_the_penalty(validator, miner, monkeypatch):
    monkeypatch.setattr(validator, "score", lambda task, results: 0.42)
    validator.add_task("a blurry blob")

    async def scenario(m: Miner):
        task = (await m.pull()).task
        before = time.time()
        return before, await m.submit(task, RESULT)

    before, answer = converse(miner, validator, scenario)
    got = validator.received[-1]
    assert got.signature_ok and got.outcome == "rejected_score" and got.score == 0.42
    assert answer.feedback.task_fidelity_score == 0.0
    assert_cooldown(answer.cooldown_until, before, 300 + 600)


def test_empty_result_skips_without_penalty(validator, miner):
    validator.add_task("something too hard")

    async def scenario(m: Miner):
        task = (await m.pull()).task
        before = time.time()
        return before, await m.submit(task, "")

    before, answer = converse(miner, validator, scenario)
    got = validator.received[-1]
    assert got.signature_ok and got.outcome == "empty" and got.results == ""
    assert not answer.feedback.validation_failed
    assert_cooldown(answer.cooldown_until, before, 300)


def test_repull_before_submitting_returns_the_same_task(validator, miner):
    image = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    first = validator.add_task(image, type="image")
    validator.add_task("the next prompt in the queue")

    async def scenario(m: Miner):
        return await m.pull(), await m.pull()

    a, b = converse(miner, validator, scenario)
    assert a.task == b.task == first
    assert a.task.type == "image" and a.task.prompt == image
    assert b.cooldown_violations == 0


def test_unknown_hotkey_is_blacklisted(validator, miner, monkeypatch):
    monkeypatch.setattr(validator, "allowed_miners", {validator.hotkey})
    pulled = converse(miner, validator, lambda m: m.pull())
    assert pulled.dendrite.status_code == 403 and pulled.task is None
