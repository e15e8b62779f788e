"""The task puller: a small long-running process that asks validators for tasks and queues them in
the store (``sn17/tasks/<task_id>.json``) for the Dagster sensor to pick up. The network calls live
here rather than in the sensor (bittensor imports and 12 s timeouts do not belong in a sensor tick),
and with an s3:// store the puller can run on another machine. Needs the ``sn17`` extra; no
Dagster imports.

    async with MinerClient(wallet, ValidatorBook(store), policy) as client:
        await run_forever(client, lambda: neurons_from_metagraph(subtensor.metagraph(17)), TaskQueue(store))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .client import MinerClient, PulledTask
from .queue import ACTIVE_STATES, TERMINAL_STATES, NotClaimed
from .queue import ROOT, STATES, TaskQueue, prompt_of  # noqa: F401 - the puller's public names
from .protocol import Task
from .validators import AT_CAP, Neuron

log = logging.getLogger(__name__)


def neurons_from_metagraph(metagraph: Any) -> list[Neuron]:
    """Every neuron of a bittensor metagraph (``select`` decides which are worth asking)."""
    return [Neuron(int(uid), str(metagraph.hotkeys[i]), float(metagraph.S[i]), str(axon.ip), int(axon.port),
                   bool(metagraph.validator_permit[i]))
            for i, (uid, axon) in enumerate(zip(metagraph.uids, metagraph.axons))]


def task_of(entry: dict) -> Task:
    """The protocol task a queue entry came from (what ``MinerClient.submit`` sends back)."""
    return Task(type=entry["type"], id=entry["task_id"], prompt=entry["prompt"])


def validator_of(entry: dict) -> Neuron:
    """Where the entry's task came from, as pulled (a fresh metagraph may know a newer address)."""
    return Neuron(entry["validator_uid"], entry["validator_hotkey"], 0.0, entry["validator_ip"],
                  entry["validator_port"])


def waiting_for_us(entry: dict, pulled: PulledTask) -> bool:
    """Whether a task id we hold already, sent again, is its validator waiting for our result: the task is
    still in flight here and that same validator sent it. SN17.md section 5: a re-pull before submitting
    returns the same task, so this is the protocol: the task is not run twice, and its result goes when it
    is ready (handing it back now would void the assignment the result is for).

    Anything else (a task we are done with: submitted, failed, rejected, expired; or another validator's
    task under an id we hold) is still assigned to us at the validator that sent it, which re-sends it on
    every pull and never gives us another: it is handed back with an empty result (no penalty, SN17.md),
    never run again, and a second real result is never sent (the validator may have the first)."""
    return entry.get("state") in ACTIVE_STATES and entry.get("validator_hotkey") == pulled.validator_hotkey


