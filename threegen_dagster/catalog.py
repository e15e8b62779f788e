"""The generation catalog: one row per ledger entry, read from the store (the store is the truth,
not Dagster's materialization status). No Dagster imports."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd

from .ledger import Ledger
from .storage import LocalStore, StorageError

STAGES = ("generated_image", "foreground_image", "initial_mesh", "refined_mesh", "gaussian_splat",
          "compressed_splat", "validation_score")
COLUMNS = ["key", "prompt", "seed", "kind", "source", "created", "status", "score", "passed", "gaussians",
           "spz_bytes", "total_seconds", *[f"{stage}_seconds" for stage in STAGES], "keep"]


def manifest_path(key: str, asset: str) -> str:
    """Where the I/O manager records an artifact's size, sha256, run and metadata."""
    return f"generations/{key}/manifest/{asset}.json"


def read_manifest(store: LocalStore, key: str, stage: str) -> dict | None:
    """A stage's manifest, or None when the stage has not been written."""
    try:
        return json.loads(store.read(manifest_path(key, stage)))
    except (StorageError, ValueError):
        return None


def _status(present: list[bool], passed: bool | None) -> str:
    if all(present):
        return "complete" if passed else "below threshold"
    if not any(present):
        return "pending"
    return f"partial ({sum(present)}/{len(present)})"


def catalog_row(store: LocalStore, entry) -> dict:
    manifests = {stage: read_manifest(store, entry.key, stage) for stage in STAGES}
    present = [m is not None and store.exists(m["file"]) for m in manifests.values()]
    seconds = {f"{s}_seconds": (m or {}).get("metadata", {}).get("seconds") for s, m in manifests.items()}
    score_meta = (manifests["validation_score"] or {}).get("metadata", {})
    passed = score_meta.get("passed")
    return {
        "key": entry.key, "prompt": entry.label, "seed": entry.seed, "kind": entry.kind, "source": entry.source,
        "created": datetime.fromtimestamp(entry.created_at, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "status": _status(present, passed), "score": score_meta.get("score"), "passed": passed,
        "gaussians": (manifests["gaussian_splat"] or {}).get("metadata", {}).get("gaussians"),
        "spz_bytes": (manifests["compressed_splat"] or {}).get("bytes"),
        "total_seconds": round(sum(v for v in seconds.values() if v is not None), 3),
        **seconds, "keep": entry.keep,
    }


def build_catalog(store: LocalStore, ledger: Ledger) -> pd.DataFrame:
    return pd.DataFrame([catalog_row(store, entry) for entry in ledger.all()], columns=COLUMNS)


def markdown_table(frame: pd.DataFrame, columns: tuple[str, ...] = ("key", "prompt", "seed", "status", "score",
                                                                    "gaussians", "total_seconds")) -> str:
    """A small markdown table for the UI (no extra dependency)."""
    if frame.empty:
        return "(no generations yet)"
    cols = [c for c in columns if c in frame.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame[cols].iterrows():
        rows.append("| " + " | ".join(str(row[c]).replace("|", "\\|")[:60] for c in cols) + " |")
    return "\n".join(rows)
