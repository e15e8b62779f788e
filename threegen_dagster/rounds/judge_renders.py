"""Every passed output of a round drawn as the judges draw it (``render.py``), kept in the store beside its
generation: ``generations/<key>/judge/white/<view>.png``, ``gray/<view>.png``, ``grid.png`` and ``renders.json``
(the output's sha256, the three revision, the files). They go with the generation (retention and removal delete
the ``generations/<key>`` prefix). An output whose renders exist for the same bytes is skipped; one that fails is
named with its error and the others go on. One browser for the whole batch: on CPU (software WebGL) the page's
start (the studio rig's environment map) costs far more than each output drawn after it. No Dagster imports."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import ArtifactStore, scope
from ..storage import Store, StorageError
from .render import GRAY_VIEWS, WHITE_VIEWS, JudgeRenderer, Rendered, find_chromium, preview_markdown
from .report import OUTPUT_ASSETS, StemOutput

KINDS = {1: "glb", 2: "js"}  # the competitions whose outputs the judge page draws (comp 0 splats: not here)
FILES = ([f"white/{v.name}.png" for v in WHITE_VIEWS] + [f"gray/{v.name}.png" for v in GRAY_VIEWS] + ["grid.png"])


def render_prefix(key: str) -> str:
    return f"{scope(key)}/judge"


def load_record(store: Store, key: str) -> dict | None:
    try:
        return json.loads(store.read(f"{render_prefix(key)}/renders.json"))
    except (StorageError, FileNotFoundError, ValueError):
        return None


def stored_renders(store: Store, key: str, sha256: str, folder: Path) -> Rendered | None:
    """The renders kept for ``key`` when they were drawn from the output with ``sha256`` and every file is
    there, copied into ``folder``; else None."""
    record = load_record(store, key)
    if not record or record.get("sha256") != sha256:
        return None
    out = Rendered(three=str(record.get("three", "")))
    try:
        for name in FILES:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(store.read(f"{render_prefix(key)}/{name}"))
            view = name.rsplit("/", 1)[-1].removesuffix(".png")
            if name == "grid.png":
                out.grid = path
            else:
                (out.white if name.startswith("white/") else out.gray)[view] = path
    except (StorageError, FileNotFoundError):
        return None
    return out


@dataclass
class RoundRenders:
    rendered: list[str] = field(default_factory=list)  # stems
    skipped: list[str] = field(default_factory=list)  # stems whose renders exist for the same bytes
    failed: dict[str, str] = field(default_factory=dict)  # stem -> why
    rows: list[str] = field(default_factory=list)  # markdown: | stem | grid | key | files |
    note: str = ""  # why nothing was drawn (no Chromium, comp 0), else ""

    def table(self) -> str:
        head = "| stem | grid | generation | files |\n|---|---|---|---|\n"
        return head + "\n".join(self.rows) if self.rows else (self.note or "(no passed output)")


def _row(store: Store, stem: str, key: str, rendered: Rendered | None, thumb_px: int) -> str:
    grid = (preview_markdown(Rendered(grid=rendered.grid), thumb_px=thumb_px).strip() if rendered
            else "(thumbnail left out)")
    return f"| {stem[:16]} | {grid} | {key} | [{len(FILES)} PNGs]({store.uri(render_prefix(key) + '/grid.png')}) |"


def render_round(store: Store, artifacts: ArtifactStore, outputs: dict[str, StemOutput], competition: int, *,
                 chromium: str | None = None, timeout_s: float = 60.0, thumbs: int = 16, thumb_px: int = 48,
                 log: Callable[[str], None] = lambda _: None) -> RoundRenders:
    """Render every passed output without current renders in one ``JudgeRenderer`` batch and store them; the
    first ``thumbs`` rows of the table carry the grid's thumbnail (metadata stays bounded on a 128-prompt round)."""
    result = RoundRenders()
    passed = sorted((o for o in outputs.values() if o.passed and o.written_at is not None), key=lambda o: o.stem)
    kind = KINDS.get(competition)
    if kind is None or not passed:
        result.note = ("no passed output" if not passed
                       else f"comp {competition} outputs are not drawn by the judge page")
        return result
    asset = OUTPUT_ASSETS[competition]
    with tempfile.TemporaryDirectory(prefix="round-renders-") as tmp:
        todo = []
        for o in passed:
            try:
                manifest = artifacts.latest(o.key, asset)
            except Exception as exc:  # noqa: BLE001 - an unreadable record: this output only
                result.failed[o.stem] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            kept = stored_renders(store, o.key, manifest.sha256, Path(tmp) / o.stem) if manifest else None
            if kept is not None:
                result.skipped.append(o.stem)
                result.rows.append(_row(store, o.stem, o.key, kept if len(result.rows) < thumbs else None, thumb_px))
            else:
                todo.append(o)
        if todo and find_chromium(chromium) is None:
            result.note = (f"not rendered: no Chromium at {chromium or '/usr/bin/chromium'} (run "
                           "scripts/install_browser.sh or set THREEGEN_CHROMIUM)")
            return result
        if todo:
            _render_batch(store, artifacts, todo, asset, kind, Path(tmp), result, chromium=chromium,
                          timeout_s=timeout_s, thumbs=thumbs, thumb_px=thumb_px, log=log)
    return result


def _render_batch(store: Store, artifacts: ArtifactStore, todo: list[StemOutput], asset: str, kind: str, tmp: Path,
                  result: RoundRenders, *, chromium, timeout_s, thumbs, thumb_px, log) -> None:
    try:
        renderer = JudgeRenderer(chromium, timeout_s).__enter__()
    except Exception as exc:  # noqa: BLE001 - the browser did not start: every output is named with why
        for o in todo:
            result.failed[o.stem] = f"the browser did not start: {type(exc).__name__}: {str(exc)[:300]}"
        return
    try:
        for o in todo:
            started = time.monotonic()
            try:
                manifest, data = artifacts.load(o.key, asset)
                rendered = renderer.render(data, kind, tmp / "new" / o.stem)
                prefix = render_prefix(o.key)
                for path in rendered.paths():
                    store.write(f"{prefix}/{path.relative_to(tmp / 'new' / o.stem).as_posix()}", path.read_bytes(),
                                content_type="image/png")
                store.write(f"{prefix}/renders.json", json.dumps({  # last: the renders are complete
                    "sha256": manifest.sha256, "asset": asset, "version": manifest.version, "three": rendered.three,
                    "files": FILES, "rendered_at": time.time()}, indent=1).encode(), content_type="application/json")
            except Exception as exc:  # noqa: BLE001 - this output only: the others go on
                result.failed[o.stem] = f"{type(exc).__name__}: {str(exc)[:300]}"
                log(f"{o.stem} ({o.key}): not rendered: {result.failed[o.stem]}")
                continue
            result.rendered.append(o.stem)
            result.rows.append(_row(store, o.stem, o.key, rendered if len(result.rows) < thumbs else None, thumb_px))
            log(f"{o.stem} ({o.key}): rendered in {time.monotonic() - started:.1f} s")
    finally:
        renderer.__exit__(None, None, None)
