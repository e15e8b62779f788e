"""``threegen``: register generations and run them through the Dagster instance at DAGSTER_HOME,
so every run also shows in the UI (``dg dev`` / ``make ui`` with the same DAGSTER_HOME)."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from .artifacts import EXTENSIONS, ArtifactStore
from .backends.gpu import BackendError
from .catalog import STAGES
from .cli_launch import add_parser as add_launch
from .cli_batch import with_seeds
from .cli_search import add_parser as add_search
from .cli_generate import QUIET_RUN, register  # noqa: F401  (QUIET_RUN: tests and benchmarks use it)
from .cli_remove import add_parser as add_remove
from .cli_sn17 import add_parser as add_sn17
from .serve.command import add_parser as add_serve
from .failures import InstanceUnavailable
from .keys import MAX_SEED, Prompt, PromptError
from .ledger import UnknownGeneration
from .settings import Settings, SettingsError
from .stores import OpenedStore
from .storage import StorageError
from .viewer import DEFAULT_PORT as VIEW_PORT


def _prompt(args: argparse.Namespace) -> Prompt:
    if args.image:
        path = Path(args.image)
        if not path.is_file():
            raise PromptError(f"--image {path}: no such file")
        return Prompt.from_image(path.read_bytes(), caption=args.prompt or "")
    if args.prompt is None:
        raise PromptError("give a text prompt, or --image FILE")
    return Prompt.from_text(args.prompt)


def _export(artifacts: ArtifactStore, key: str, folder: Path, bad: list[StorageError] | None = None) -> list[Path]:
    """The latest version of each stage as a named file (``<asset>.<ext>``; the extension is the
    asset's, never a stored record's) in ``folder``. A stage whose record or bytes are bad is
    raised, or, if ``bad`` is given, appended to it and skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for stage in STAGES:
        try:
            if artifacts.latest(key, stage) is None:
                continue
            _, data = artifacts.load(key, stage)
        except StorageError as exc:
            if bad is None:
                raise
            bad.append(exc)
            continue
        written.append(folder / f"{stage}.{EXTENSIONS[stage]}")
        written[-1].write_bytes(data)
    return written


def _warn(errors: list) -> None:
    for error in errors:
        print(f"threegen: {error}", file=sys.stderr)


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from .cli_generate import generate

    export = (lambda artifacts, key: _export(artifacts, key, Path(args.out))) if args.out else None
    return generate(_prompt(args), args.seed, settings, as_json=args.json, export=export)


def cmd_add(args: argparse.Namespace, settings: Settings) -> int:
    from .defs.instance import get_instance

    entry, new = register(_prompt(args), args.seed, "cli", settings, get_instance())
    if args.json:
        print(json.dumps({"key": entry.key, "new": new}))
    elif args.quiet:  # the key alone, for scripts: key=$(threegen add "..." --seed 1 --quiet)
        print(entry.key)
    else:
        print(f"{'registered' if new else 'already registered'}: {entry.key}")
    return 0


def cmd_keep(args: argparse.Namespace, settings: Settings) -> int:
    entry = OpenedStore.from_settings(settings).ledger().set_keep(args.key, not args.off)
    print(f"{entry.key}: {'kept' if entry.keep else 'no longer kept'} by retention")
    return 0


def cmd_catalog(args: argparse.Namespace, settings: Settings) -> int:
    from .catalog import markdown_table, to_frame
    from .catalog_index import CatalogIndex

    store = OpenedStore.from_settings(settings)
    index = CatalogIndex(store.artifacts(), store.ledger())  # kept up to date per generation (catalog_index.py)
    if args.rebuild:
        index.rebuild()
    entries = index.entries()
    rows = [entry["row"] for entry in entries]
    print(to_frame(rows).to_json(orient="records", indent=1) if args.json else markdown_table(rows))
    _warn([line for entry in entries for line in entry["unreadable"]]
          + [row["prompt"] for row in rows if row.get("status") == "unreadable"])
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_versions(args: argparse.Namespace, settings: Settings) -> int:
    store = OpenedStore.from_settings(settings)
    store.ledger().get(args.key)
    artifacts, bad = store.artifacts(), []
    rows = [m for asset in ([args.asset] if args.asset else STAGES) for m in artifacts.versions(args.key, asset, bad)]
    _warn(bad)  # a version that cannot be read is named, the others are listed
    if args.json:
        print(json.dumps([{**m.__dict__, "blob": artifacts.store.uri(m.blob)} for m in rows]
                         + [{"unreadable": e.path, "error": str(e)} for e in bad], indent=1, default=str))
        return 0
    if not rows:
        print(f"{args.key}: nothing {'readable ' if bad else ''}materialized yet")
        return 0
    print(f"{'asset':<18} {'ver':>4}  {'written':<19} {'bytes':>11}  {'sha256':<12}  {'run':<8}  note")
    for m in rows:
        note = "pruned by retention" if m.pruned_at else ("deduplicated" if m.deduplicated else "")
        print(f"{m.asset:<18} {m.version:>4}  {_when(m.written_at):<19} {m.bytes:>11,}  {m.sha256[:12]}  "
              f"{m.run_id[:8]:<8}  {note}")
    return 0


