"""Room ``catalog``: the unpartitioned tables of what the store holds (generations; SN17's validators
and submissions, whose assets live in the ``sn17`` room), the job that refreshes them and the sensor
that runs it after every successful generation."""


import dagster as dg
import pandas as pd

from ..catalog import build_catalog, markdown_table, statuses
from .generation import generate_job
from .resources import StoreResource
from .sn17 import sn17_submissions, validator_records


@dg.asset(group_name="catalog", io_manager_key="artifacts", kinds={"pandas"})
def generation_catalog(store: StoreResource) -> dg.Output[pd.DataFrame]:
    """Every generation in the store: prompt, seed, status, per-stage seconds, sizes, gaussians, score."""
    artifacts = store.artifacts()
    snapshot = artifacts.snapshot()  # one read of every version and blob serves both views
    frame = build_catalog(artifacts, store.ledger(), snapshot)
    totals = artifacts.stats(statuses(frame), snapshot)
    return dg.Output(frame, metadata={
        "generations": len(frame),
        "complete": int((frame["status"] == "complete").sum()) if len(frame) else 0,
        "store": totals["store"], "versions": totals["versions"], "blobs": totals["blobs"],
        "stored_bytes": totals["stored_bytes"], "logical_bytes": totals["logical_bytes"],
        "dedup_ratio": totals["dedup_ratio"] or 0.0,
        "unreadable_records": "\n".join(totals["unreadable_records"][:50]) or "none",  # skipped, named
        "preview": dg.MetadataValue.md(markdown_table(frame.head(25))),
    })


catalog_job = dg.define_asset_job("refresh_catalog", selection=dg.AssetSelection.assets(
    generation_catalog, validator_records, sn17_submissions),
                                  executor_def=dg.in_process_executor)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, monitored_jobs=[generate_job],
                      request_job=catalog_job, default_status=dg.DefaultSensorStatus.RUNNING,
                      description="Refreshes the catalog after each successful generation")
def catalog_after_generation(context: dg.RunStatusSensorContext):
    return dg.RunRequest(run_key=f"catalog-after-{context.dagster_run.run_id}")
