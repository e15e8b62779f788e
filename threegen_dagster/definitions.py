"""``threegen_dagster.definitions:defs``: the one place that wires assets, checks, jobs,
sensors, schedules and resources, picked from the environment (``Settings.from_env``)."""

from __future__ import annotations

import dagster as dg

from .assets import PIPELINE, generation_catalog, validator_records
from .io_manager import ArtifactIOManager
from .jobs import (
    InboxResource,
    RetentionResource,
    catalog_after_generation,
    catalog_job,
    cleanup,
    cleanup_schedule,
    generate_job,
    inbox_sensor,
)
from .resources import (
    BackgroundResource,
    ImageToMeshResource,
    RefineResource,
    ScoreResource,
    SN17Resource,
    SplatResource,
    StoreResource,
    TextToImageResource,
    ValidatorPolicyResource,
)
from .settings import Settings
from .sn17_jobs import sn17_submission_sensor, sn17_submissions, sn17_task_sensor, submit


def build_definitions(settings: Settings) -> dg.Definitions:
    store = StoreResource.from_settings(settings)
    score = ScoreResource.from_settings(settings, threshold=settings.score_threshold)
    return dg.Definitions(
        assets=[*PIPELINE, generation_catalog, validator_records, sn17_submissions],
        jobs=[generate_job, catalog_job, cleanup, submit],
        sensors=[inbox_sensor, catalog_after_generation, sn17_task_sensor, sn17_submission_sensor],
        schedules=[cleanup_schedule(settings.retention)],
        # a generation is a chain of heavy steps: one process per run keeps imports and models warm;
        # scale out across runs (queued runs, run workers), not across one chain's steps
        executor=dg.in_process_executor,
        resources={
            "store": store,
            "artifacts": ArtifactIOManager(store=store),
            "inbox": InboxResource(path=str(settings.inbox)),
            "retention": RetentionResource.from_policy(settings.retention),  # the schedule's and a manual run's
            "validators": ValidatorPolicyResource.from_policy(settings.validators),
            "sn17": SN17Resource(**settings.sn17),
            "text_to_image": TextToImageResource.from_settings(settings),
            "background": BackgroundResource.from_settings(settings),
            "image_to_mesh": ImageToMeshResource.from_settings(settings),
            "refine": RefineResource.from_settings(settings),
            "splats": SplatResource(gaussians=settings.gaussians, frame=settings.frame),
            "score": score,
            "scoring": score,  # sn17_jobs.py's key for the same resource, until it moves into its room
        },
    )


defs = build_definitions(Settings.from_env())
