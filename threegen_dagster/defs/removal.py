"""Room ``removal``: the ``remove_generations`` job (typed config: the keys), and ``remove_everywhere``,
which it and ``threegen remove`` share: the whole request is checked (the store's rules in the pure
``removal.py``, plus no run of the key in progress), then the versions, ledger entries, blobs only
they used, and the partitions go."""

import dagster as dg
from pydantic import Field

from ..artifacts import ArtifactStore
from ..ledger import Ledger
from ..removal import Removal, RemovalError, check_removable, remove_generations
from .generation import generations
from .requests import run_in_progress
from .resources import StoreResource

MAX_KEYS = 500


def remove_everywhere(instance: dg.DagsterInstance, artifacts: ArtifactStore, ledger: Ledger,
                      keys: list[str]) -> Removal:
    """Remove ``keys`` completely (a partition whose name is not a key: the partition); RemovalError,
    with nothing removed, if any of them cannot be."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        raise RemovalError("nothing removed: give at least one generation key")
    if len(keys) > MAX_KEYS:
        raise RemovalError(f"nothing removed: {len(keys)} keys; the limit is {MAX_KEYS} a request")
    partitions = set(instance.get_dynamic_partitions(generations.name))
    problems = check_removable(artifacts, ledger, keys, partitions)
    for key in keys:
        running = run_in_progress(instance, key)
        if running is not None:
            problems.append(f"{key} has a run in progress ({running.run_id}): wait for it or terminate it first")
    if problems:
        raise RemovalError("nothing removed: " + "; ".join(problems))
    report = remove_generations(artifacts, ledger, keys)
    for key in keys:
        if key in partitions:
            instance.delete_dynamic_partition(generations.name, key)
    report.removed = keys
    return report


class RemoveConfig(dg.Config):
    keys: list[str] = Field(description="Generation keys to remove completely: partition, ledger entry, versions "
                                        "and the blobs no other generation uses (a junk partition's name too)")


@dg.op(description="Removes generations completely (partition, ledger entry, versions, blobs only they use)")
def remove_keys(context: dg.OpExecutionContext, config: RemoveConfig, store: StoreResource) -> dg.Output[dict]:
    try:
        report = remove_everywhere(context.instance, store.artifacts(), store.ledger(), config.keys)
    except RemovalError as exc:
        raise dg.Failure(description=str(exc)) from None
    summary = report.summary()
    context.log.info(f"removed {len(report.removed)} generation(s): {', '.join(report.removed)}; "
                     f"{report.versions} version(s), {report.blobs_deleted} blob(s), {summary['freed_bytes']:,} bytes "
                     f"freed; {report.blobs_shared} blob(s) shared with other generations kept")
    for note in report.notes:
        context.log.warning(f"removal: {note}")
    return dg.Output(summary, metadata={**{k: v for k, v in summary.items() if k not in ("removed", "notes")},
                                        "removed": ", ".join(report.removed),
                                        "notes": "\n".join(report.notes) or "none"})


@dg.job(name="remove_generations", description="Remove generations completely: partition, ledger entry, versions "
                                                       "and their blobs",
        executor_def=dg.in_process_executor)
def remove_generations_job():
    remove_keys()
