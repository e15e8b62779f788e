"""A local SN17 validator for tests: bittensor's real Axon on 127.0.0.1 serving PullTask and SubmitResults.

No chain: the axon is started without ``serve()`` (which would register it on a subtensor), and
instead of a metagraph an optional allow-list of miner hotkeys decides who may talk to it. Requests
are still checked by bittensor's own ``default_verify`` (the dendrite's signature over nonce, hotkeys
and body hash). The rules follow the legacy validator: 300 s cooldown per task, +600 s for a bad
signature or a score under the threshold, nothing extra for an empty result, the same task again on a
re-pull before submitting, and a counted violation for pulling during a cooldown.
"""

# No `from __future__ import annotations`: Axon.attach reads the handlers' annotations as classes.

import argparse
import asyncio
import socket
import threading
import time
import typing
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import bittensor as bt
from bittensor_wallet import Wallet

from threegen_dagster.sn17.protocol import Feedback, PullTask, SubmitResults, Task
from threegen_dagster.sn17.signing import submission_message, verify_submission

HOST = "127.0.0.1"
# Axon.attach compares a blacklist's signature with `-> typing.Tuple[bool, str]`, which `tuple[bool, str]` is not
Verdict = typing.Tuple[bool, str]  # noqa: UP006


def make_wallet(root: Path, name: str) -> Wallet:
    """A fresh unencrypted coldkey + hotkey under ``root``; nothing goes to ~/.bittensor."""
    wallet = Wallet(name=name, hotkey="default", path=str(root))
    wallet.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    wallet.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    return wallet


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class MinerState:
    assigned: Task | None = None
    cooldown_until: int = 0
    cooldown_violations: int = 0
    scores: list[float] = field(default_factory=list)  # accepted fidelity scores


@dataclass
class Submission:
    """What the validator received and how it judged it."""

    miner_hotkey: str
    task_id: str
    results: str
    signature_ok: bool | None  # None: not checked (no such task assigned)
    outcome: str  # accepted | rejected_signature | rejected_score | empty | wrong_task
    score: float = 0.0


