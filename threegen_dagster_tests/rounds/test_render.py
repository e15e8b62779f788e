"""Judge-style renders in the system Chromium (three r183, swiftshader WebGL): a GLB and comp 2 modules (one the
embedded generator wrote) drawn with the judges' view sets, camera, backgrounds and grid, read back pixel by
pixel. Skipped, saying why, only when no Chromium is installed."""

import base64
import hashlib
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from threegen_dagster.rounds import render

from threegen_dagster.rounds.comp2_generate import generate_module
from threegen_dagster.rounds.render import (GRAY_VIEWS, GRID_GAP_PX, GRID_TILE_PX, VIEW_PX, WHITE_VIEWS, JudgeRenderer,
                                            RenderError, find_chromium, preview_markdown)

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="no Chromium found (/usr/bin/chromium): run "
                                    "scripts/install_browser.sh (make test does)")


@pytest.fixture(scope="module")
def renderer():
    if find_chromium() is None:
        pytest.skip("no Chromium found (/usr/bin/chromium): run scripts/install_browser.sh (make test does)")
    with JudgeRenderer() as r:  # one browser for the whole module, as for a batch
        yield r


def box(extents, centre, rgb) -> trimesh.Trimesh:
    mesh = trimesh.creation.box(extents=extents)
    mesh.apply_translation(centre)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile([*rgb, 255], (len(mesh.vertices), 1)))
    return mesh


def two_boxes_glb() -> bytes:
    """A red box on the +Z (front) side and a blue one behind it: 0.4 wide, 0.6 high, 0.7 deep in all."""
    scene = trimesh.Scene([box((0.4, 0.6, 0.35), (0, 0, 0.175), (230, 20, 20)),
                           box((0.4, 0.6, 0.35), (0, 0, -0.175), (20, 20, 230))])
    return scene.export(file_type="glb")


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def red(image):
    return (image[..., 0] > 60) & (image[..., 0] > 3 * image[..., 1]) & (image[..., 0] > 3 * image[..., 2])


def blue(image):
    return (image[..., 2] > 60) & (image[..., 2] > 3 * image[..., 0]) & (image[..., 2] > 3 * image[..., 1])


def green(image):
    return (image[..., 1] > 60) & (image[..., 1] > 2 * image[..., 0]) & (image[..., 1] > 2 * image[..., 2])


def background(image, value) -> np.ndarray:
    return np.all(image == value, axis=-1)


@pytest.fixture(scope="module")
def boxes(renderer, tmp_path_factory):
    """The two boxes' GLB rendered once, and the folder it went to."""
    folder = tmp_path_factory.mktemp("boxes")
    return renderer.render(two_boxes_glb(), "glb", folder), folder


def test_a_glb_is_drawn_with_the_judges_views_camera_and_backgrounds(boxes):
    out, tmp_path = boxes
    assert out.console == [] and out.three == "183"
    assert [p.relative_to(tmp_path).as_posix() for p in out.paths()] == (
        [f"white/{v.name}.png" for v in WHITE_VIEWS] + [f"gray/{v.name}.png" for v in GRAY_VIEWS] + ["grid.png"])
    white = {name: rgb(path) for name, path in out.white.items()}
    gray = {name: rgb(path) for name, path in out.gray.items()}
    for name, image in white.items():
        assert image.shape == (VIEW_PX, VIEW_PX, 3)
        assert background(image[:8, :8], 255).all(), name  # white, every corner pixel
        assert (red(image) | blue(image)).sum() > 20_000, name  # and the object in every view
    for name, image in gray.items():
        assert image.shape == (VIEW_PX, VIEW_PX, 3) and background(image[:8, :8], 128).all(), name
        # the same light on the object, only the background differs
        assert (image[480:544, 480:544] == white[name][480:544, 480:544]).all(), name
    # theta 0 is the front (+Z): the red box faces the front views, the blue one the back
    assert red(white["front_left"]).sum() > 5 * blue(white["front_left"]).sum()
    assert blue(white["back"]).sum() > 5 * red(white["back"]).sum()
    # seen from +X (right, theta 90) the front is on the left of the picture; from -X on the right
    for name, front_half in (("right", slice(0, 512)), ("left", slice(512, 1024))):
        assert red(white[name][:, front_half]).sum() > 0.95 * red(white[name]).sum() > 10_000, name
    # fov 49.1 at radius 2: the near face (x = 0.2, 1.8 from the camera) 0.6 high is this many pixels
    rows = np.flatnonzero((red(white["right"]) | blue(white["right"])).any(axis=1))
    expected = 0.6 / (2 * 1.8 * math.tan(math.radians(49.1 / 2))) * VIEW_PX
    assert abs((rows[-1] - rows[0] + 1) - expected) < 0.03 * expected, (rows[-1] - rows[0] + 1, expected)
    # grid: 2 x 2 tiles of 518 on gray, black gaps of 5, the object in each tile
    grid = rgb(out.grid)
    size = 2 * GRID_TILE_PX + GRID_GAP_PX
    assert grid.shape == (size, size, 3)
    assert (grid[:, GRID_TILE_PX:GRID_TILE_PX + GRID_GAP_PX] == 0).all()
    assert (grid[GRID_TILE_PX:GRID_TILE_PX + GRID_GAP_PX, :] == 0).all()
    for top in (0, GRID_TILE_PX + GRID_GAP_PX):
        for left in (0, GRID_TILE_PX + GRID_GAP_PX):
            tile = grid[top:top + GRID_TILE_PX, left:left + GRID_TILE_PX]
            assert background(tile[:6, :6], 128).all() and (~background(tile, 128)).sum() > 15_000


