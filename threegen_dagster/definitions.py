"""``threegen_dagster.definitions:defs``: the index of the Dagster wiring. Each area has its room in
``defs/`` (its assets, checks, jobs, sensors, schedules); this file only lists them and builds the
resources from the environment (``Settings.from_env``), so the whole graph reads on one screen.
``dg check defs`` and ``dg list defs`` load it (``[tool.dg]`` in pyproject.toml)."""

from __future__ import annotations

import dagster as dg

from .defs import catalog, generation, inbox, removal, requests, retention, sn17
from .defs import rounds  # SN17 as it runs today: rounds, competition profiles
from .defs import rounds_publish  # a round's outputs on the CDN, its commitment and its report
from .defs import rounds_render  # every passed output of a round drawn as the judges draw it
from .defs import search  # the search_generations job (its config: a search)
from .defs import workers  # the gpu_workers asset: the pool's status
from .defs import audit  # the self-audit of a batch API server and the duel estimate, per round
from .defs import dagster_warnings  # noqa: F401  (Dagster's warnings about its own internals)
from .defs.io_manager import ArtifactIOManager
from .defs.resources import (
    ScoreResource,
    SN17Resource,
    SplatResource,
    StageResource,
    StoreResource,
    ValidatorPolicyResource,
)
from .settings import Settings


def build_definitions(settings: Settings) -> dg.Definitions:
    store = StoreResource.from_settings(settings)
    return dg.Definitions(
        assets=[*generation.PIPELINE, catalog.generation_catalog, catalog.validator_records, catalog.sn17_submissions,
                *rounds.ASSETS, *rounds_publish.ASSETS, *rounds_render.ASSETS, *audit.ASSETS, workers.gpu_workers],
        jobs=[generation.generate_job, catalog.catalog_job, retention.cleanup, sn17.submit, *rounds.JOBS,
              *rounds_publish.JOBS, *audit.JOBS, requests.request_generations, removal.remove_generations_job, search.search_job],
        sensors=[inbox.inbox_sensor, *catalog.SENSORS, sn17.sn17_task_sensor, rounds.sn17_round_sensor,
                 *rounds_publish.SENSORS, sn17.sn17_submission_sensor, requests.start_requested_generations,
                 requests.remove_junk_partitions],
        schedules=[retention.cleanup_schedule(settings.retention)],
        # a generation is a chain of heavy steps: one process per run keeps imports and models warm;
        # scale out across runs (queued runs, run workers), not across one chain's steps
        executor=dg.in_process_executor,
        resources={
            "store": store,
            "artifacts": ArtifactIOManager(store=store),
            "inbox": inbox.InboxResource(path=str(settings.inbox)),
            "retention": retention.RetentionResource.from_policy(settings.retention),  # the schedule's and by hand
            "validators": ValidatorPolicyResource.from_policy(settings.validators),
            "sn17": SN17Resource(**settings.sn17),
            "round_state": rounds.RoundsResource.from_settings(settings),  # where the round state is read
            "comp2": rounds.Comp2Resource.from_settings(settings),  # what writes comp 2 modules (key as an EnvVar)
            "cdn": rounds_publish.CdnResource.from_settings(settings),  # where a round's outputs are published
            "commitment": rounds_publish.CommitmentResource.from_settings(settings),  # what is committed, on what chain
            "judge_render": rounds_publish.JudgeRenderResource(chromium=settings.chromium),
            "audit": audit.AuditResource(server_url=settings.audit_url, embed_model=settings.duel_embed_model),
            "duel": audit.DuelResource(  # the key as an EnvVar: Dagster resolves it, never shows it
                embed_model=settings.duel_embed_model, vlm_url=settings.duel_vlm.base_url if settings.duel_vlm else "",
                vlm_model=settings.duel_vlm.model if settings.duel_vlm else "",
                vlm_key=dg.EnvVar("THREEGEN_DUEL_VLM_KEY") if settings.duel_vlm and settings.duel_vlm.api_key else ""),
            # the model stages, each under its stage's name (backends/stages.py)
            **{stage: StageResource.from_settings(settings, stage)
               for stage in ("text_to_image", "background", "image_to_mesh", "refine")},
            "score": ScoreResource.from_settings(settings, "score", threshold=settings.score_threshold),
            "splats": SplatResource(gaussians=settings.gaussians, frame=settings.frame),
        },
    )


defs = build_definitions(Settings.from_env())
