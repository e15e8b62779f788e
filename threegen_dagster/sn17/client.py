"""The miner's side of the SN17 protocol: pull tasks from validators, submit results, and keep each
validator's record (``ValidatorBook``) up to date. Network problems never raise: they become a
failed call in the record, a local cooldown and an error string. Needs the ``sn17`` extra; no
Dagster imports."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Self

import bittensor as bt

from ..storage import StorageError
from .decision import VALIDATION_THRESHOLD
from .protocol import (
    PULL_TASK_TIMEOUT,
    SUBMIT_RESULTS_TIMEOUT,
    PullTask,
    SubmitResults,
    Task,
)
from .queue import prompt_of  # noqa: F401 - part of the client's interface
from .signing import sign_submission
from .validators import Neuron, ValidatorBook, ValidatorPolicy, ValidatorRecord, select

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PulledTask:
    validator_uid: int
    validator_hotkey: str
    task: Task
    validation_threshold: float
    pulled_at: float  # unix seconds
    validator_ip: str = ""  # where to submit (the metagraph may move it; this is where it was)
    validator_port: int = 0


@dataclass(frozen=True)
class SubmitOutcome:
    accepted: bool
    feedback: dict | None
    cooldown_until: float
    seconds: float
    error: str = ""  # a transport or status failure; "" when the validator answered
    # False only when the request provably never left: the connection was refused or unreachable, so
    # sending again cannot double a submission. A timeout or a broken connection may have reached it.
    sent: bool = True


def axon_info(target: Neuron | bt.AxonInfo) -> bt.AxonInfo:
    if isinstance(target, bt.AxonInfo):
        return target
    return bt.AxonInfo(version=0, ip=target.ip, port=target.port, ip_type=4, hotkey=target.hotkey, coldkey="")


MAX_COOLDOWN_S = 7 * 86400
"""The furthest ahead a validator's cooldown is taken: a larger one (or one that is no number) is its own
problem, never an OverflowError in the miner's pull round."""


def cooldown(value: object, now: float) -> float:
    """A validator's ``cooldown_until`` as unix seconds within [0, now + MAX_COOLDOWN_S]."""
    try:
        until = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return now + MAX_COOLDOWN_S if isinstance(value, int) and value > 0 else 0.0
    return min(max(until, 0.0), now + MAX_COOLDOWN_S) if math.isfinite(until) else 0.0


