"""Driving the system Chromium (Debian's package, installed by scripts/install_browser.sh) with
Playwright, and reading what it drew. Playwright never downloads a browser here."""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

ARGS = ["--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-quic"]
READY = "body[data-state=ready], body[data-state=error]"  # a selector: the page's CSP forbids eval


def chromium_path() -> str | None:
    for candidate in (os.environ.get("THREEGEN_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Visit:
    """What a page did: console errors, uncaught exceptions, and every URL it requested."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


def open_viewer(page, url: str, timeout_s: float = 120) -> Visit:
    visit = Visit()
    page.on("console", lambda m: visit.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: visit.errors.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: visit.errors.append(f"request failed: {r.url[:120]} {r.failure}"))
    page.on("request", lambda r: visit.requests.append(r.url))
    page.goto(url)
    page.wait_for_selector(READY, state="attached", timeout=timeout_s * 1000)
    return visit


def state(page) -> str:
    return page.evaluate("document.body.dataset.state + (window.__viewerError ? ': ' + window.__viewerError : '')")


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def reddish(rgb: np.ndarray) -> int:
    """Pixels of the object's colour ("a red mug": red well above green and blue); the page's
    background is a dark grey-blue (0x1d2027)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > 90) & (r > g + 50) & (r > b + 50)).sum())


def changed(before: np.ndarray, after: np.ndarray, threshold: int = 40) -> int:
    """How many pixels differ by more than ``threshold`` in some channel."""
    return int((np.abs(before - after).max(axis=-1) > threshold).sum())
