"""Room ``retention``: the ``cleanup`` job (retention policy, then blob garbage collection), its daily
schedule, its run config and the resource holding the environment's policy. The policy itself is
the pure ``retention.py``."""


from dataclasses import asdict, fields, replace
from typing import Optional

import dagster as dg
from pydantic import Field

from ..retention import RetentionPolicy
from ..retention import apply_retention as apply_retention_to
from .generation import generations
from .resources import StoreResource


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