async def pull_once(client: MinerClient, neurons: list[Neuron], queue: TaskQueue,
                    release_rejected: bool = True, now: float | None = None) -> dict:
    """One round: expire the tasks past their deadline, pull from every selectable validator below its cap
    of tasks not finished (``ValidatorPolicy.max_pending``), queue what came back.

    A task we will not run stays assigned to us (a re-pull returns it again), so with ``release_rejected``
    it is handed back with an empty result, the task's cooldown and no penalty: a malformed one at once,
    and one its validator sends again after we are done with it (``waiting_for_us``)."""
    now = time.time() if now is None else now
    summary = {"pulled": 0, "new": 0, "duplicates": 0, "replayed": 0, "rejected": 0, "expired": 0, "errors": {}}
    pending = Counter()
    for entry in queue.active():  # expired here too: with the sensor stopped, nothing else would drain them
        try:
            if queue.expire(entry, now):
                summary["expired"] += 1
                log.warning("sn17: task %s from validator %s expired (never run)", entry["task_id"],
                            entry.get("validator_uid"))
                continue
        except NotClaimed:  # a sensor started it meanwhile
            pass
        except Exception:  # noqa: BLE001 - one record's trouble is its own: counted, tried again next round
            log.exception("sn17: could not expire task %r", str(entry.get("task_id"))[:100])
        pending[entry.get("validator_hotkey")] += 1
    capped_before = {uid for uid, why in client.last_skipped.items() if AT_CAP in why}
    pulled = await client.pull(neurons, now=now, pending=pending)
    for uid, why in client.last_skipped.items():
        if AT_CAP in why and uid not in capped_before:  # said once, as it reaches the cap
            log.warning("sn17: validator %s: %s", uid, why)
    by_uid = {n.uid: n for n in neurons}
    summary |= {"pulled": len(pulled), "skipped": dict(client.last_skipped), "failed": dict(client.last_errors)}
    to_release = []
    for p in pulled:  # one task's trouble (a store hiccup) must not cost the others theirs
        try:
            new = queue.add(p)
            entry = queue.get(p.task.id) or {}
        except Exception as exc:  # noqa: BLE001 - recorded and logged; a re-pull returns the task again
            summary["errors"][p.validator_uid] = f"{type(exc).__name__}: {exc}"
            log.exception("sn17: could not queue task %r from validator %s", str(p.task.id)[:100], p.validator_uid)
            continue
        if new:
            summary["new"] += 1
            if entry.get("state") == "rejected":
                summary["rejected"] += 1
                to_release.append((p, entry))
        elif waiting_for_us(entry, p):
            summary["duplicates"] += 1
        else:
            summary["replayed"] += 1
            log.warning("sn17: validator %s sent task %s again, %s here: handed back with an empty result, not run "
                        "again", p.validator_uid, str(p.task.id)[:100], entry.get("state") or "gone")
            to_release.append((p, entry | {"replays": entry.get("replays", 0) + 1}))

    async def release(p: PulledTask, entry: dict) -> None:
        outcome = await client.submit(by_uid[p.validator_uid], p.task, "")
        state = entry.get("state")
        if state not in TERMINAL_STATES:  # another validator's task in flight under this id: not ours to note
            return
        try:
            queue.transition(p.task.id, (state,), state, released=not outcome.error, release_error=outcome.error,
                             **({"replays": entry["replays"]} if "replays" in entry else {}))
        except Exception as exc:  # noqa: BLE001 - handed back all the same; a re-pull would hand it back again
            summary["errors"][p.validator_uid] = f"{type(exc).__name__}: {exc}"
            log.exception("sn17: could not record that task %r was handed back", str(p.task.id)[:100])

    if release_rejected:
        await asyncio.gather(*(release(p, entry) for p, entry in to_release))
    return summary


def next_pull_in(client: MinerClient, neurons: list[Neuron], interval: float, now: float | None = None) -> float:
    """Seconds until the next round: ``interval``, or sooner when a validator's cooldown ends first
    (plus a second: validators round their cooldowns to whole seconds, and an early pull is a violation)."""
    now = time.time() if now is None else now
    records = client.book.all()
    ends = [t for n in neurons if (r := records.get(n.hotkey))
            for t in (r.cooldown_until, r.local_cooldown_until) if t > now]
    return max(1.0, min([interval] + [t + 1.0 - now for t in ends]))


async def run_forever(client: MinerClient, neurons: list[Neuron] | Callable[[], list[Neuron]], queue: TaskQueue,
                      interval: float = 10.0, stop: asyncio.Event | None = None,
                      on_round: Callable[[dict], None] | None = None) -> None:
    """Pull rounds until ``stop`` is set (without one: until SIGINT/SIGTERM). ``neurons`` may be a
    function (e.g. a metagraph sync), called each round in a thread. A failing round is logged, not fatal."""
    loop = asyncio.get_running_loop()
    handled = []
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                handled.append(sig)
    try:
        while not stop.is_set():
            delay = interval
            try:
                current = await asyncio.to_thread(neurons) if callable(neurons) else neurons
                summary = await pull_once(client, current, queue)
                log.info("sn17 pull: %s", summary)
                if on_round:
                    on_round(summary)
                delay = next_pull_in(client, current, interval)
            except Exception:  # a store or metagraph hiccup must not end the puller
                log.exception("sn17 pull round failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await client.aclose()
