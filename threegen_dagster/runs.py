"""Runs that died, and who holds a pool: so a killed run never stalls the others silently.

Dagster frees a run's pool ("gpu") slot when the step ends. A run whose process is killed
mid-step never gets there: it stays STARTED, its slot claimed and its queued steps in line,
and every later run waits for that slot forever. Under the daemon, a killed run worker is
marked failed by its code server and run monitoring frees the slots of runs that ended
(``run_monitoring`` in ``dagster.yaml``). ``threegen generate`` executes in its own process,
which no daemon watches, so it tags its runs with that process (``processes.py``) and, before
it starts and while it waits, marks runs whose threegen process is gone as failed and frees
their slots with Dagster's own calls. ``pool_waits`` says what a run is waiting for.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import dagster as dg

from .failures import root_cause
from .processes import HOST_TAG, Owner, this_host

UNFINISHED = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
              dg.DagsterRunStatus.CANCELING]


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "?"


@dataclass(frozen=True)
class Freed:
    """A run whose pool slots (and places in the pools' queues) were given back."""
    run_id: str
    reason: str

    def line(self) -> str:
        return f"run {self.run_id} {self.reason}: marked it failed and freed its pool slots"


def free_dead_runs(instance: dg.DagsterInstance, skip: str | None = None) -> list[Freed]:
    """Mark failed every unfinished run a threegen process on this host started and no longer runs,
    and free its slots; then free slots still held by runs that ended (or no longer exist) more than
    ``run_monitoring.free_slots_after_run_end_seconds`` ago, as the daemon does."""
    freed = []
    records = instance.get_run_records(dg.RunsFilter(statuses=UNFINISHED, tags={HOST_TAG: this_host()}))
    for record in records:
        run = record.dagster_run
        owner = Owner.from_tags(run.tags)
        if run.run_id == skip or owner is None or owner.state() != "dead":
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.is_finished:  # another process got there first
            continue
        reason = f"was left {current.status.value} by threegen process {owner.describe()}, which is gone (killed?)"
        instance.report_run_failed(current, f"Marked failed by threegen: this run {reason}; its pool slots "
                                            f"were freed so later runs can go on.")
        _free(instance, run.run_id)
        freed.append(Freed(run.run_id, reason))
    return freed + _free_ended(instance, skip)


def _free(instance: dg.DagsterInstance, run_id: str) -> None:
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def _grace_s(instance: dg.DagsterInstance) -> float | None:
    value = (instance.run_monitoring_settings or {}).get("free_slots_after_run_end_seconds")
    return None if value is None else float(value)


def _free_ended(instance: dg.DagsterInstance, skip: str | None) -> list[Freed]:
    grace, storage = _grace_s(instance), instance.event_log_storage
    if grace is None or not storage.supports_global_concurrency_limits:
        return []
    freed, now = [], time.time()
    for run_id in sorted(storage.get_concurrency_run_ids() - {skip}):
        record = instance.get_run_record_by_id(run_id)
        if record is None:
            reason = "no longer exists but held pool slots"
        elif record.dagster_run.is_finished and (record.end_time or now) + grace < now:
            reason = f"ended ({record.dagster_run.status.value}, {_when(record.end_time)}) but held pool slots"
        else:
            continue
        storage.free_concurrency_slots_for_run(run_id)
        freed.append(Freed(run_id, reason))
    return freed


@dataclass(frozen=True)
class Holder:
    run_id: str
    step_key: str
    summary: str  # job, partition, status, since when
    advice: str  # what it means for the waiting run, and how to free the slot


@dataclass(frozen=True)
class Wait:
    pool: str
    step_key: str
    limit: int | None
    holders: tuple[Holder, ...]
    queued_ahead: int

    def line(self) -> str:
        slots = "no limit" if self.limit is None else f"{self.limit} slot{'s' if self.limit != 1 else ''}"
        head = f"waiting for the {self.pool} pool ({slots}) to run {self.step_key}"
        if self.queued_ahead:
            head += f", {self.queued_ahead} step(s) of other runs queued ahead"
        if not self.holders:
            return head + ": no run holds it now; it is being handed on"
        return head + ": " + "; ".join(f"held by run {h.run_id} ({h.summary}): {h.advice}" for h in self.holders)


def _holder(instance: dg.DagsterInstance, run_id: str, step_key: str) -> Holder:
    record = instance.get_run_record_by_id(run_id)
    delete = f"`dagster run delete {run_id}` (same DAGSTER_HOME) frees it"
    if record is None:
        return Holder(run_id, step_key, "a run that no longer exists", f"stale; {delete}")
    run = record.dagster_run
    summary = (f"{run.job_name} {run.tags.get('dagster/partition', '')}".strip()
               + f", step {step_key}, {run.status.value} since {_when(record.start_time or record.create_timestamp.timestamp())}")
    if run.is_finished:
        grace = _grace_s(instance)
        when = f"within {grace:g} s of its end" if grace is not None else "never (run_monitoring.free_slots_after_run_end_seconds is unset)"
        return Holder(run_id, step_key, summary, f"it ended but still holds the slot; it is freed {when}, or now: {delete}")
    owner = Owner.from_tags(run.tags)
    state = owner.state() if owner else "unknown"
    if state == "alive":
        return Holder(run_id, step_key, summary + f", threegen {owner.describe()}",
                      "it is running; this run goes on when that step ends")
    if state == "dead":
        return Holder(run_id, step_key, summary + f", threegen {owner.describe()}",
                      "its process is gone; freeing its slot")
    where = f"threegen {owner.describe()}" if owner else "launched by the daemon, the UI or another tool"
    return Holder(run_id, step_key, summary + f", {where}",
                  f"if it is stuck, terminate it in the UI (Runs > {run_id[:8]} > Terminate) or {delete}")


def pool_waits(instance: dg.DagsterInstance, run_id: str) -> list[Wait]:
    """The pools where ``run_id`` has a step queued for a slot, and who holds those slots."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    waits = []
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        mine = [p for p in info.pending_steps if p.run_id == run_id and p.assigned_timestamp is None]
        if not mine:
            continue
        first = min(p.enqueued_timestamp for p in mine)
        ahead = sum(1 for p in info.pending_steps if p.run_id != run_id and p.assigned_timestamp is None
                    and p.enqueued_timestamp <= first)
        holders = tuple(_holder(instance, s.run_id, s.step_key) for s in info.claimed_slots if s.run_id != run_id)
        waits.append(Wait(pool, mine[0].step_key, info.limit, holders, ahead))
    return waits


@dataclass(frozen=True)
class StepFailure:
    step_key: str
    cause: str  # one line: Type: message

    def line(self) -> str:
        return f"{self.step_key}: {self.cause}"


def failures(events) -> list[StepFailure]:
    """Each failed step's root cause; the run's own failure if no step failed (e.g. a resource)."""
    found = [StepFailure(ev.step_key or "?", _cause(ev.event_specific_data.error, ev.message))
             for ev in events if ev.is_step_failure]
    if found:
        return found
    return [StepFailure("run", _cause(getattr(ev.event_specific_data, "error", None), ev.message))
            for ev in events if ev.is_run_failure]


def _cause(error, fallback: str | None) -> str:
    return root_cause(error) if error is not None else " ".join((fallback or "failed").split())


class PoolWatch(threading.Thread):
    """While run ``run_id`` executes in this process, free the slots of runs whose threegen process
    died, and say (through ``say``) what the run waits for: when that changes, and every
    ``repeat_s`` while it lasts. Its own instance, from ``ref``: nothing shared with the run."""

    def __init__(self, ref, run_id: str, say, interval_s: float = 2.0, repeat_s: float = 60.0) -> None:
        super().__init__(name=f"pool-watch-{run_id[:8]}", daemon=True)
        self.ref, self.run_id, self.say = ref, run_id, say
        self.interval_s, self.repeat_s = interval_s, repeat_s
        self.freed: list[Freed] = []
        self._done = threading.Event()

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)

    def run(self) -> None:
        try:
            instance = dg.DagsterInstance.from_ref(self.ref)
        except Exception as exc:  # the run itself will say what is wrong with the instance
            self.say(f"cannot watch the pools: {root_cause(exc)}")
            return
        with instance:
            self._watch(instance)

    def _watch(self, instance: dg.DagsterInstance) -> None:
        shown: list[str] = []
        shown_at = since = 0.0
        failed = ""
        while not self._done.wait(self.interval_s):
            try:
                for run in free_dead_runs(instance, skip=self.run_id):
                    self.freed.append(run)
                    self.say(run.line())
                lines = [wait.line() for wait in pool_waits(instance, self.run_id)]
            except Exception as exc:  # a failed look must not stop the watch, nor the run
                if root_cause(exc) != failed:
                    failed = root_cause(exc)
                    self.say(f"could not look at the pools: {failed}")
                continue
            failed = ""
            now = time.monotonic()
            if lines and not shown:
                since = now
            if lines and (lines != shown or now - shown_at >= self.repeat_s):
                waited = f" (waiting {now - since:.0f} s)" if now > since + 1 else ""
                for line in lines:
                    self.say(line + waited)
                shown_at = now
            elif shown and not lines:
                self.say(f"got the pool slot after {now - since:.0f} s; going on")
            shown = lines