def _export_viewer(artifacts: ArtifactStore, ledger, key: str, folder: Path) -> list[Path]:
    """``viewer.html``: the generation's viewer page (mesh, splat, image, score) in one file."""
    from .viewer import FILENAME, viewer_html

    target = folder / FILENAME
    target.write_bytes(viewer_html(artifacts, ledger, key))
    return [target]


def cmd_get(args: argparse.Namespace, settings: Settings) -> int:
    store = OpenedStore.from_settings(settings)
    store.ledger().get(args.key)
    artifacts = store.artifacts()
    if args.asset is None:
        if args.version is not None:
            raise PromptError("--version needs an ASSET")
        bad: list[StorageError] = []
        written = _export(artifacts, args.key, Path(args.output or args.key), bad)
        viewer = _export_viewer(artifacts, store.ledger(), args.key, Path(args.output or args.key))
        for path in written + viewer:
            print(path)
        _warn(bad)
        return 0 if written and not bad else 1
    if args.asset not in STAGES:
        raise PromptError(f"unknown asset {args.asset!r}: one of {', '.join(STAGES)}")
    manifest, data = artifacts.load(args.key, args.asset, args.version)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        return 0
    name = f"{args.key}-{args.asset}.{EXTENSIONS[args.asset]}"  # from the checked arguments, never the record
    target = Path(args.output or name)
    if target.is_dir():
        target = target / name
    target.write_bytes(data)
    print(f"{target}  ({manifest.bytes:,} bytes, {args.asset} v{manifest.version}, sha256 {manifest.sha256[:12]}… verified)")
    return 0


def cmd_stats(args: argparse.Namespace, settings: Settings) -> int:
    from .catalog_index import store_stats

    store = OpenedStore.from_settings(settings)
    totals = store_stats(store.artifacts(), store.ledger(), full=args.full)  # the index; --full: every record and blob
    if args.json:
        print(json.dumps(totals, indent=1))
        return 0
    ratio = f"{totals['dedup_ratio']:.2f}x" if totals["dedup_ratio"] else "n/a"
    print(f"store {totals['store']}: {totals['generations']} generations, {totals['versions']} versions, "
          f"{totals['blobs']} blobs")
    unreferenced = (f"{totals['unreferenced_blobs']} unreferenced blobs ({totals['unreferenced_bytes']:,} bytes)"
                    if totals["unreferenced_blobs"] is not None else "unreferenced blobs: see --full")
    print(f"  {totals['logical_bytes']:,} bytes referenced, {totals['stored_bytes']:,} stored; de-duplication {ratio}; "
          f"{unreferenced}"
          + (f"; {totals['missing_blobs']} MISSING blobs" if totals["missing_blobs"] else ""))
    if totals["unreadable_records"]:
        print(f"  {len(totals['unreadable_records'])} bad record(s) skipped (not counted above):")
        for line in totals["unreadable_records"]:
            print(f"    {line}")
    print(f"  {'asset':<20} {'versions':>8} {'blobs':>6} {'referenced':>14} {'stored':>14}")
    for name, row in totals["by_asset"].items():
        print(f"  {name:<20} {row['versions']:>8} {row['unique_blobs']:>6} {row['logical_bytes']:>14,} "
              f"{row['stored_bytes']:>14,}")
    print(f"  {'status':<20} {'gens':>8} {'versions':>6} {'referenced':>14}")
    for name, row in totals["by_status"].items():
        print(f"  {name:<20} {row['generations']:>8} {row['versions']:>6} {row['logical_bytes']:>14,}")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from .worker import StageRunner
    from .worker_client import WorkerClient
    from .worker_http import LOOPBACK, Limits, bind, serve

    if args.status:
        print(json.dumps(WorkerClient(args.status).status(), indent=1))
        return 0
    host = args.host or settings.worker_host
    sock = bind(host, args.port)  # before loading models: a port in use fails at once
    runner = StageRunner(settings.models, free_between_stages=settings.free_gpu_between_stages,
                         max_image_pixels=settings.max_image_pixels)
    for stage, (backend, options) in runner.models.items():
        print(f"  {stage:<14} {backend:<11} {json.dumps(options) if options else ''}")
    try:
        seconds = runner.load_all()
    except BackendError as exc:
        print(f"threegen worker: {exc}", file=sys.stderr)
        return 2
    print("  loaded in " + ", ".join(f"{stage} {s:.1f} s" for stage, s in seconds.items()))
    limits = Limits.from_settings(settings, host)
    if host not in LOOPBACK:
        print(f"threegen worker: WARNING: listening on {host}, not loopback: anything that reaches this "
              f"address can run the models; keep it behind a firewall", file=sys.stderr, flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"threegen worker serving on http://{shown}:{sock.getsockname()[1]} (GET /health, GET /status, "
          f"POST /v1/<stage>; bodies up to {settings.worker_max_body_mb} MB, arriving within "
          f"{settings.worker_read_timeout_s:g} s); Ctrl-C stops it", flush=True)
    serve(runner, limits, sock)
    return 0


