"""The generation catalog: one row per ledger entry, read from the store (the store is the truth,
not Dagster's materialization status); a ledger entry that cannot be read is a row with status
"unreadable" saying why, and every other row is unaffected. ``build_catalog`` reads the whole store;
the catalog index (``catalog_index.py``) keeps the same rows up to date one generation at a time.
No Dagster imports; pandas only where a DataFrame is asked for."""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .artifacts import ArtifactStore, Manifest, Snapshot
from .ledger import Generation, Ledger, key_of
from .records import CorruptRecord

if TYPE_CHECKING:
    import pandas as pd

STAGES = ("generated_image", "foreground_image", "initial_mesh", "refined_mesh", "gaussian_splat",
          "compressed_splat", "validation_score")
COLUMNS = ["key", "prompt", "seed", "kind", "source", "created", "status", "score", "passed", "gaussians",
           "spz_bytes", "total_seconds", *[f"{stage}_seconds" for stage in STAGES], "versions", "slim", "keep"]


def latest_manifests(manifests: list[Manifest]) -> dict[tuple[str | None, str], tuple[Manifest, int]]:
    """(key, asset) -> (its newest version, how many versions)."""
    out: dict[tuple[str | None, str], tuple[Manifest, int]] = {}
    for m in manifests:
        previous = out.get((m.key, m.asset))
        count = previous[1] + 1 if previous else 1
        out[(m.key, m.asset)] = (m if not previous or m.version > previous[0].version else previous[0], count)
    return out


def generation_status(present: list[bool], passed: bool | None) -> str:
    if all(present):
        return "complete" if passed else "below threshold"
    if not any(present):
        return "pending"
    return f"partial ({sum(present)}/{len(present)})"


def catalog_row(entry: Generation, latest: dict, blobs: set[str]) -> dict:
    manifests = {stage: latest.get((entry.key, stage), (None, 0))[0] for stage in STAGES}
    # a pruned intermediate still counts: retention dropped it on purpose and kept its record
    present = [m is not None and (m.pruned_at is not None or m.sha256 in blobs) for m in manifests.values()]
    meta = {stage: (m.metadata if m else {}) for stage, m in manifests.items()}
    seconds = {f"{stage}_seconds": number(meta[stage].get("seconds")) for stage in STAGES}
    passed = meta["validation_score"].get("passed")
    passed = passed if isinstance(passed, bool) else None
    spz = manifests["compressed_splat"]
    return {
        "key": entry.key, "prompt": entry.label, "seed": entry.seed, "kind": entry.kind, "source": entry.source,
        "created": shown_time(entry.created_at),
        "status": generation_status(present, passed), "score": number(meta["validation_score"].get("score")),
        "passed": passed, "gaussians": number(meta["gaussian_splat"].get("gaussians")),
        "spz_bytes": spz.bytes if spz else None,
        "total_seconds": round(sum(v for v in seconds.values() if v is not None), 3), **seconds,
        "versions": sum(latest.get((entry.key, stage), (None, 0))[1] for stage in STAGES),
        "slim": any(m is not None and m.pruned_at is not None for m in manifests.values()), "keep": entry.keep,
    }


def number(value: object) -> int | float | None:
    """A metadata figure if it is a real number, else None: a version's metadata is whatever its writer put
    there, and one string among the seconds must not stop the sum, nor the catalog."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63 else None


def shown_time(seconds: float) -> str:
    """Unix seconds as a UTC date; "?" for a time no date can show (the ledger bounds it; this is the last guard)."""
    try:
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError, TypeError):
        return "?"


def unreadable_row(error: CorruptRecord) -> dict:
    return {"key": key_of(error.path), "prompt": str(error), "status": "unreadable"}  # the error names the file


def build_catalog(artifacts: ArtifactStore, ledger: Ledger, snapshot: Snapshot | None = None) -> pd.DataFrame:
    """The catalog from a full scan of the store. ``snapshot``: ``artifacts.snapshot()`` when the
    caller has read it already. Versions that cannot be read are left out (``snapshot.unreadable``
    lists them)."""
    manifests, blob_files, _ = snapshot or artifacts.snapshot()
    latest, blobs, bad = latest_manifests(manifests), set(blob_files), []
    rows = [catalog_row(entry, latest, blobs) for entry in ledger.all(bad)] + [unreadable_row(e) for e in bad]
    return to_frame(rows)


def to_frame(rows: list[dict]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(rows, columns=COLUMNS)


def statuses(frame: pd.DataFrame) -> dict[str, str]:
    """Generation key -> status, for the store statistics."""
    return {row.key: row.status.split(" (")[0] for row in frame.itertuples()}


def markdown_table(frame: pd.DataFrame | list[dict], columns: tuple[str, ...] = (
        "key", "prompt", "seed", "status", "score", "gaussians", "total_seconds")) -> str:
    """A small markdown table for the UI (no extra dependency): of a DataFrame, or of rows (dicts)."""
    records = frame.to_dict("records") if hasattr(frame, "to_dict") else list(frame)
    if not records:
        return "(no generations yet)"
    present = frame.columns if hasattr(frame, "columns") else {c for r in records for c in r}
    cols = [c for c in columns if c in present]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in records:
        rows.append("| " + " | ".join(md_cell(row.get(c)) for c in cols) + " |")
    return "\n".join(rows)


_MARKDOWN = re.compile(r"[\\`*_\[\]<>|~&]")
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def md_cell(value: object, width: int = 60) -> str:
    """One table cell, safe in the UI's markdown and in a terminal, whoever wrote the value: one line
    of at most ``width`` characters, markdown punctuation escaped (a prompt cannot become a link, an
    image, HTML or code), control characters (terminal escapes), undecodable bytes and bidi
    overrides shown as ``\\x1b`` / ``\\u202e``."""
    text = _MARKDOWN.sub(r"\\\g<0>", " ".join(str(value).split())[:width])
    return "".join(_visible(c) for c in text)


def _visible(char: str) -> str:
    if unicodedata.category(char) not in ("Cc", "Cs") and char not in _BIDI:
        return char
    return f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}"