class LocalValidator:
    def __init__(
        self,
        root: Path,
        score: Callable[[Task, str], float] = lambda task, results: 1.0,
        allowed_miners: set[str] | None = None,
        threshold: float = 0.6,
        throttle_period: int = 30,
        task_cooldown: int = 300,
        cooldown_penalty: int = 600,
        delay: float = 0.0,
        rendezvous: threading.Barrier | None = None,
        submit_delay: float = 0.0,
        on_submit: Callable[["Submission"], None] | None = None,
        reassign: bool = False,
    ) -> None:
        self.wallet = make_wallet(root, "validator")
        self.score = score
        self.allowed_miners = allowed_miners
        self.threshold = threshold
        self.throttle_period = throttle_period
        self.task_cooldown = task_cooldown
        self.cooldown_penalty = cooldown_penalty
        self.delay = delay  # seconds each PullTask answer waits: a slow validator
        # PullTask waits here for the other validators sharing the barrier: True once all met, which
        # proves the requests were in flight at the same time (False: the wait timed out alone)
        self.rendezvous, self.met = rendezvous, []
        self.submit_delay = submit_delay  # seconds SubmitResults waits after recording, before answering
        self.on_submit = on_submit  # called with each recorded submission (from the axon's thread)
        self.reassign = reassign  # a new task on every pull, though one is assigned: a validator flooding the miner
        self.queue: deque[Task] = deque()
        self.miners: dict[str, MinerState] = {}
        self.received: list[Submission] = []
        self.requests: list[tuple[str, str]] = []  # (synapse name, miner hotkey) of every signed request

        self.port = free_port()
        self.axon = self._axon()

    def _axon(self) -> "bt.Axon":
        parser = argparse.ArgumentParser()
        bt.Axon.add_args(parser)
        # explicit args: with none, bittensor's Config parses sys.argv (pytest's own arguments)
        config = bt.Config(parser, args=["--axon.port", str(self.port)])
        axon = bt.Axon(wallet=self.wallet, config=config, ip=HOST, port=self.port, external_ip=HOST)
        axon.fast_config.host = HOST  # Axon hard-codes 0.0.0.0; keep the test server on loopback
        axon.attach(forward_fn=self.pull_task, blacklist_fn=self.blacklist_pull)
        axon.attach(forward_fn=self.submit_results, blacklist_fn=self.blacklist_submit)
        return axon

    @property
    def hotkey(self) -> str:
        return self.wallet.hotkey.ss58_address

    def info(self) -> "bt.AxonInfo":
        return self.axon.info()

    def start(self, timeout: float = 10.0) -> "LocalValidator":
        self.axon.start()  # returns before uvicorn listens
        deadline = time.monotonic() + timeout
        while not self.axon.fast_server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local validator's axon did not start on {HOST}:{self.axon.port}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.axon.stop()

    def fresh_axon(self) -> "bt.Axon":
        """A new axon on the same port, keys and memory, for ``restart``. Build it on the thread that runs
        Dagster: uvicorn's Config calls ``logging.config.dictConfig``, which takes logging's module lock and
        then each handler's lock, the opposite order to a handler emitting a Dagster event; built on another
        thread while a job logs, the two deadlock."""
        return self._axon()

    def restart(self, axon: "bt.Axon | None" = None) -> "LocalValidator":
        """Up again on the same port with the same keys and memory (after ``stop``: a validator that was down)."""
        self.axon = axon or self._axon()
        return self.start()

    def add_task(self, prompt: str, type: str = "text", id: str | None = None) -> Task:
        task = Task(type=type, prompt=prompt) if id is None else Task(type=type, prompt=prompt, id=id)
        self.queue.append(task)
        return task

    # --- blacklist: stands in for "is this hotkey registered on the metagraph"
    def _blacklisted(self, hotkey: str | None) -> Verdict:
        if self.allowed_miners is not None and hotkey not in self.allowed_miners:
            return True, f"unrecognized hotkey {hotkey}"
        return False, ""

    def blacklist_pull(self, synapse: PullTask) -> Verdict:
        self.requests.append(("PullTask", synapse.dendrite.hotkey))
        return self._blacklisted(synapse.dendrite.hotkey)

    def blacklist_submit(self, synapse: SubmitResults) -> Verdict:
        self.requests.append(("SubmitResults", synapse.dendrite.hotkey))
        return self._blacklisted(synapse.dendrite.hotkey)

    # --- handlers
    async def pull_task(self, synapse: PullTask) -> PullTask:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.rendezvous is not None:
            try:
                await asyncio.to_thread(self.rendezvous.wait)
                self.met.append(True)
            except threading.BrokenBarrierError:
                self.met.append(False)
        miner = self.miners.setdefault(synapse.dendrite.hotkey, MinerState())
        synapse.validation_threshold = self.threshold
        synapse.throttle_period = self.throttle_period
        if time.time() < miner.cooldown_until:
            miner.cooldown_violations += 1
        else:
            if (miner.assigned is None or self.reassign) and self.queue:
                miner.assigned = self.queue.popleft()
            synapse.task = miner.assigned  # a re-pull before submitting gets the same task
        synapse.cooldown_until = miner.cooldown_until
        synapse.cooldown_violations = miner.cooldown_violations
        return synapse

    async def submit_results(self, synapse: SubmitResults) -> SubmitResults:
        hotkey = synapse.dendrite.hotkey
        miner = self.miners.setdefault(hotkey, MinerState())
        task = miner.assigned
        if task is None or synapse.task_id != task.id:
            self._record(synapse, signature_ok=None, outcome="wrong_task")
            return self._answer(synapse, miner)

        message = submission_message(synapse.submit_time, task.prompt, self.hotkey, hotkey)
        signature_ok = verify_submission(synapse.signature, message, hotkey)
        score, penalty = 0.0, 0
        if not signature_ok:
            outcome, penalty = "rejected_signature", self.cooldown_penalty
        elif synapse.results == "":
            outcome = "empty"
        else:
            score = self.score(task, synapse.results)
            if score < self.threshold:
                outcome, penalty = "rejected_score", self.cooldown_penalty
            else:
                outcome = "accepted"
                miner.scores.append(score)
        self._record(synapse, signature_ok, outcome, score)
        miner.assigned = None
        miner.cooldown_until = int(time.time()) + self.task_cooldown + penalty
        if self.submit_delay:  # received and counted, then slow to answer
            await asyncio.sleep(self.submit_delay)
        return self._answer(synapse, miner, score if outcome == "accepted" else 0.0)

    def _record(self, synapse: SubmitResults, signature_ok: bool | None, outcome: str, score: float = 0.0) -> None:
        submission = Submission(synapse.dendrite.hotkey, synapse.task_id, synapse.results, signature_ok, outcome, score)
        self.received.append(submission)
        if self.on_submit is not None:
            self.on_submit(submission)

    def _answer(self, synapse: SubmitResults, miner: MinerState, score: float = 0.0) -> SubmitResults:
        synapse.results = synapse.signature = ""  # as the real validator: don't echo the payload back
        average = sum(miner.scores) / len(miner.scores) if miner.scores else 0.0
        synapse.feedback = Feedback(
            task_fidelity_score=score,
            average_fidelity_score=average,
            generations_within_the_window=len(miner.scores),
            current_miner_reward=average * len(miner.scores),
        )
        synapse.cooldown_until = miner.cooldown_until
        return synapse
