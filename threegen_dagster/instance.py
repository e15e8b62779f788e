"""The Dagster instance the CLI and `make` use: DAGSTER_HOME, defaulting to ./.dagster."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

PROJECT_YAML = Path(__file__).resolve().parents[1] / "dagster.yaml"
FALLBACK_YAML = "concurrency:\n  pools:\n    default_limit: 1\ntelemetry:\n  enabled: false\n"


def ensure_home(home: Path | None = None) -> Path:
    """Create DAGSTER_HOME (default ``./.dagster``) with the project's dagster.yaml, and export it."""
    home = Path(home or os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        if PROJECT_YAML.exists():
            config.symlink_to(os.path.relpath(PROJECT_YAML, home))
        else:  # installed without the repository around it
            config.write_text(FALLBACK_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def get_instance() -> dg.DagsterInstance:
    ensure_home()
    return dg.DagsterInstance.get()


if __name__ == "__main__":
    print(ensure_home())