def validation_threshold(value: object) -> tuple[float, str]:
    """A validator's ``validation_threshold`` and, when it is refused, why (else ""). Scores lie in [0, 1]:
    NaN, an infinity or anything above 1 would make every result empty (no score reaches it), a negative or
    a non-number means nothing, so outside [0, 1] the default VALIDATION_THRESHOLD is used instead."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:  # NaN fails too
        return float(value), ""
    try:
        shown = repr(value)[:40]
    except ValueError:  # an int too long to print
        shown = "a huge int"
    return VALIDATION_THRESHOLD, f"validation_threshold {shown} is not a number in [0, 1]"


def _status(synapse: bt.Synapse) -> str:
    d = synapse.dendrite
    return f"{d.status_code} {d.status_message or ''}".strip() if d else "no answer"


def never_sent(synapse: bt.Synapse) -> bool:
    """Whether a failed call provably never reached the axon: no answer came back and the dendrite's
    error is aiohttp's ClientConnectorError (refused, unreachable, DNS), which bittensor reports as
    "503 Service unavailable at HOST:PORT/NAME" (a dropped connection is "503 Service disconnected")."""
    answered = synapse.axon is not None and synapse.axon.status_code is not None
    d = synapse.dendrite
    return (not answered and d is not None and str(d.status_code) == "503"
            and (d.status_message or "").startswith("Service unavailable at "))


class MinerClient:
    def __init__(self, wallet: Any, book: ValidatorBook, policy: ValidatorPolicy | None = None,
                 pull_timeout: float = PULL_TASK_TIMEOUT, submit_timeout: float = SUBMIT_RESULTS_TIMEOUT,
                 dendrite: bt.Dendrite | None = None) -> None:
        self.wallet, self.book, self.policy = wallet, book, policy or ValidatorPolicy()
        self.pull_timeout, self.submit_timeout = pull_timeout, submit_timeout
        self._dendrite = dendrite
        self.last_skipped: dict[int, str] = {}  # uid -> why the last pull did not ask it
        self.last_errors: dict[int, str] = {}  # uid -> why its answer to the last pull failed

    @property
    def hotkey(self) -> str:
        return self.wallet.hotkey.ss58_address

    @property
    def dendrite(self) -> bt.Dendrite:
        if self._dendrite is None:  # made on first use: Dendrite() looks up the external IP
            self._dendrite = bt.Dendrite(wallet=self.wallet)
        return self._dendrite

    async def aclose(self) -> None:
        if self._dendrite is not None:
            await self._dendrite.aclose_session()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def pull(self, neurons: list[Neuron], now: float | None = None,
                   pending: dict[str, int] | None = None) -> list[PulledTask]:
        """Ask every selectable validator for a task at once; the answers that carry one. ``pending``: per
        validator hotkey, its tasks not yet finished (those at ``policy.max_pending`` are not asked)."""
        now = time.time() if now is None else now
        chosen, self.last_skipped = select(neurons, self.book.all(), self.policy,
                                           self.book.blacklist(self.policy), now, pending)
        self.last_errors = {}
        answers = await asyncio.gather(*(self._pull_one(n, now) for n in chosen), return_exceptions=True)
        for neuron, answer in zip(chosen, answers):  # one validator's failure is its own: the others' tasks stay
            if isinstance(answer, Exception):
                self.last_errors[neuron.uid] = f"{type(answer).__name__}: {answer}"[:300]
            elif isinstance(answer, BaseException):
                raise answer
        return [a for a in answers if isinstance(a, PulledTask)]

    async def _pull_one(self, neuron: Neuron, now: float) -> PulledTask | None:
        started = time.monotonic()
        synapse = await self.dendrite.call(axon_info(neuron), PullTask(), timeout=self.pull_timeout,
                                           deserialize=False)
        seconds, ok = time.monotonic() - started, synapse.is_success
        task = synapse.task if ok else None

        def change(r: ValidatorRecord) -> None:
            r.uid, r.pulls = neuron.uid, r.pulls + 1
            r.call(now, seconds, ok)
            if ok:
                r.tasks += task is not None
                r.cooldown_until = cooldown(synapse.cooldown_until, now)
            else:
                r.local_cooldown_until = now + self.policy.failure_cooldown_s

        self.book.update(neuron.hotkey, change)
        if not ok:
            self.last_errors[neuron.uid] = _status(synapse)
            return None
        if task is None:
            return None
        threshold, refused = validation_threshold(synapse.validation_threshold)
        if refused:
            log.warning("sn17: validator %s: %s; using the default %s instead", neuron.uid, refused, threshold)
        return PulledTask(neuron.uid, neuron.hotkey, task, threshold, now, neuron.ip, neuron.port)

    async def submit(self, validator: Neuron | bt.AxonInfo, task: Task, spz_b64: str,
                     now_ns: int | None = None) -> SubmitOutcome:
        """Send a result (base64 SPZ, or "" to give the task back without a penalty)."""
        axon = axon_info(validator)
        submit_time = time.time_ns() if now_ns is None else now_ns
        signature = sign_submission(self.wallet.hotkey, submit_time, task.prompt, axon.hotkey, self.hotkey)
        # the task itself goes too: validators compare it with the assigned one and sign over its prompt
        request = SubmitResults(task=task, results=spz_b64, submit_time=submit_time, signature=signature)
        started, now = time.monotonic(), submit_time / 1e9
        answer = await self.dendrite.call(axon, request, timeout=self.submit_timeout, deserialize=False)
        seconds, ok = time.monotonic() - started, answer.is_success
        feedback = answer.feedback.model_dump() if ok and answer.feedback is not None else None
        # a score under the threshold answers feedback too, with fidelity 0: accepted means a fidelity score
        accepted = bool(feedback and spz_b64 and not feedback["validation_failed"]
                        and feedback["task_fidelity_score"] > 0)

        uid = validator.uid if isinstance(validator, Neuron) else None

        def change(r: ValidatorRecord) -> None:
            r.uid = r.uid if uid is None else uid
            r.call(now, seconds, ok)
            if not ok:
                r.local_cooldown_until = now + self.policy.failure_cooldown_s
                return
            r.submissions += 1
            if spz_b64 == "":
                r.empty += 1
            elif accepted:
                r.accepted += 1
            else:
                r.rejected += 1
            if feedback is not None:
                if spz_b64:
                    r.scores = (r.scores + [feedback["task_fidelity_score"]])[-r.KEEP:]
                r.feedback = (r.feedback + [feedback])[-r.KEEP:]
            r.cooldown_until = cooldown(answer.cooldown_until, now)

        try:
            record = self.book.update(axon.hotkey, change)
            until = record.cooldown_until if ok else record.local_cooldown_until
        except StorageError as exc:  # the answer matters more than the statistics: return it anyway
            log.warning("could not record the submission in validator %s's record: %s", axon.hotkey, exc)
            until = cooldown(answer.cooldown_until, now) if ok else now + self.policy.failure_cooldown_s
        return SubmitOutcome(accepted, feedback, until, seconds, "" if ok else _status(answer),
                             sent=ok or not never_sent(answer))
