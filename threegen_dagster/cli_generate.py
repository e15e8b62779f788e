"""``threegen generate``: register (prompt, seed), run every stage in this process, report.

The run executes inside the CLI (``execute_in_process``), where no daemon watches it, so this
command looks after runs itself: before it starts it marks runs that a killed threegen left
behind as failed and frees their pool slots; while its own run waits for a pool ("gpu"), a
watch thread says which run holds the slot and what to do, and frees the slot if that run's
process dies (``runs.py``). A failed step is reported by its root cause in one line. A
registration whose run could not even be created is undone, so the ledger never names a
generation no run could use.
"""

from __future__ import annotations

import gc
import json
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from .artifacts import ArtifactStore
from .catalog import STAGES
from .failures import InstanceUnavailable, root_cause
from .keys import Prompt
from .ledger import Generation, Ledger
from .settings import Settings
from .stores import OpenedStore

QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def note(line: str) -> None:
    """Progress and diagnostics for a person: stderr, so --json's stdout stays one document."""
    print(f"threegen: {line}", file=sys.stderr, flush=True)


def register(prompt: Prompt, seed: int, source: str, settings: Settings, instance) -> tuple[Generation, bool]:
    """Add (prompt, seed) to the ledger and the instance's `generations` partitions."""
    entry, new, _ = _register(prompt, seed, source, settings, instance)
    return entry, new


def _register(prompt: Prompt, seed: int, source: str, settings: Settings, instance) -> tuple[Generation, bool, bool]:
    """... and whether the partition was added here."""
    return register_in(OpenedStore.from_settings(settings).ledger(), prompt, seed, source, instance)


def register_in(ledger: Ledger, prompt: Prompt, seed: int, source: str, instance) -> tuple[Generation, bool, bool]:
    """Add (prompt, seed) to ``ledger`` and the instance's `generations` partitions: the entry, whether it
    is new, whether the partition was added here. An instance that refuses the partition keeps no new
    ledger entry either: nothing is registered that no run could use."""
    entry, new = ledger.add(prompt, seed, source=source)
    try:
        added = not instance.has_dynamic_partition("generations", entry.key)
        if added:
            instance.add_dynamic_partitions("generations", [entry.key])
    except Exception as exc:
        if new:
            ledger.remove(entry.key)
        raise InstanceUnavailable(f"cannot register {entry.key} in the Dagster instance: {root_cause(exc)}"
                                  + ("; its new ledger entry was removed again" if new else "")) from exc
    return entry, new, added


def _unregister(entry: Generation, partition_added: bool, settings: Settings, instance) -> None:
    """Undo a registration whose run could not be created (best effort on a broken instance)."""
    OpenedStore.from_settings(settings).ledger().remove(entry.key)
    if partition_added:
        try:
            instance.delete_dynamic_partition("generations", entry.key)
        except Exception:  # the instance is what failed; a partition with no ledger entry is refused when run
            pass


def _run_exists(instance, run_id: str) -> bool:
    try:
        return instance.get_run_by_id(run_id) is not None
    except Exception:  # unreadable: it was not created
        return False


def _report(artifacts: ArtifactStore, key: str) -> dict:
    stages = {}
    for stage in STAGES:
        manifest = artifacts.latest(key, stage)
        if manifest is not None:
            stages[stage] = {"file": artifacts.store.uri(manifest.blob), "bytes": manifest.bytes,
                             "version": manifest.version, "seconds": manifest.metadata.get("seconds")}
    score = None
    if "validation_score" in stages:
        score = json.loads(artifacts.load(key, "validation_score")[1])
    return {"stages": stages, "score": score}


def _process_age_s() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


def _refresh_catalog(artifacts: ArtifactStore, ledger, key: str, run_id: str, instance) -> None:
    """The catalog rows of what this run changed, recomputed here (a few small reads and one shard
    write: no second run), and recorded as a materialization of ``generation_catalog`` for the UI."""
    import dagster as dg

    from .catalog_index import CatalogIndex

    done = CatalogIndex(artifacts, ledger).refresh([key])
    instance.report_runless_asset_event(dg.AssetMaterialization("generation_catalog", metadata={
        "refreshed": len(done.rows), "after_run": run_id, "store": artifacts.store.location,
        "unreadable_records": "\n".join(done.unreadable[:50]) or "none"}))


