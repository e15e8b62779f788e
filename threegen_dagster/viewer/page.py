"""One self-contained HTML page per generation (``viewer.html``): the mesh and the splat, turnable
with the mouse, next to the prompt image and the score. The page carries everything it needs: the
vendored three.js and Spark as an import map of ``data:`` URLs, the generation's files in base64,
and a Content-Security-Policy that lets it fetch nothing, so one file works from file://, from a
presigned S3 link and from ``threegen view`` alike, offline. No Dagster imports."""

from __future__ import annotations

import base64
import html
import json
import re
from importlib import resources

from ..artifacts import ArtifactStore
from ..ledger import Ledger
from .source import Shown, ViewerData, load_generation
from .vendor_modules import import_map

CONTENT_TYPE = "text/html; charset=utf-8"
FILENAME = "viewer.html"
_MARKER = re.compile(r"@@([A-Z_]+)@@")
_SCORE_FIELDS = ("score", "passed", "threshold", "kind")


def _package_text(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _b64(shown: Shown | None) -> str:
    return base64.b64encode(shown.data).decode("ascii") if shown else ""


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value)[:200])


def _score_html(score: dict | None) -> str:
    if score is None:
        return '<p class="note">no score stored yet</p>'
    rows = []
    for name in _SCORE_FIELDS:
        if name in score and not isinstance(score[name], (dict, list)):
            css = ' class="pass"' if score[name] is True else (' class="fail"' if score[name] is False else "")
            rows.append(f"<tr><td>{name}</td><td{css}>{_value(score[name])}</td></tr>")
    parts = score.get("parts")
    if isinstance(parts, dict):
        rows += [f"<tr><td>{html.escape(str(k)[:80])}</td><td>{_value(v)}</td></tr>"
                 for k, v in list(parts.items())[:20] if not isinstance(v, (dict, list))]
    whole = html.escape(json.dumps(score, indent=1, sort_keys=True, default=str))
    return (f'<table id="score">{"".join(rows)}</table>'
            f"<details><summary>validation_score.json</summary><pre>{whole}</pre></details>")


def _image_html(image: Shown | None) -> str:
    if image is None:
        return '<p class="note">no image stored</p>'
    return (f'<img id="prompt-image" alt="{html.escape(image.label)}" title="{html.escape(image.label)}" '
            f'src="data:image/png;base64,{_b64(image)}">')


def _problems_html(problems: list[str]) -> str:
    return "".join(f'<p class="note problem">{html.escape(p)}</p>' for p in problems)


def render_page(data: ViewerData) -> bytes:
    """The page's bytes (UTF-8). Markers are filled in one pass, so text from the store (a prompt
    that reads ``@@SCRIPT@@``) is never filled in again; every text is HTML-escaped."""
    script = _package_text("viewer.js")
    if "</script" in script.lower():
        raise ValueError("viewer.js must not contain '</script'")
    shown = [s.label for s in (data.image, data.mesh, data.splat) if s]
    values = {
        "TITLE": html.escape(f"{data.prompt[:80]} ({data.key})"),
        "PROMPT": html.escape(data.prompt),
        "KEY": html.escape(data.key),
        "SEED": str(int(data.seed)),
        "VERSIONS": html.escape(", ".join(shown) or "nothing stored yet"),
        "FRAME": data.frame if data.frame in ("y_up", "y_down") else "y_up",
        "IMAGE": _image_html(data.image) + _problems_html(data.problems),
        "SCORE": _score_html(data.score),
        "SPLAT_SOURCE": html.escape(data.splat.label if data.splat else "none"),
        "MESH": _b64(data.mesh),
        "SPLAT": _b64(data.splat),
        "SPLAT_TYPE": "spz" if data.splat and data.splat.file_type == "spz" else "ply",
        "IMPORTMAP": import_map().replace("<", "\\u003c"),  # never a '</script' inside the map
        "SCRIPT": script,
    }
    return _MARKER.sub(lambda m: values[m[1]], _package_text("page.html")).encode("utf-8")


def viewer_html(artifacts: ArtifactStore, ledger: Ledger, key: str) -> bytes:
    """The viewer page of generation ``key`` from its latest stored versions (what ``threegen get KEY
    -o DIR`` writes as ``viewer.html``, ``threegen view`` serves at ``/g/KEY``, and asset metadata
    can link). ``UnknownGeneration`` if the ledger lacks ``key``."""
    return render_page(load_generation(artifacts, ledger, key))
