"""Jobs, the task-inbox sensor, the catalog refresh and the retention schedule."""


from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from .assets import PIPELINE, generation_catalog, generations, validator_records
from .inbox import ACCEPTED, DUPLICATE, REJECTED, EntryError, Inbox, InboxError, shown
from .ledger import Ledger
from .resources import StoreResource
from .retention import RetentionPolicy
from .retention import apply_retention as apply_retention_to
from .tasks import TaskError, parse_task

generate_job = dg.define_asset_job(
    "generate", selection=dg.AssetSelection.assets(*PIPELINE),
    executor_def=dg.in_process_executor,  # a generation is a chain: one process keeps models and imports warm
    description="Every stage of one generation (partition = prompt x seed)",
)
catalog_job = dg.define_asset_job("refresh_catalog", selection=dg.AssetSelection.assets(
    generation_catalog, validator_records, "sn17_submissions"),
                                  executor_def=dg.in_process_executor)


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
        run_requests=requests,
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


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[generate_job],
                      request_job=catalog_job, default_status=dg.DefaultSensorStatus.RUNNING,
                      description="Refreshes the catalog after each successful generation")
def catalog_after_generation(context: dg.RunStatusSensorContext):
    return dg.RunRequest(run_key=f"catalog-after-{context.dagster_run.run_id}")


class RetentionResource(dg.ConfigurableResource):
    """The retention policy from the environment (``Settings.retention``, THREEGEN_RETENTION_HOURS, ...):
    the schedule and a run launched by hand both use it, so there is one policy and one source of defaults."""
    max_age_hours: float
    keep_passed_hours: float
    slim_after_hours: float
    keep_versions: int
    gc_grace_hours: float

    @classmethod
    def from_policy(cls, policy: RetentionPolicy) -> "RetentionResource":
        return cls(**asdict(policy))

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(**{f.name: getattr(self, f.name) for f in fields(RetentionPolicy)})


class RetentionConfig(dg.Config):
    """Overrides for one run; a field left empty keeps the environment's policy (the retention resource)."""
    max_age_hours: Optional[float] = Field(None, ge=0, description="Remove generations older than this "
                                           "(default: THREEGEN_RETENTION_HOURS)")
    keep_passed_hours: Optional[float] = Field(None, ge=0, description="... or this, when their score passed "
                                               "(default: THREEGEN_KEEP_PASSED_HOURS)")
    slim_after_hours: Optional[float] = Field(None, ge=0, description="Then drop heavy intermediates, keep SPZ + "
                                              "score (0: never; default: THREEGEN_SLIM_HOURS)")
    keep_versions: Optional[int] = Field(None, ge=1, description="Newest versions kept per (generation, asset) "
                                         "(default: THREEGEN_KEEP_VERSIONS)")
    gc_grace_hours: Optional[float] = Field(None, ge=0, description="Unreferenced blobs younger than this are "
                                            "left alone")
    dry_run: bool = False

    def policy(self, base: RetentionPolicy) -> RetentionPolicy:
        overrides = self.model_dump(exclude={"dry_run"})
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dg.op(description="Applies the retention policy (never to kept or held generations), then garbage-collects "
                   "blobs no version refers to")
def apply_retention(context: dg.OpExecutionContext, config: RetentionConfig, store: StoreResource,
                    retention: RetentionResource) -> dg.Output[dict]:
    policy = config.policy(retention.policy())
    context.log.info(f"retention policy: {policy}")
    report = apply_retention_to(store.artifacts(), store.ledger(), policy, dry_run=config.dry_run)
    if not config.dry_run:
        for key in report.removed:
            if context.instance.has_dynamic_partition(generations.name, key):
                context.instance.delete_dynamic_partition(generations.name, key)
    summary = report.summary()
    verb = "would free" if config.dry_run else "freed"
    context.log.info(f"retention: {verb} {report.freed_bytes:,} bytes: {len(report.removed)} generation(s) "
                     f"removed, {len(report.slimmed)} slimmed, {report.versions_dropped} old version(s), "
                     f"{report.blobs_deleted} blob(s); {len(report.protected)} protected by keep/hold")
    for line in report.warnings:  # bad records skipped (the rest was cleaned up), a collection not run
        context.log.warning(f"retention: {line}")
    return dg.Output(summary | {"removed": report.removed, "slimmed": report.slimmed, "warnings": report.warnings},
                     metadata=summary | {"removed": ", ".join(report.removed[:50]) or "none",
                                         "protected": ", ".join(report.protected[:50]) or "none",
                                         "warnings": "\n".join(report.warnings[:50]) or "none"})


@dg.job(description="Retention cleanup and blob garbage collection", executor_def=dg.in_process_executor)
def cleanup():
    apply_retention()


def cleanup_schedule(policy: RetentionPolicy) -> dg.ScheduleDefinition:
    """The daily run; it carries no config, so it applies the retention resource's policy (the same
    ``policy`` this description is written from)."""
    return dg.ScheduleDefinition(
        name="daily_cleanup", job=cleanup, cron_schedule="0 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Every day at 03:00: remove generations older than {policy.max_age_hours:g} h "
                    f"({policy.keep_passed_hours:g} h if passed), slim after {policy.slim_after_hours:g} h, "
                    f"keep {policy.keep_versions} versions, then collect unreferenced blobs",
    )
