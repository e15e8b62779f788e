"""Judge-style renders of a round's outputs: SN17's 8 white views, 4 gray views and the 2x2 grid, drawn as the
judges' render service draws them (three r183 in Chromium, ACES filmic tone mapping, sRGB output, their camera,
lights and view sets; ``SN17-NOW.md`` section 5), for a comp 2 module (``generate(THREE)``) or a GLB.

One headless Chromium (the system's, driven by Playwright) and one page per batch, served on a virtual origin from
memory: the page (``judge_page/``), the vendored three.js 0.183.2 and each output's bytes. Nothing is fetched from
the network. The judges open a fresh browser context per output; here the page (and its renderers: the grid's
environment map takes seconds to build in software WebGL) is kept across outputs, each output drawn in its own
scene and disposed after, and a page an output failed in is closed and replaced. No Dagster imports."""

from __future__ import annotations

import base64
import io
import mimetypes
import re
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from PIL import Image

ORIGIN = "http://judge-render.invalid"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
KINDS = {"js": "text/javascript", "glb": "model/gltf-binary"}


@dataclass(frozen=True)
class View:
    name: str
    theta: float  # degrees around Y; 0 is the front (+Z)
    phi: float  # degrees of elevation; negative is above


# the judges' view sets (shared/subnet_common/render.py) and camera (render-service-js)
WHITE_VIEWS = (View("front_left", 30, 0), View("front_right", 330, 0), View("front_below", 0, 15),
               View("front_above", 0, -30), View("right", 90, 0), View("back", 180, 0), View("left", 270, 0),
               View("top_down", 0, -90))
GRAY_VIEWS = WHITE_VIEWS[:4]
GRID_VIEWS = tuple(View(f"grid_{t}", t, -15) for t in (24, 120, 216, 312))
WHITE_BG, GRAY_BG = "ffffff", "808080"
VIEW_PX, GRID_TILE_PX, GRID_GAP_PX = 1024, 518, 5
CAMERA = {"camRadius": 2.0, "camFovDeg": 49.1}


class RenderError(RuntimeError):
    """An output that could not be rendered (the browser is missing, the page failed, the module threw)."""


@dataclass
class Rendered:
    """Where one output's renders were written: ``white/{view}.png``, ``gray/{view}.png`` and ``grid.png``
    (the judges' storage layout)."""

    white: dict[str, Path] = field(default_factory=dict)
    gray: dict[str, Path] = field(default_factory=dict)
    grid: Path | None = None
    console: list[str] = field(default_factory=list)  # the page's console warnings (errors raise)
    three: str = ""  # THREE.REVISION the page drew with

    def paths(self) -> list[Path]:
        return [*self.white.values(), *self.gray.values(), *([self.grid] if self.grid else [])]


def find_chromium(explicit: str | None = None) -> str | None:
    """``explicit`` if given (THREEGEN_CHROMIUM through settings) and there, else Debian's chromium."""
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


_SERVED = re.compile(r"(render\.html|judge\.js|vendor/three/[\w/.-]+\.js)")


def _page_file(path: str) -> bytes:
    if not _SERVED.fullmatch(path) or ".." in path:
        raise FileNotFoundError(path)
    return resources.files(__package__).joinpath("judge_page", *path.split("/")).read_bytes()


