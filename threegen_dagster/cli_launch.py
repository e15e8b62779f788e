"""``threegen launch KEY...``: Dagster's own ``dg launch --job generate --partition KEY`` for each key,
with every key checked first and one summary line per key after.

Given a key its instance does not know, Dagster's CLI (``dg launch``, ``dagster asset materialize``)
ends in a ~50-line ``DagsterInvalidSubsetError`` / ``DagsterUnknownPartitionError`` traceback, raised
before any of the project's code sees the key. This command checks all the keys before anything
runs and refuses the bad ones in one line each (nothing is registered or launched then): a string
that is not a key says what to type instead (``keys.key_error``), an unknown hashed key says to
register it (``threegen add``). A readable key (``a-blue-vase-s3``) is registered as the prompt its
words spell, and a key the store's ledger knows but this instance does not (a fresh DAGSTER_HOME in
CI over a kept store) gets its partition. Then each key is one ``dg launch`` process: Dagster's CLI
with its own output and exit status, the run recorded in the instance at DAGSTER_HOME. No Dagster
import at module level (the CLI's commands import it when they run)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .keys import PromptError, is_generation_key, is_readable_key, key_error
from .ledger import Ledger, UnknownGeneration
from .settings import Settings
from .storage import StorageError
from .stores import OpenedStore

CODE_LOCATION = "threegen_dagster.definitions"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def refusals(keys: list[str], ledger: Ledger) -> list[str]:
    """One line per key that cannot be launched: not a key, or a hashed key the ledger does not know."""
    lines = []
    for key in keys:
        if not is_generation_key(key):
            lines.append(key_error(key))
        elif not is_readable_key(key) and ledger.find(key) is None:
            lines.append(str(UnknownGeneration(key)))
    return lines


def dg_executable() -> str:
    """Dagster's ``dg`` (dagster-dg-cli, a dependency): beside this Python, else on PATH."""
    beside = Path(sys.executable).with_name("dg")
    found = str(beside) if beside.exists() else shutil.which("dg")
    if found is None:
        raise PromptError("threegen launch runs Dagster's `dg launch`, and no `dg` is installed: "
                          "pip install dagster-dg-cli (a dependency of this package)")
    return found


def dg_launch_command(job: str, key: str, log_level: str) -> list[str]:
    """Dagster's own launch of ``job`` (``generate``) for one partition; the run's console log at
    ``log_level`` (run config ``loggers.console``: DEBUG shows every step event, INFO what the stages log)."""
    config = {"loggers": {"console": {"config": {"log_level": log_level.upper()}}}}
    return [dg_executable(), "launch", "--job", job, "--partition", key,
            "--module-name", CODE_LOCATION, "--config-json", json.dumps(config)]


def score_line(ledger_store: OpenedStore, key: str, since: float) -> str:
    """The score this launch wrote (the latest validation_score version, if written after ``since``)."""
    artifacts = ledger_store.artifacts()
    try:
        latest = artifacts.latest(key, "validation_score")
        if latest is None or latest.written_at < since:
            return "no new score"
        result = json.loads(artifacts.load(key, "validation_score", latest.version)[1])
    except StorageError as exc:  # named, and the other keys still run
        return f"score unreadable: {exc}"
    failures = result.get("checks", {}).get("failures") or []
    verdict = "passed" if result.get("passed") and not failures else "failed"
    return (f"score {result['score']:.3f} (threshold {result['threshold']}) {verdict}"
            + (f": {'; '.join(failures)}" if failures else ""))


def launch(args: argparse.Namespace, settings: Settings) -> int:
    from .defs.generation import generate_job, generations
    from .defs.instance import get_instance

    opened = OpenedStore.from_settings(settings)
    ledger = opened.ledger()
    refused = refusals(args.keys, ledger)
    for line in refused:
        print(f"threegen: {line}", file=sys.stderr)
    if refused:
        print(f"threegen: nothing launched ({len(refused)} of {len(args.keys)} keys refused)", file=sys.stderr)
        return 2
    dg_executable()  # before anything is registered
    instance = get_instance()  # exports DAGSTER_HOME (default ./.dagster) for the dg processes
    for key in dict.fromkeys(args.keys):  # known to the ledger and the instance before any run starts
        if is_readable_key(key) and ledger.find(key) is None:
            ledger.add_readable(key, "cli")
        if not instance.has_dynamic_partition(generations.name, key):
            instance.add_dynamic_partitions(generations.name, [key])
    failed = 0
    for key in dict.fromkeys(args.keys):
        started = time.time()
        code = subprocess.run(dg_launch_command(generate_job.name, key, args.log_level)).returncode
        failed += code != 0
        print(f"{key}: {'succeeded' if code == 0 else f'FAILED (dg launch exit {code})'}, "
              f"{score_line(opened, key, started)}", flush=True)
    return 1 if failed else 0


def add_parser(sub) -> None:
    cmd = sub.add_parser("launch", help="run registered generations with Dagster's own `dg launch`, keys checked first")
    cmd.add_argument("keys", nargs="+", metavar="KEY", help="generation keys (`threegen add ... --quiet` prints one)")
    cmd.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                     help="the run's console log (default info: failures and what the stages log; debug: every event)")
    cmd.set_defaults(run=launch)
