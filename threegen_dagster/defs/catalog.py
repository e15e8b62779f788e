"""Room ``catalog``: the unpartitioned tables of what the store holds (generations; SN17's validators
and submissions), the job that refreshes them, and the sensors
that refresh the generation catalog after every run that wrote a generation's assets, whoever
launched it (the ``generate`` job, the UI's asset runs, ``dg launch``, a sensor's run).

The generation catalog is the catalog index in the store (``catalog_index.py``): a refresh recomputes
the generations the run touched and those the change journal names, so its cost follows the run, not
the store. Two run-status sensors (success and failure: a blocking score check that fails fails the
run after the score is stored) watch every job of this code location and ask the run's own event log
which generation partitions it materialized; that query is bounded by the run, and each tick only
sees the runs that finished since the last one. (An automation condition on the catalog would be
evaluated against every partition of its dynamic upstream on every tick, and could not say which
generations changed.)"""


import time

import dagster as dg
from pydantic import Field

from ..catalog import markdown_table
from ..catalog_index import CatalogIndex
from .generation import validation_score
from ..sn17.queue import STATES, TaskQueue
from ..sn17.validators import ValidatorBook, records_table
from .resources import StoreResource, ValidatorPolicyResource

CATALOG = dg.AssetKey("generation_catalog")
INLINE_TAG = "threegen/catalog"  # "inline": the launcher refreshed the catalog itself (threegen generate)
MAX_KEYS = 1000  # a run that touched more generations than this is followed by a full reconcile instead


class CatalogRefresh(dg.Config):
    keys: list[str] = Field(default_factory=list, description="Generations to recompute, besides those the change "
                            "journal names and those materialized earlier in this run")
    full: bool = Field(False, description="Recompute every generation from the store (reads the whole store)")


def touched(instance: dg.DagsterInstance, run_id: str) -> tuple[set[str], bool]:
    """The generation partitions run ``run_id`` materialized, and whether it materialized the catalog;
    from that run's own event records (paged), so the cost is the run's, not the history's."""
    keys, catalog, cursor = set(), False, None
    while True:
        page = instance.get_records_for_run(run_id, cursor=cursor, limit=1000,
                                            of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        for record in page.records:
            event = record.event_log_entry.dagster_event
            if event.asset_key == CATALOG:
                catalog = True
            elif event.partition:
                keys.add(event.partition)
        if not page.has_more:
            return keys, catalog
        cursor = page.cursor


@dg.asset(group_name="catalog", kinds={"json"}, deps=[validation_score], io_manager_key="artifacts")
def generation_catalog(context: dg.AssetExecutionContext, config: CatalogRefresh,
                       store: StoreResource) -> dg.MaterializeResult:
    """Every generation in the store: prompt, seed, status, per-stage seconds, sizes, gaussians, score
    (``threegen catalog``; kept in the store's catalog index). A refresh recomputes the generations
    that changed; ``full: true`` rebuilds every row."""
    index = CatalogIndex(store.artifacts(), store.ledger())
    done = index.rebuild() if config.full else index.refresh({*config.keys, *touched(context.instance,
                                                                                        context.run.run_id)[0]})
    statuses = [row.get("status", "") for row in done.rows]
    return dg.MaterializeResult(metadata={
        "refreshed": len(done.rows), "dropped": len(done.dropped), "full_rebuild": config.full,
        "complete": statuses.count("complete"), "store": index.store.location,
        "unreadable_records": "\n".join(done.unreadable[:50]) or "none",  # skipped, named
        "rows": dg.MetadataValue.md(markdown_table(done.rows[:25])),
    })


@dg.asset(group_name="catalog", io_manager_key="artifacts", kinds={"pandas"})
def sn17_submissions(context: dg.AssetExecutionContext, store: StoreResource) -> dg.Output:
    """Every SN17 task this miner pulled: its validator, state, the decision, score and feedback (a record
    that cannot be read is left out, with a warning)."""
    columns = ["task_id", "type", "validator_uid", "state", "decision", "score", "accepted", "reason"]
    queue = TaskQueue(store.store())
    rows = [{c: e.get(c) for c in columns} | {"fidelity": (e.get("feedback") or {}).get("task_fidelity_score")}
            for e in queue.all()]
    for note in queue.notes:
        context.log.warning(note)
    import pandas as pd  # here, not at import: a generation's run never needs it

    frame = pd.DataFrame(rows, columns=[*columns, "fidelity"])
    states = frame["state"].value_counts().to_dict() if len(frame) else {}
    return dg.Output(frame, metadata={
        "tasks": len(frame), **{state: int(states.get(state, 0)) for state in STATES},
        "accepted": int(frame["accepted"].fillna(False).astype(bool).sum()) if len(frame) else 0,
        "table": dg.MetadataValue.md(markdown_table(frame, columns=(
            "task_id", "validator_uid", "state", "score", "accepted", "fidelity", "decision", "reason")))})


@dg.asset(group_name="catalog", io_manager_key="artifacts", kinds={"pandas"})
def validator_records(store: StoreResource, validators: ValidatorPolicyResource) -> dg.Output:
    """SN17 validators as this miner has seen them: pulls, submissions, acceptance, scores, response
    times, cooldowns and blacklist state (manual or automatic, with the reason)."""
    rows = records_table(ValidatorBook(store.store()), validators.policy(), time.time())
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["uid", "hotkey"])
    return dg.Output(frame, metadata={
        "validators": len(frame), "blacklisted": int((frame.get("blacklisted", pd.Series(dtype=str)) != "").sum()),
        "table": dg.MetadataValue.md(markdown_table(frame, columns=(
            "uid", "pulls", "tasks", "submissions", "accepted", "empty", "success_rate", "mean_response_s",
            "mean_score", "cooldown_s", "blacklisted")) if rows else "(no validator records yet)"),
    })


catalog_job = dg.define_asset_job("refresh_catalog", selection=dg.AssetSelection.assets(
    generation_catalog, validator_records, sn17_submissions),
                                  executor_def=dg.in_process_executor)


def _refresh_after(context: dg.RunStatusSensorContext) -> dg.RunRequest | dg.SkipReason:
    run = context.dagster_run
    if run.tags.get(INLINE_TAG) == "inline":
        return dg.SkipReason(f"run {run.run_id} refreshed the catalog itself")
    keys, catalog = touched(context.instance, run.run_id)
    if catalog or not keys:
        return dg.SkipReason(f"run {run.run_id} " + ("refreshed the catalog itself" if catalog
                                                      else "materialized no generation"))
    config = {"keys": sorted(keys)} if len(keys) <= MAX_KEYS else {}  # the journal names them all anyway
    return dg.RunRequest(run_key=f"catalog-after-{run.run_id}", asset_selection=[CATALOG],
                         run_config={"ops": {"generation_catalog": {"config": config}}},
                         tags={"threegen/after_run": run.run_id})


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, request_job=catalog_job,
                      default_status=dg.DefaultSensorStatus.RUNNING,
                      description="Refreshes the catalog's rows of the generations a successful run materialized")
def catalog_after_generation(context: dg.RunStatusSensorContext):
    return _refresh_after(context)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.FAILURE, request_job=catalog_job,
                      default_status=dg.DefaultSensorStatus.RUNNING,
                      description="Refreshes the catalog's rows of the generations a failed run materialized "
                                  "(a score below the threshold fails its run)")
def catalog_after_failed_run(context: dg.RunStatusSensorContext):
    return _refresh_after(context)


SENSORS = [catalog_after_generation, catalog_after_failed_run]
