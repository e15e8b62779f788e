"""The Dagster instance the CLI and `make` use: DAGSTER_HOME, defaulting to ./.dagster."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from ..failures import InstanceUnavailable, root_cause

PROJECT_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
FALLBACK_YAML = """\
concurrency:
  pools:
    default_limit: 1
run_monitoring:
  enabled: true
  free_slots_after_run_end_seconds: 30
instance_class:
  module: threegen_dagster.defs.sqlite_storage
  class: ThreegenInstance
telemetry:
  enabled: false
"""  # the essentials of the project's dagster.yaml (see there), for an install without the repository


def ensure_home(home: Path | None = None) -> Path:
    """Create DAGSTER_HOME (default ``./.dagster``) with the project's dagster.yaml, and export it."""
    home = Path(home or os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if config.is_symlink() and not config.exists():  # a link to where the file was before (the repository root)
        config.unlink()
    if not config.exists():
        if PROJECT_YAML.exists():
            config.symlink_to(os.path.relpath(PROJECT_YAML, home))
        else:  # installed without the repository around it
            config.write_text(FALLBACK_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance() -> dg.DagsterInstance:
    home = ensure_home()
    try:
        return dg.DagsterInstance.get()
    except Exception as exc:
        raise InstanceUnavailable(f"cannot open the Dagster instance at {home}: {root_cause(exc)}") from exc


if __name__ == "__main__":
    print(ensure_home())
