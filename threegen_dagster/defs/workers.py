"""Room ``workers``: the ``gpu_workers`` asset, every GPU worker of the pool (THREEGEN_WORKERS) as the
deployment sees it when it is materialized: URL, up or down, busy, queue, calls served, models loaded,
card, last error (``workers.py``: ``WorkerPool.status``, what `threegen workers` prints). Materialize
it from the UI to look; which worker ran each stage is in that stage's own metadata (``worker``)."""

import dagster as dg

from ..workers import WorkerPool
from .resources import StageResource

COLUMNS = [("url", "string"), ("up", "bool"), ("busy", "bool"), ("queue", "int"), ("served", "int"),
           ("models", "string"), ("card", "string"), ("last_error", "string")]


@dg.asset(group_name="catalog", kinds={"table"},
          description="Every GPU worker of the pool: up or down, busy, queue, calls served, models, card, last error")
def gpu_workers(context: dg.AssetExecutionContext, text_to_image: StageResource) -> dg.MaterializeResult:
    urls = text_to_image.workers  # every stage resource holds the same pool (Settings.worker_urls)
    rows = WorkerPool(urls).status() if urls else []
    for row in rows:
        if not row["up"]:
            context.log.warning(f"gpu_workers: {row['last_error']}")
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in COLUMNS])
    records = [dg.TableRecord({**r, "models": ", ".join(r["models"]), "last_error": r["last_error"][:500]})
               for r in rows]
    return dg.MaterializeResult(metadata={
        "workers": len(rows), "up": sum(r["up"] for r in rows), "busy": sum(r["busy"] for r in rows),
        "status": dg.MetadataValue.table(records, schema=schema),
        "note": "no workers configured: the model stages run in each run's process (THREEGEN_WORKERS)" if not urls
        else "materialize again to refresh"})
