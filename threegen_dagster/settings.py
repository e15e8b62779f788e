"""The one place that reads the environment. Every setting has a default that runs the
embedded CPU pipeline on local disk; each can be overridden by an environment variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class SettingsError(ValueError):
    """An environment variable with a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    store_root: Path
    """THREEGEN_STORE: where artifacts, manifests, the ledger and the catalog are written."""
    inbox: Path
    """THREEGEN_INBOX: folder the task sensor watches for JSON task files."""
    retention_hours: float = 168.0
    """THREEGEN_RETENTION_HOURS: generations older than this are removed by the cleanup schedule."""
    gaussians: int = 50_000
    """THREEGEN_GAUSSIANS: gaussians per splat."""
    score_threshold: float = 0.6
    """THREEGEN_SCORE_THRESHOLD: the blocking score check's threshold."""
    frame: str = "y_up"
    """THREEGEN_FRAME: 'y_up' or 'y_down', the frame the splat is written in."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Settings:
        env = os.environ if env is None else env
        base = (cwd or Path.cwd()).resolve()

        def number(name: str, default: float, kind: type) -> float:
            raw = env.get(name, "")
            if not raw:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise SettingsError(f"{name}={raw!r} is not a {kind.__name__}") from None

        frame = env.get("THREEGEN_FRAME", "y_up")
        if frame not in ("y_up", "y_down"):
            raise SettingsError(f"THREEGEN_FRAME={frame!r}: use 'y_up' or 'y_down'")
        return cls(
            store_root=(base / env.get("THREEGEN_STORE", "artifacts")).resolve(),
            inbox=(base / env.get("THREEGEN_INBOX", "inbox")).resolve(),
            retention_hours=number("THREEGEN_RETENTION_HOURS", 168.0, float),
            gaussians=int(number("THREEGEN_GAUSSIANS", 50_000, int)),
            score_threshold=number("THREEGEN_SCORE_THRESHOLD", 0.6, float),
            frame=frame,
        )
