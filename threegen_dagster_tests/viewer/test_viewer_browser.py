"""The viewer page in the real (system) Chromium: it loads with no console error, fetches nothing,
draws the object in its colour in both the mesh and the splat view, and turns under the mouse."""

from __future__ import annotations

import json
from dataclasses import replace

from threegen_dagster.viewer import load_generation, render_page, viewer_html
from threegen_dagster.viewer.source import Shown

from .browser import changed, open_viewer, pixels, reddish, state

VIEWS = ("mesh", "splat")


def shoot(page, name: str) -> dict:
    """Each view's canvas as pixels (and as a PNG among the page's screenshots)."""
    page.screenshot(path=str(page.shots / f"{name}-page.png"))
    return {view: pixels(page.locator(f"#{view} canvas").screenshot(path=str(page.shots / f"{name}-{view}.png")))
            for view in VIEWS}


def until(page, probe, tries: int = 40):
    """``probe()`` until it is truthy, letting the page draw between tries; its last value."""
    value = probe()
    for _ in range(tries):
        if value:
            break
        page.wait_for_timeout(250)
        value = probe()
    return value


def drawn_in_red(page, name: str, views: tuple[str, ...] = VIEWS) -> dict:
    shots = {}

    def probe():
        shots.update(shoot(page, name))
        return all(reddish(shots[view]) > 2000 for view in views)

    until(page, probe)
    return shots


def check_page(page, url: str) -> None:
    visit = open_viewer(page, url)
    assert state(page) == "ready"
    assert visit.errors == []
    fetched = [u for u in visit.requests if u != url and not u.startswith(("data:", "blob:"))]
    assert fetched == []  # everything is in the page
    before = drawn_in_red(page, "loaded")
    for view in VIEWS:
        assert reddish(before[view]) > 2000, f"the {view} view shows no red object"
        assert page.locator(f"#{view} .note").inner_text() == ""
    box = page.locator("#mesh canvas").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 220, y + 120, steps=12)
    page.mouse.up()
    after = {}

    def turned():
        after.update(shoot(page, "turned"))
        return all(changed(before[view], after[view]) > 2000 for view in VIEWS)

    until(page, turned)
    for view in VIEWS:  # the dragged view turned, and the splat view turned with it
        assert changed(before[view], after[view]) > 2000, f"the {view} view did not turn"
        assert reddish(after[view]) > 2000
    assert visit.errors == []


def test_viewer_html_from_file(red_mug, page, tmp_path) -> None:
    path = tmp_path / "viewer.html"
    path.write_bytes(viewer_html(red_mug.artifacts, red_mug.ledger, red_mug.key))
    check_page(page, path.as_uri())
    assert page.locator("#prompt-image").evaluate("img => img.naturalWidth") == 512
    score = json.loads(red_mug.artifacts.load(red_mug.key, "validation_score")[1])
    assert page.locator("#score tr").first.locator("td").all_inner_texts() == ["score", f"{score['score']:.4g}"]
    assert page.locator("h1").inner_text() == "a red mug"


def test_the_niantic_spz_and_the_ply_draw_the_same_splat(red_mug, page, tmp_path) -> None:
    """Spark reads the re-wrapped SN17 SPZ (what the page embeds) in the same frame as the 3DGS PLY:
    the two pages' splat views match."""
    data = load_generation(red_mug.artifacts, red_mug.ledger, red_mug.key)
    ply = Shown(red_mug.artifacts.load(red_mug.key, "gaussian_splat")[1], "gaussian_splat", 1, file_type="ply")
    seen = {}
    for name, splat in (("spz", data.splat), ("ply", ply)):
        path = tmp_path / f"{name}.html"
        path.write_bytes(render_page(replace(data, splat=splat)))
        visit = open_viewer(page, path.as_uri())
        assert state(page) == "ready" and visit.errors == []
        assert page.locator("#splat h2").inner_text() == f"splat ({splat.label})"
        seen[name] = drawn_in_red(page, name, ("splat",))["splat"]
        assert reddish(seen[name]) > 2000
    assert data.splat.file_type == "spz"
    assert changed(seen["spz"], seen["ply"], threshold=60) < 0.02 * seen["ply"].shape[0] * seen["ply"].shape[1]


def test_viewer_page_from_the_view_server(view_server, red_mug, page) -> None:
    """`threegen view` serves the same page, and it behaves the same over http://127.0.0.1."""
    check_page(page, f"{view_server}/g/{red_mug.key}")
