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
from collections.abc import Callable
from typing import Any

from .client import MinerClient, PulledTask
from .queue import ROOT, STATES, TaskQueue, prompt_of  # noqa: F401 - the puller's public names
from .protocol import Task
from .validators import Neuron

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


async def pull_once(client: MinerClient, neurons: list[Neuron], queue: TaskQueue,
                    release_rejected: bool = True) -> dict:
    """One round: pull from every selectable validator, queue what came back.

    A malformed task stays assigned to us (a re-pull returns it again), so with ``release_rejected``
    it is handed back at once with an empty result: the task's cooldown, no penalty."""
    pulled = await client.pull(neurons)
    by_uid = {n.uid: n for n in neurons}
    summary = {"pulled": len(pulled), "new": 0, "duplicates": 0, "rejected": 0, "errors": {},
               "skipped": dict(client.last_skipped), "failed": dict(client.last_errors)}
    to_release = []
    for p in pulled:  # one task's trouble (a store hiccup) must not cost the others theirs
        try:
            new = queue.add(p)
            summary["new" if new else "duplicates"] += 1
            entry = queue.get(p.task.id) or {}
        except Exception as exc:  # noqa: BLE001 - recorded and logged; a re-pull returns the task again
            summary["errors"][p.validator_uid] = f"{type(exc).__name__}: {exc}"
            log.exception("sn17: could not queue task %r from validator %s", str(p.task.id)[:100], p.validator_uid)
            continue
        if entry.get("state") == "rejected":
            summary["rejected"] += new
            if release_rejected and not entry.get("released"):
                to_release.append(p)

    async def release(p: PulledTask) -> None:
        outcome = await client.submit(by_uid[p.validator_uid], p.task, "")
        try:
            queue.set_state(p.task.id, "rejected", released=not outcome.error, release_error=outcome.error)
        except Exception as exc:  # noqa: BLE001 - handed back all the same; a re-pull would hand it back again
            summary["errors"][p.validator_uid] = f"{type(exc).__name__}: {exc}"
            log.exception("sn17: could not record that task %r was handed back", str(p.task.id)[:100])

    await asyncio.gather(*(release(p) for p in to_release))
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