def test_the_generators_module_renders_as_its_mesh(renderer, tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=np.tile([30, 200, 40, 255], (642, 1)))
    out = renderer.render(generate_module(sphere).data, "js", tmp_path)
    assert out.console == [] and len(out.white) == 8 and len(out.gray) == 4
    for name, path in out.white.items():
        image = rgb(path)
        # normalised to 0.98 across: a disc of radius ~ 0.49 / (2 tan(24.55 deg)) x 1024 = 275 px at distance 2
        assert 180_000 < green(image).sum() < 280_000, (name, green(image).sum())
        assert green(image)[512, 512], name
    assert green(rgb(out.grid)).sum() > 4 * 40_000


def test_a_small_hand_written_module(renderer, tmp_path):
    source = b"""
function part(THREE, colour, x) {
  const mesh = new THREE.Mesh(new THREE.BoxGeometry(0.3, 0.3, 0.3), new THREE.MeshStandardMaterial({ color: colour }));
  mesh.position.x = x;
  return mesh;
}
export default function generate(THREE) {
  const group = new THREE.Group();
  group.add(part(THREE, 0xdd2222, -0.2), part(THREE, 0x2222dd, 0.2));
  return group;
}
"""
    out = renderer.render(source, "js", tmp_path)
    front = rgb(out.white["front_below"])  # theta 0: -X on the left of the picture
    assert red(front[:, :512]).sum() > 10_000 and blue(front[:, 512:]).sum() > 10_000
    assert red(front[:, 512:]).sum() == 0 and blue(front[:, :512]).sum() == 0


FAILING = [
    (b"export default function generate(THREE) { throw new Error('boom at line 1'); }", "js", "boom at line 1"),
    (b"export default function generate(THREE) { return 42; }", "js", "generate\\(\\) did not return an Object3D"),
    (b"export default function generate(THREE) { return new THREE.Group(; }", "js", "SyntaxError|Unexpected token"),
    (b"not a glb at all", "glb", "the glb output failed to render .*not valid JSON"),
]


def test_an_output_that_fails_names_why_and_writes_nothing(renderer, tmp_path):
    for source, kind, match in FAILING:
        with pytest.raises(RenderError, match=match):
            renderer.render(source, kind, tmp_path / "out")
        assert not (tmp_path / "out").exists()
    # the browser is still good for the next output
    assert len(renderer.render(b"export default function generate(THREE) { return new THREE.Group(); }", "js",
                               tmp_path / "next").paths()) == 13


def test_the_vendored_three_is_r183_as_listed():
    folder = Path(render.__file__).parent / "judge_page" / "vendor"
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        digest, name = line.split(maxsplit=1)
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    assert 'const t="183"' in (folder / "three/build/three.core.min.js").read_text()  # three.REVISION


@needs_chromium
def test_bad_calls_are_refused(tmp_path):
    with pytest.raises(RenderError, match="cannot render a 'ply': only js, glb"):
        JudgeRenderer().render(b"", "ply", tmp_path)
    with pytest.raises(RenderError, match="not started: use it in a with block"):
        JudgeRenderer().render(b"", "js", tmp_path)
    with pytest.raises(RenderError, match="no Chromium found at .*missing: run scripts/install_browser.sh"):
        JudgeRenderer(chromium=str(tmp_path / "missing"))


def test_preview_markdown_shows_the_grid_and_the_white_views(boxes):
    markdown = preview_markdown(boxes[0], thumb_px=64)
    images = re.findall(r"!\[([\w]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert [name for name, _ in images] == ["grid"] + [v.name for v in WHITE_VIEWS]
    assert Image.open(io.BytesIO(base64.b64decode(images[0][1]))).size == (128, 128)
    assert all(Image.open(io.BytesIO(base64.b64decode(data))).size == (64, 64) for _, data in images[1:])
