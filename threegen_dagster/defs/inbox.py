"""Room ``inbox``: the sensor that turns task files dropped in ``THREEGEN_INBOX`` into generations and
runs of the ``generate`` job, and its resource. The folder's rules are in the pure ``inbox.py``."""


from pathlib import Path

import dagster as dg
from pydantic import Field

from ..inbox import ACCEPTED, DUPLICATE, REJECTED, EntryError, Inbox, InboxError, shown
from ..ledger import Ledger
from ..tasks import TaskError, parse_task
from .generation import generate_job, generations
from .resources import StoreResource, gpu_tagged

class InboxResource(dg.ConfigurableResource):
    path: str
    max_per_tick: int = Field(20, ge=1, description="Task files read per tick (entries stuck in place not counted)")

    def folder(self) -> Path:
        return Path(self.path)


TAG_TASK, TAG_FILE, TAG_FILE_ID = "threegen/task_id", "threegen/inbox_file", "threegen/inbox_file_id"


class InboxTickError(RuntimeError):
    """Entries the tick could not handle for a reason that is not theirs (store, instance): they stay in
    the inbox for the next tick; raised only once nothing else was left to do, so the tick shows failed."""


@dg.sensor(job=generate_job, minimum_interval_seconds=10, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Turns JSON task files dropped in the inbox into generations and runs")
def inbox_sensor(context: dg.SensorEvaluationContext, store: StoreResource, inbox: InboxResource):
    """A file is moved to accepted/ only on a tick after the one that requested its run, once that run
    exists: requesting and moving are never separable, because nothing is moved before the run exists.
    A crash anywhere only delays the move; re-requesting is safe (Dagster skips a run key this sensor
    already used). Each entry is handled on its own: a bad one is set aside, an error is logged."""
    ledger = store.ledger()
    requests, keys, errors = [], [], []
    counts = dict.fromkeys((ACCEPTED, REJECTED, DUPLICATE, "stuck"), 0)
    claimed: dict[str, str] = {}  # task id -> the file requesting it in this tick
    budget = inbox.max_per_tick
    with Inbox(inbox.folder()) as box:
        for name in box.names(2 * inbox.max_per_tick):  # up to max_per_tick stuck entries never block the rest
            if budget == 0:
                break
            try:
                outcome = _take(context, box, name, ledger, claimed)
            except Exception as exc:  # not the file's fault (store, instance): it stays for the next tick
                errors.append(f"{shown(name)}: {type(exc).__name__}: {exc}")
                context.log.error(f"inbox: {errors[-1]}; left in place, retried next tick")
                budget -= 1
                continue
            if isinstance(outcome, dg.RunRequest):
                requests.append(outcome)
                keys.append(outcome.partition_key)
            elif outcome:
                counts[outcome] += 1
            if outcome != "stuck":
                budget -= 1
    if requests or any(counts.values()):
        context.log.info(f"inbox: {len(requests)} run(s) requested, {counts[ACCEPTED]} file(s) accepted, "
                         f"{counts[REJECTED]} rejected, {counts[DUPLICATE]} duplicate, {counts['stuck']} stuck")
    if errors and not requests:
        raise InboxTickError(f"{len(errors)} inbox entr{'y' if len(errors) == 1 else 'ies'} left in place, "
                             f"retried next tick: " + "; ".join(errors[:5]))
    return dg.SensorResult(
        run_requests=gpu_tagged(requests),
        dynamic_partitions_requests=[generations.build_add_request(sorted(set(keys)))] if keys else [],
    )


def _take(context: dg.SensorEvaluationContext, box: Inbox, name: str, ledger: Ledger, claimed: dict[str, str]):
    """One entry: a RunRequest, or what became of it (accepted, rejected, duplicate, stuck; None: gone)."""
    try:
        entry = box.read(name)
        if entry is None:
            return None  # removed since the listing
        task = parse_task(entry.data)
    except (EntryError, TaskError) as exc:
        return _aside(context, box, name, REJECTED, str(exc))
    ours = _run_with(context.instance, {TAG_TASK: task.id, TAG_FILE_ID: entry.file_id})
    if ours is not None and ours.status != dg.DagsterRunStatus.NOT_STARTED:
        return _aside(context, box, name, ACCEPTED, note=f"run {ours.run_id}")
    # a NOT_STARTED run of ours: created, then the daemon stopped before launching it; requesting its
    # run key again makes the daemon launch that run
    other = None if ours is not None else _run_with(context.instance, {TAG_TASK: task.id})
    earlier = claimed.get(task.id) or (f"run {other.run_id}" if other is not None else "")
    if earlier:
        return _aside(context, box, name, DUPLICATE, f"task {task.id!r} was already taken ({earlier}); not run again")
    claimed[task.id] = f"file {name}"
    generation, _ = ledger.add(task.prompt, task.seed, source="inbox", task_id=task.id)
    return dg.RunRequest(run_key=f"task:{task.id}", partition_key=generation.key,
                         tags={TAG_TASK: task.id, "threegen/source": "inbox", TAG_FILE: name,
                               TAG_FILE_ID: entry.file_id})


def _run_with(instance: dg.DagsterInstance, tags: dict[str, str]) -> dg.DagsterRun | None:
    records = instance.get_run_records(dg.RunsFilter(tags=tags), limit=1)
    return records[0].dagster_run if records else None


def _aside(context: dg.SensorEvaluationContext, box: Inbox, name: str, into: str, reason: str = "",
           note: str = "") -> str:
    try:
        moved = box.set_aside(name, into, reason)
    except InboxError as exc:
        context.log.error(f"inbox: {shown(name)} stuck ({reason or note}): {exc.strerror}; it stays in the inbox")
        return "stuck"
    log = context.log.info if into == ACCEPTED else context.log.warning
    log(f"inbox: {into} {shown(name)}{f' as {shown(moved)}' if moved != name else ''}: {reason or note}")
    return into
