"""``GET /results``: the complete batch as a ZIP of ``{stem}.{ext}`` plus ``_failed.json`` ``{stem: reason}``,
streamed as it is written, within the published limits (``ServeLimits``: the ZIP's bytes, its entries,
each file's bytes). The plan is made before the first byte goes out: an output over a limit, or one
that cannot be read, becomes a failure entry, so the ZIP is never cut short or broken. No Dagster imports.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .batch import DONE, Batch, ServeLimits

FAILED_NAME = "_failed.json"
ENTRY_OVERHEAD = 200  # a ZIP entry's local header, data descriptor and central directory record, with its name, at most
FAILED_RESERVE = 64 * 1024  # room kept for _failed.json (at most 100 reasons of at most 500 characters, as JSON)


@dataclass
class ZipPlan:
    files: list[tuple[str, bytes]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def entries(self) -> int:
        return len(self.files) + (1 if self.failed else 0)


def plan(batch: Batch, read: Callable[[str, str, int], bytes], ext: str, limits: ServeLimits) -> ZipPlan:
    """What goes into the ZIP: each done stem's output (``read(stem, key, version)``) unless it is over a
    limit or unreadable, and every failure with its reason, in the batch's order."""
    out = ZipPlan()
    budget = limits.zip_bytes - FAILED_RESERVE - ENTRY_OVERHEAD  # bytes left for the outputs
    for entry in batch.stems.values():
        if entry.state != DONE:
            out.failed[entry.stem] = entry.reason or "failed"
            continue
        try:
            data = read(entry.stem, entry.key, entry.version)
        except Exception as exc:  # noqa: BLE001 - a stored output that cannot be read is this stem's failure
            out.failed[entry.stem] = f"the output cannot be read: {type(exc).__name__}: {exc}"[:500]
            continue
        if len(data) > limits.file_bytes:
            out.failed[entry.stem] = f"the output is {len(data):,} bytes, over the {limits.file_bytes:,}-byte file limit"
        elif len(data) + ENTRY_OVERHEAD > budget:
            out.failed[entry.stem] = f"the ZIP would pass its {limits.zip_bytes:,}-byte limit with this output"
        elif len(out.files) + 2 > limits.zip_entries:  # this file and _failed.json
            out.failed[entry.stem] = f"the ZIP would pass its {limits.zip_entries}-entry limit with this output"
        else:
            out.files.append((f"{entry.stem}.{ext}", data))
            budget -= len(data) + ENTRY_OVERHEAD
    return out


class _Chunks:
    """A write-only, unseekable file: zipfile writes data descriptors and the ZIP streams as it is made."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


def stream(zip_plan: ZipPlan) -> Iterator[bytes]:
    """The ZIP's bytes, one chunk per file (deflated; the limits hold on the stored bytes)."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as archive:  # type: ignore[arg-type]
        for name, data in zip_plan.files:
            archive.writestr(name, data)
            yield sink.take()
        if zip_plan.failed:
            archive.writestr(FAILED_NAME, json.dumps(zip_plan.failed, indent=1, sort_keys=True))
    yield sink.take()