class JudgeRenderer:
    """One Chromium for a batch: ``with JudgeRenderer() as r: r.render(data, "js", out_dir)``."""

    def __init__(self, chromium: str | None = None, timeout_s: float = 60.0) -> None:
        self.chromium = find_chromium(chromium)
        if self.chromium is None:
            raise RenderError(f"no Chromium found at {chromium or '/usr/bin/chromium'}: run scripts/install_browser.sh"
                              " or set THREEGEN_CHROMIUM")
        self.timeout_ms = timeout_s * 1000
        self._playwright = self._browser = self._context = self._page = None
        self._count, self._output = 0, None
        self._errors: list[str] = []
        self._warnings: list[str] = []

    def __enter__(self) -> JudgeRenderer:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:
            raise RenderError(f"Playwright is not installed ({exc}): pip install playwright") from None
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=self.chromium, args=CHROMIUM_ARGS)
        except Exception:
            self._playwright.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._close_page()
            if self._browser is not None:
                self._browser.close()
        finally:
            self._playwright.stop()
            self._browser = self._playwright = None

    def _open_page(self):
        """The batch's page: three, the judges' rigs and their renderers (the studio rig's environment map costs
        seconds to build in software WebGL, so it is built once per page, not once per output)."""
        if self._page is not None:
            return self._page
        context = self._browser.new_context(viewport={"width": VIEW_PX, "height": VIEW_PX}, service_workers="block")
        try:
            context.route("**/*", self._serve)
            page = context.new_page()
            page.on("console", lambda m: (self._errors if m.type == "error" else self._warnings).append(m.text)
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: self._errors.append(f"uncaught: {e}"))
            page.set_default_timeout(self.timeout_ms)
            page.goto(f"{ORIGIN}/render.html")
            page.wait_for_function("window.__ready === true", timeout=self.timeout_ms)
        except Exception as exc:
            context.close()
            raise RenderError(f"the render page did not start ({type(exc).__name__}): "
                              f"{'; '.join(self._errors)[:500] or str(exc)[:300]}") from None
        self._context, self._page = context, page
        return page

    def _close_page(self) -> None:
        if self._context is not None:
            try:
                self._context.close()
            finally:
                self._context = self._page = None

    def render(self, data: bytes, kind: str, out_dir: Path) -> Rendered:
        """Render one output (``kind`` "js" or "glb") into ``out_dir``; raises ``RenderError`` naming the cause.
        After a failure the next output gets a fresh page."""
        if kind not in KINDS:
            raise RenderError(f"cannot render a {kind!r}: only {', '.join(KINDS)}")
        if self._browser is None:
            raise RenderError("JudgeRenderer is not started: use it in a with block")
        self._count += 1
        self._output = (f"/output/{self._count}.{kind}", data, kind)
        self._errors, self._warnings = [], []
        try:
            page = self._open_page()
            out = Rendered(console=self._warnings, three=str(page.evaluate("window.__revision")))
            white = self._call(page, kind, WHITE_VIEWS, VIEW_PX, WHITE_BG, "follow")
            gray = self._call(page, kind, GRAY_VIEWS, VIEW_PX, GRAY_BG, "follow")
            grid = self._call(page, kind, GRID_VIEWS, GRID_TILE_PX, GRAY_BG, "studio", mode="grid")
            if self._errors:
                raise RenderError(f"the render page reported: {'; '.join(self._errors)[:500]}")
        except Exception:
            self._close_page()  # whatever the output did to the page stays with it
            raise
        finally:
            self._output = None
        out_dir = Path(out_dir)
        for folder, views, shots, target in (("white", WHITE_VIEWS, white, out.white),
                                             ("gray", GRAY_VIEWS, gray, out.gray)):
            (out_dir / folder).mkdir(parents=True, exist_ok=True)
            for view, shot in zip(views, shots, strict=True):
                target[view.name] = _write_png(out_dir / folder / f"{view.name}.png", shot)
        out.grid = _write_png(out_dir / "grid.png", grid)
        return out

    def _call(self, page, kind: str, views, size: int, background: str, lighting: str, mode: str = "views"):
        params = {"kind": kind, "url": ORIGIN + self._output[0], "mode": mode, "imgSize": size,
                  "thetas": [v.theta for v in views], "phis": [v.phi for v in views], "gap": GRID_GAP_PX,
                  "bgColor": background, "lighting": lighting, **CAMERA}
        result = page.evaluate("params => window.judgeRender(params)", params)
        if "error" in result:
            raise RenderError(f"the {kind} output failed to render ({mode}, {lighting} lighting): {result['error']}")
        return result["data"]

    def _serve(self, route) -> None:
        url = route.request.url
        path = url.removeprefix(ORIGIN).split("?", 1)[0]
        if not url.startswith(ORIGIN + "/"):
            route.abort()  # the page never reaches the network
        elif self._output and path == self._output[0]:
            route.fulfill(status=200, body=self._output[1], content_type=KINDS[self._output[2]],
                          headers={"Cache-Control": "no-store"})
        else:
            try:
                body = _page_file(path.lstrip("/"))
            except (FileNotFoundError, IsADirectoryError, ValueError):
                route.fulfill(status=404, body=b"not found")
                return
            content_type = "text/javascript" if path.endswith(".js") else mimetypes.guess_type(path)[0]
            route.fulfill(status=200, body=body, content_type=content_type or "application/octet-stream")


def _write_png(path: Path, data_url: str) -> Path:
    prefix = "data:image/png;base64,"
    if not data_url.startswith(prefix):
        raise RenderError(f"the page returned something other than a PNG for {path.name}")
    path.write_bytes(base64.b64decode(data_url[len(prefix):]))
    return path


def _thumb(path: Path, size: int) -> str:
    image = Image.open(path).convert("RGB")
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return f"![{path.stem}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})"


def preview_markdown(rendered: Rendered, thumb_px: int = 128) -> str:
    """A markdown preview (data URIs, for asset metadata): the 2x2 grid, then the 8 white views in a row."""
    lines = []
    if rendered.grid:
        lines.append(_thumb(rendered.grid, thumb_px * 2))
    lines.append(" ".join(_thumb(p, thumb_px) for p in rendered.white.values()))
    return "\n\n".join(lines)