def cmd_view(args: argparse.Namespace, settings: Settings) -> int:
    from .viewer.server import HOST, serve
    from .worker_http import bind

    store = OpenedStore.from_settings(settings)
    sock = bind(HOST, args.port)
    sock.listen(128)  # connections wait in the backlog from now on, until the server takes them
    print(f"threegen view serving {store.store().location} on http://{HOST}:{sock.getsockname()[1]}/ "
          f"(read-only; the viewer of a generation at /g/KEY); Ctrl-C stops it", flush=True)
    serve(store.artifacts(), store.ledger(), sock)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="threegen", description="SN17 text/image-to-3D generations on Dagster")
    sub = p.add_subparsers(dest="command", required=True)

    def prompt_args(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("prompt", nargs="?", help="what to generate (the caption, with --image)")
        cmd.add_argument("--seed", type=int, default=0, help=f"0..{MAX_SEED} (default 0)")
        cmd.add_argument("--seeds", metavar="LIST", help="several seeds, e.g. 1,2,5-8: one generation each, "
                                                          "under a progress bar on a terminal (replaces --seed)")
        cmd.add_argument("--image", metavar="FILE", help="an image prompt (PNG, JPEG or WebP)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")

    gen = sub.add_parser("generate", help="register (prompt, seed) and materialize every stage")
    prompt_args(gen)
    gen.add_argument("--out", metavar="DIR", help="also export each stage's latest file into DIR")
    gen.set_defaults(run=with_seeds(cmd_generate))
    add = sub.add_parser("add", help="only register (prompt, seed) as a partition")
    prompt_args(add)
    add.add_argument("-q", "--quiet", action="store_true", help="print only the key")
    add.set_defaults(run=with_seeds(cmd_add))
    keep = sub.add_parser("keep", help="protect a generation from retention (or --off)")
    keep.add_argument("key")
    keep.add_argument("--off", action="store_true")
    keep.set_defaults(run=cmd_keep)
    add_remove(sub)  # threegen remove (cli_remove.py)
    add_launch(sub)  # threegen launch (cli_launch.py)
    add_serve(sub)  # threegen serve (serve/command.py): SN17's miner batch API
    cat = sub.add_parser("catalog", help="list generations with status and score")
    cat.add_argument("--json", action="store_true")
    cat.add_argument("--rebuild", action="store_true", help="recompute every row from the store first")
    cat.set_defaults(run=cmd_catalog)
    ver = sub.add_parser("versions", help="list the stored versions of a generation's assets")
    ver.add_argument("key")
    ver.add_argument("asset", nargs="?", choices=STAGES)
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(run=cmd_versions)
    get = sub.add_parser("get", help="fetch an asset's bytes (verified), or every stage's and viewer.html with no ASSET")
    get.add_argument("key")
    get.add_argument("asset", nargs="?")
    get.add_argument("--version", type=int, help="a stored version (default: the latest)")
    get.add_argument("-o", "--output", metavar="FILE", help="file, folder, or - for stdout")
    get.set_defaults(run=cmd_get)
    add_sn17(sub)  # threegen validators, threegen puller (cli_sn17.py): the legacy SN17 protocol
    work = sub.add_parser("worker", help="the warm GPU worker: load the configured models once, serve the stages")
    work.add_argument("--host", help="address to bind (default THREEGEN_WORKER_HOST, 127.0.0.1); "
                                     "anything else exposes the models to the network")
    work.add_argument("--port", type=int, default=8765)
    work.add_argument("--status", metavar="URL", help="print a running worker's status instead")
    work.set_defaults(run=cmd_worker)
    from .cli_workers import add_parser as workers_parser  # `threegen workers`: the pool's status

    workers_parser(sub)
    view = sub.add_parser("view", help="a read-only server on loopback: every generation's 3D viewer, files and JSON")
    view.add_argument("--port", type=int, default=VIEW_PORT, help=f"port on 127.0.0.1 (default {VIEW_PORT}; 0: any free one)")
    view.set_defaults(run=cmd_view)
    add_search(sub)  # threegen search (cli_search.py)
    stats = sub.add_parser("stats", help="counts, bytes and de-duplication, by asset and status")
    stats.add_argument("--json", action="store_true")
    stats.add_argument("--full", action="store_true", help="scan every record and blob (also counts unreferenced blobs)")
    stats.set_defaults(run=cmd_stats)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args, Settings.from_env())
    except (PromptError, SettingsError, StorageError, UnknownGeneration, BackendError, InstanceUnavailable) as exc:
        print(f"threegen: {exc}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``threegen`` command. On its way out the collector would walk every object Dagster and
    the models built (0.7 s of a cold ``threegen generate`` on 2 cores): frozen, the process just ends."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
