"""Jobs, the task-inbox sensor, the catalog refresh and the retention schedule."""


import shutil
import time
from dataclasses import asdict
from pathlib import Path

import dagster as dg
from pydantic import Field

from .assets import PIPELINE, generation_catalog, generations, validator_records
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
    max_per_tick: int = 20

    def folder(self) -> Path:
        return Path(self.path)


@dg.sensor(job=generate_job, minimum_interval_seconds=10, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Turns JSON task files dropped in the inbox into generations and runs")
def inbox_sensor(context: dg.SensorEvaluationContext, store: StoreResource, inbox: InboxResource):
    folder = inbox.folder()
    folder.mkdir(parents=True, exist_ok=True)
    ledger = store.ledger()
    requests, keys, rejected = [], [], 0
    seen: dict[str, str] = {}
    for path in sorted(folder.glob("*.json"))[: inbox.max_per_tick]:
        try:
            task = parse_task(path.read_bytes())
        except TaskError as exc:
            _move(path, folder / "rejected", reason=str(exc))
            context.log.warning(f"rejected {path.name}: {exc}")
            rejected += 1
            continue
        earlier = seen.get(task.id) or _run_for_task(context.instance, task.id)
        if earlier:
            _move(path, folder / "duplicate", reason=f"task {task.id!r} was already taken ({earlier}); not run again")
            context.log.warning(f"duplicate {path.name}: task {task.id!r} already taken ({earlier})")
            continue
        seen[task.id] = f"file {path.name}"
        entry, _ = ledger.add(task.prompt, task.seed, source="inbox", task_id=task.id)
        keys.append(entry.key)
        requests.append(dg.RunRequest(run_key=f"task:{task.id}", partition_key=entry.key,
                                      tags={"threegen/task_id": task.id, "threegen/source": "inbox"}))
        _move(path, folder / "accepted")
    if requests or rejected:
        context.log.info(f"inbox: {len(requests)} task(s) accepted, {rejected} rejected")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[generations.build_add_request(sorted(set(keys)))] if keys else [],
    )


def _run_for_task(instance: dg.DagsterInstance, task_id: str) -> str:
    """'run <id>' if a run for this task id exists already, else ''."""
    runs = instance.get_run_records(dg.RunsFilter(tags={"threegen/task_id": task_id}), limit=1)
    return f"run {runs[0].dagster_run.run_id}" if runs else ""


def _move(path: Path, into: Path, reason: str = "") -> None:
    into.mkdir(parents=True, exist_ok=True)
    target = into / path.name
    if target.exists():
        target = into / f"{path.stem}-{time.time_ns()}{path.suffix}"
    shutil.move(str(path), target)
    if reason:
        target.with_suffix(target.suffix + ".error.txt").write_text(reason + "\n")


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[generate_job],
                      request_job=catalog_job, default_status=dg.DefaultSensorStatus.RUNNING,
                      description="Refreshes the catalog after each successful generation")
def catalog_after_generation(context: dg.RunStatusSensorContext):
    return dg.RunRequest(run_key=f"catalog-after-{context.dagster_run.run_id}")


class RetentionConfig(dg.Config):
    max_age_hours: float = Field(168.0, ge=0, description="Remove generations older than this")
    keep_passed_hours: float = Field(720.0, ge=0, description="... or this, when their score passed")
    slim_after_hours: float = Field(48.0, ge=0, description="Then drop heavy intermediates, keep SPZ + score (0: never)")
    keep_versions: int = Field(3, ge=1, description="Newest versions kept per (generation, asset)")
    gc_grace_hours: float = Field(1.0, ge=0, description="Unreferenced blobs younger than this are left alone")
    dry_run: bool = False

    @classmethod
    def from_policy(cls, policy: RetentionPolicy, dry_run: bool = False) -> "RetentionConfig":
        return cls(**asdict(policy), dry_run=dry_run)

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(**self.model_dump(exclude={"dry_run"}))


@dg.op(description="Applies the retention policy (never to kept or held generations), then garbage-collects "
                   "blobs no version refers to")
def apply_retention(context: dg.OpExecutionContext, config: RetentionConfig, store: StoreResource) -> dg.Output[dict]:
    report = apply_retention_to(store.artifacts(), store.ledger(), config.policy(), dry_run=config.dry_run)
    if not config.dry_run:
        for key in report.removed:
            if context.instance.has_dynamic_partition(generations.name, key):
                context.instance.delete_dynamic_partition(generations.name, key)
    summary = report.summary()
    verb = "would free" if config.dry_run else "freed"
    context.log.info(f"retention: {verb} {report.freed_bytes:,} bytes: {len(report.removed)} generation(s) "
                     f"removed, {len(report.slimmed)} slimmed, {report.versions_dropped} old version(s), "
                     f"{report.blobs_deleted} blob(s); {len(report.protected)} protected by keep/hold")
    return dg.Output(summary | {"removed": report.removed, "slimmed": report.slimmed},
                     metadata=summary | {"removed": ", ".join(report.removed[:50]) or "none",
                                         "protected": ", ".join(report.protected[:50]) or "none"})


@dg.job(description="Retention cleanup and blob garbage collection", executor_def=dg.in_process_executor)
def cleanup():
    apply_retention()


def cleanup_schedule(policy: RetentionPolicy) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="daily_cleanup", job=cleanup, cron_schedule="0 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING,
        run_config=dg.RunConfig(ops={"apply_retention": RetentionConfig.from_policy(policy)}),
        description=f"Every day at 03:00: remove generations older than {policy.max_age_hours:g} h "
                    f"({policy.keep_passed_hours:g} h if passed), slim after {policy.slim_after_hours:g} h, "
                    f"keep {policy.keep_versions} versions, then collect unreferenced blobs",
    )
