"""The one place that reads the environment. Every setting has a default that runs the
embedded CPU pipeline on local disk; each can be overridden by an environment variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .retention import RetentionPolicy
from .storage import StorageError, parse_s3_uri


class SettingsError(ValueError):
    """An environment variable with a value that cannot be used."""


@dataclass(frozen=True)
class Settings:
    store: str
    """THREEGEN_STORE: a directory or s3://BUCKET[/PREFIX] for blobs, versions, the ledger, the catalog."""
    inbox: Path
    """THREEGEN_INBOX: folder the task sensor watches for JSON task files."""
    s3_endpoint: str | None = None
    """THREEGEN_S3_ENDPOINT: an S3-compatible server's URL (boto3's AWS_ENDPOINT_URL works too)."""
    s3_region: str | None = None
    """AWS_REGION / AWS_DEFAULT_REGION, read here so the config shows it."""
    presign_seconds: int = 86_400
    """THREEGEN_PRESIGN_SECONDS: lifetime of the S3 download links in asset metadata."""
    retention: RetentionPolicy = RetentionPolicy()
    """THREEGEN_RETENTION_HOURS, THREEGEN_KEEP_PASSED_HOURS, THREEGEN_SLIM_HOURS, THREEGEN_KEEP_VERSIONS."""
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
        store = env.get("THREEGEN_STORE", "") or "artifacts"
        if store.startswith("s3://"):
            try:
                parse_s3_uri(store)
            except StorageError as exc:
                raise SettingsError(f"THREEGEN_STORE: {exc.strerror}") from None
        else:
            store = str((base / store).expanduser().resolve())
        try:
            retention = RetentionPolicy(
                max_age_hours=number("THREEGEN_RETENTION_HOURS", 168.0, float),
                keep_passed_hours=number("THREEGEN_KEEP_PASSED_HOURS", 720.0, float),
                slim_after_hours=number("THREEGEN_SLIM_HOURS", 48.0, float),
                keep_versions=int(number("THREEGEN_KEEP_VERSIONS", 3, int)))
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return cls(
            store=store,
            inbox=(base / env.get("THREEGEN_INBOX", "inbox")).resolve(),
            s3_endpoint=env.get("THREEGEN_S3_ENDPOINT") or None,
            s3_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            presign_seconds=int(number("THREEGEN_PRESIGN_SECONDS", 86_400, int)),
            retention=retention,
            gaussians=int(number("THREEGEN_GAUSSIANS", 50_000, int)),
            score_threshold=number("THREEGEN_SCORE_THRESHOLD", 0.6, float),
            frame=frame,
        )
