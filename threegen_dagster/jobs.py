"""Jobs, the task-inbox sensor, the catalog refresh and the retention schedule."""


import shutil
import time
from pathlib import Path

import dagster as dg

from .assets import PIPELINE, generation_catalog, generations
from .resources import StoreResource
from .retention import generation_bytes, plan_retention, remove_generation
from .tasks import TaskError, parse_task

generate_job = dg.define_asset_job(
    "generate", selection=dg.AssetSelection.assets(*PIPELINE),
    executor_def=dg.in_process_executor,  # a generation is a chain: one process keeps models and imports warm
    description="Every stage of one generation (partition = prompt x seed)",
)
catalog_job = dg.define_asset_job("refresh_catalog", selection=[generation_catalog],
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
    max_age_hours: float = 168.0
    dry_run: bool = False


@dg.op(description="Removes generations older than max_age_hours (files, ledger entries, partitions)")
def apply_retention(context: dg.OpExecutionContext, config: RetentionConfig, store: StoreResource) -> dg.Output[dict]:
    files, ledger = store.store(), store.ledger()
    plan = plan_retention(ledger.all(), time.time(), config.max_age_hours)
    freed = 0
    for entry in plan.expired:
        if config.dry_run:
            freed += generation_bytes(files, entry.key)
            continue
        freed += remove_generation(files, ledger, entry.key)
        if context.instance.has_dynamic_partition(generations.name, entry.key):
            context.instance.delete_dynamic_partition(generations.name, entry.key)
    summary = {"dry_run": config.dry_run, "removed": len(plan.expired), "kept_marked": len(plan.kept),
               "younger": plan.young, "freed_bytes": freed, "keys": [e.key for e in plan.expired]}
    verb = "would remove" if config.dry_run else "removed"
    context.log.info(f"retention: {verb} {len(plan.expired)} generation(s), {freed:,} bytes; "
                     f"{len(plan.kept)} kept by mark, {plan.young} younger than {config.max_age_hours} h")
    return dg.Output(summary, metadata={k: v for k, v in summary.items() if k != "keys"}
                     | {"keys": ", ".join(summary["keys"][:50]) or "none"})


@dg.job(description="Retention cleanup", executor_def=dg.in_process_executor)
def cleanup():
    apply_retention()


def cleanup_schedule(max_age_hours: float) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="daily_cleanup", job=cleanup, cron_schedule="0 3 * * *", default_status=dg.DefaultScheduleStatus.RUNNING,
        run_config=dg.RunConfig(ops={"apply_retention": RetentionConfig(max_age_hours=max_age_hours)}),
        description=f"Every day at 03:00: remove generations older than {max_age_hours:g} h (unless kept)",
    )