@contextmanager
def _long_lived():
    """What is built inside (Dagster, the definitions, the instance: about a million objects) lives as
    long as the command: no collections while it is built, and none of it walked again by the run's
    own collections (gc.freeze; ``generate`` unfreezes when it returns, for callers that go on)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def generate(prompt: Prompt, seed: int, settings: Settings, as_json: bool = False,
             export: Callable[[ArtifactStore, str], list[Path]] | None = None) -> int:
    try:
        return _generate(prompt, seed, settings, as_json, export)
    finally:
        gc.unfreeze()


def _generate(prompt: Prompt, seed: int, settings: Settings, as_json: bool,
              export: Callable[[ArtifactStore, str], list[Path]] | None) -> int:
    entered = time.perf_counter()
    started_s = _process_age_s()  # interpreter start and the CLI's own imports
    with _long_lived():
        from .definitions import build_definitions
        from .defs.catalog import INLINE_TAG
        from .defs.instance import get_instance
        from .processes import identity_tags
        from .runs import PoolWatch, failures, free_dead_runs

        instance = get_instance()
        freed = free_dead_runs(instance)  # runs a killed threegen left holding the gpu pool
        for run in freed:
            note(run.line())
        defs = build_definitions(settings)
    entry, new, partition_added = _register(prompt, seed, "cli", settings, instance)
    if not as_json:
        print(f"generation {entry.key}  (prompt: {entry.label!r}, seed {entry.seed})", flush=True)
    tags = {"threegen/source": "cli", INLINE_TAG: "inline",  # the catalog is refreshed below, not by a sensor's run
            **identity_tags()}  # so a later threegen can tell if this process died
    run_id = str(uuid.uuid4())  # known before the run exists: the watch and the clean-up need it
    started = time.perf_counter()
    timings = {"process_start_s": started_s, "setup_s": started - entered}  # setup: imports, instance, defs, ledger
    watch = PoolWatch(instance.get_ref(), run_id, say=note)
    watch.start()
    try:
        result = defs.resolve_job_def("generate").execute_in_process(
            instance=instance, partition_key=entry.key, run_config=QUIET_RUN, raise_on_error=False,
            run_id=run_id, tags=tags)
    except Exception as exc:
        created = _run_exists(instance, run_id)
        if new and not created:
            _unregister(entry, partition_added, settings, instance)
        what = (f"run {run_id} of {entry.key} stopped" if created else f"could not create a run for {entry.key}"
                + ("; its new ledger entry was removed again" if new else ""))
        error = f"{what}: {root_cause(exc)}"
        if as_json:
            print(json.dumps({"key": entry.key, "run_id": run_id if created else None, "success": False,
                              "errors": [error]}, indent=1))
        note(error)
        return 2
    finally:
        watch.stop()
    wall = time.perf_counter() - started
    opened = OpenedStore.from_settings(settings)
    artifacts = opened.artifacts()
    _refresh_catalog(artifacts, opened.ledger(), entry.key, run_id, instance)
    timings.update(run_s=wall, catalog_s=time.perf_counter() - started - wall)
    exported = [str(p) for p in export(artifacts, entry.key)] if export else []
    failed = failures(result.all_events)
    summary = {"key": entry.key, "run_id": result.run_id, "success": result.success, "seconds": round(wall, 2),
               "store": settings.store, **_report(artifacts, entry.key), "exported": exported,
               "errors": [f.line() for f in failed], "failures": [f.__dict__ for f in failed],
               "freed_runs": [f.__dict__ for f in freed + watch.freed],
               "timings": {name: round(value, 3) for name, value in timings.items()}}
    if as_json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        _print_human(summary)
    return 0 if result.success else 1


def _print_human(summary: dict) -> None:
    for stage, info in summary["stages"].items():
        print(f"  {stage:<18} {info['seconds'] or 0:6.2f} s  {info['bytes']:>10,} B  {info['file']}")
    score = summary["score"]
    if score:
        verdict = "PASS" if score["passed"] and not score["checks"]["failures"] else "BELOW THRESHOLD"
        parts = ", ".join(f"{name.replace('_', ' ')} {value:.3f}" for name, value in score["parts"].items())
        print(f"  score {score['score']:.3f} ({score['kind']}; threshold {score['threshold']}) {verdict}: {parts}")
        for failure in score["checks"]["failures"]:
            print(f"  check failed: {failure}")
    if summary["exported"]:
        print(f"  exported {len(summary['exported'])} files to {Path(summary['exported'][0]).parent}")
    for error in summary["errors"]:
        print(f"  error: {error}", file=sys.stderr)
    print(f"{'done' if summary['success'] else 'FAILED'} in {summary['seconds']:.2f} s (run {summary['run_id']})")
