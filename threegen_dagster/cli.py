"""``threegen``: register generations and run them through the Dagster instance at DAGSTER_HOME,
so every run also shows in the UI (``dagster dev`` with the same DAGSTER_HOME)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .catalog import STAGES, read_manifest
from .io_manager import artifact_path
from .keys import MAX_SEED, Prompt, PromptError
from .ledger import Generation, Ledger, UnknownGeneration
from .settings import Settings, SettingsError
from .storage import LocalStore, StorageError

QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _prompt(args: argparse.Namespace) -> Prompt:
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise PromptError(f"--image {path}: no such file")
        return Prompt.from_image(path.read_bytes(), caption=args.prompt or "")
    if args.prompt is None:
        raise PromptError("give a text prompt, or --image FILE")
    return Prompt.from_text(args.prompt)


def register(prompt: Prompt, seed: int, source: str, settings: Settings, instance) -> tuple[Generation, bool]:
    """Add (prompt, seed) to the ledger and the instance's `generations` partitions."""
    entry, new = Ledger(LocalStore(settings.store_root)).add(prompt, seed, source=source)
    if not instance.has_dynamic_partition("generations", entry.key):
        instance.add_dynamic_partitions("generations", [entry.key])
    return entry, new


def _report(store: LocalStore, key: str) -> dict:
    stages = {}
    for stage in STAGES:
        manifest = read_manifest(store, key, stage)
        if manifest is not None:
            stages[stage] = {"file": store.uri(manifest["file"]), "bytes": manifest["bytes"],
                             "seconds": manifest["metadata"].get("seconds")}
    score = None
    if store.exists(artifact_path(key, "validation_score")):
        score = json.loads(store.read(artifact_path(key, "validation_score")))
    return {"stages": stages, "score": score}


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    from .instance import get_instance

    entry, new = register(_prompt(args), args.seed, "cli", settings, get_instance())
    if args.json:
        print(json.dumps({"key": entry.key, "new": new}))
    else:
        print(f"{'registered' if new else 'already registered'}: {entry.key}")
    return 0


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from .definitions import build_definitions
    from .instance import get_instance

    instance = get_instance()
    entry, _ = register(_prompt(args), args.seed, "cli", settings, instance)
    defs = build_definitions(settings)
    if not args.json:
        print(f"generation {entry.key}  (prompt: {entry.label!r}, seed {entry.seed})")
    started = time.perf_counter()
    result = defs.resolve_job_def("generate").execute_in_process(
        instance=instance, partition_key=entry.key, run_config=QUIET_RUN, raise_on_error=False,
        tags={"threegen/source": "cli"})
    wall = time.perf_counter() - started
    if result.success:
        defs.resolve_job_def("refresh_catalog").execute_in_process(instance=instance, run_config=QUIET_RUN,
                                                                   tags={"threegen/source": "cli"})
    report = _report(LocalStore(settings.store_root), entry.key)
    failures = [ev.message for ev in result.all_events if ev.is_step_failure]
    summary = {"key": entry.key, "run_id": result.run_id, "success": result.success, "seconds": round(wall, 2),
               "store": str(settings.store_root), **report, "errors": failures}
    if args.json:
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
        print(f"  score {score['score']:.3f} ({score['kind']}; threshold {score['threshold']}) {verdict}: "
              f"silhouette IoU {score['silhouette_iou']:.3f}, colour {score['colour_similarity']:.3f}, "
              f"ring consistency {score['ring_consistency']:.3f}")
        for failure in score["checks"]["failures"]:
            print(f"  check failed: {failure}")
    for error in summary["errors"]:
        print(f"  error: {error}", file=sys.stderr)
    print(f"{'done' if summary['success'] else 'FAILED'} in {summary['seconds']:.2f} s (run {summary['run_id']})")


def cmd_keep(args: argparse.Namespace, settings: Settings) -> int:
    entry = Ledger(LocalStore(settings.store_root)).set_keep(args.key, not args.off)
    print(f"{entry.key}: {'kept' if entry.keep else 'no longer kept'} by retention")
    return 0


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    from .catalog import build_catalog, markdown_table

    store = LocalStore(settings.store_root)
    frame = build_catalog(store, Ledger(store))
    print(frame.to_json(orient="records", indent=1) if args.json else markdown_table(frame))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="threegen", description="SN17 text/image-to-3D generations on Dagster")
    sub = p.add_subparsers(dest="command", required=True)

    def prompt_args(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("prompt", nargs="?", help="what to generate (the caption, with --image)")
        cmd.add_argument("--seed", type=int, default=0, help=f"0..{MAX_SEED} (default 0)")
        cmd.add_argument("--image", metavar="FILE", help="an image prompt (PNG, JPEG or WebP)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")

    gen = sub.add_parser("generate", help="register (prompt, seed) and materialize every stage")
    prompt_args(gen)
    gen.set_defaults(run=cmd_generate)
    add = sub.add_parser("add", help="only register (prompt, seed) as a partition")
    prompt_args(add)
    add.set_defaults(run=cmd_add)
    keep = sub.add_parser("keep", help="protect a generation from retention (or --off)")
    keep.add_argument("key")
    keep.add_argument("--off", action="store_true")
    keep.set_defaults(run=cmd_keep)
    cat = sub.add_parser("catalog", help="list generations with status and score")
    cat.add_argument("--json", action="store_true")
    cat.set_defaults(run=cmd_catalog)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args, Settings.from_env())
    except (PromptError, SettingsError, StorageError, UnknownGeneration) as exc:
        print(f"threegen: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
