"""The embedded comp 2 generator on real meshes: the pipeline's own refined mesh (the embedded backends, "a red
mug") and meshes small enough to travel whole. Every module is checked by the real comp 2 checker (Node with
three@0.183.2) and decoded by three itself in Node, and compared with the mesh it came from."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import trimesh

from threegen_dagster.backends.decimate import Decimate
from threegen_dagster.backends.inflate import Inflate
from threegen_dagster.backends.matting import FloodFill
from threegen_dagster.backends.procedural import Procedural
from threegen_dagster.rounds.comp2_check import CHECKER, Comp2Limits, check_module, checker_ready
from threegen_dagster.rounds.comp2_generate import (HALF, LITERAL_BUDGET, Comp2Error, generate_module, glb_to_module,
                                                    literal_bytes, load_mesh)

needs_node = pytest.mark.skipif(not checker_ready(), reason="the Node checker (three@0.183.2) is not installed: "
                                "run scripts/install_node_checker.sh (make test does)")

DECODE = """
import * as THREE from "@THREE@";
import { readFileSync } from "node:fs";
const source = readFileSync(process.argv[2], "utf8");
const mod = await import("data:text/javascript;base64," + Buffer.from(source).toString("base64"));
const mesh = mod.default(THREE).children[0];
const g = mesh.geometry;
console.log(JSON.stringify({position: Array.from(g.attributes.position.array),
  color: Array.from(g.attributes.color.array),
  index: Array.from(g.index.array), material: mesh.material.type, vertexColors: mesh.material.vertexColors}));
"""


def decode_in_node(source: str, tmp_path) -> dict:
    """What three r183 builds from the module: positions, linear colours and the index."""
    three = (CHECKER / "node_modules" / "three" / "build" / "three.module.js").as_uri()
    (tmp_path / "decode.mjs").write_text(DECODE.replace("@THREE@", three))
    (tmp_path / "module.js").write_text(source)
    done = subprocess.run(["node", str(tmp_path / "decode.mjs"), str(tmp_path / "module.js")], capture_output=True,
                          text=True, timeout=60, check=True)
    out = json.loads(done.stdout)
    return {"position": np.array(out["position"]).reshape(-1, 3), "color": np.array(out["color"]).reshape(-1, 3),
            "index": np.array(out["index"]).reshape(-1, 3), "material": out["material"],
            "vertexColors": out["vertexColors"]}


@pytest.fixture(scope="module")
def red_mug_glb() -> bytes:
    """The refined mesh the embedded pipeline makes for "a red mug" (seed 3), as the GLB it stores."""
    image = FloodFill()(Procedural()("a red mug", 3))
    return Decimate()(Inflate()(image, 3)).export(file_type="glb")


def coloured_sphere() -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=3)  # 642 vertices, 1280 faces: fits whole
    sphere.apply_scale((0.3, 0.8, 0.5))
    sphere.apply_translation((2.0, -1.0, 0.5))  # off centre and out of the cube: the generator normalises
    rgb = np.stack([(sphere.vertices[:, 1] + 1.8) / 1.6 * 255, np.full(len(sphere.vertices), 40),
                    np.linspace(0, 255, len(sphere.vertices))], axis=1).clip(0, 255).astype(np.uint8)
    sphere.visual = trimesh.visual.ColorVisuals(sphere, vertex_colors=np.hstack([rgb, np.full((len(rgb), 1), 255)]))
    return sphere


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


@needs_node
def test_the_pipelines_mesh_becomes_a_module_that_passes_every_rule(red_mug_glb, tmp_path):
    module = glb_to_module(red_mug_glb)
    report = check_module(module.data)
    assert report.ok, report.summary()
    assert 1000 < module.faces < 20_000 and report.metrics["vertices"] == module.vertices
    assert max(abs(v) for corner in ("min", "max") for v in report.metrics["bbox"][corner]) <= HALF + 1e-6
    assert module.source.index("function reader") < module.source.index("export default function generate(THREE)")
    # decimated to fill the budget (the search stops within 1% of the target), the count exactly the checker's
    assert 0.98 * LITERAL_BUDGET < module.literal_bytes <= LITERAL_BUDGET
    exact = Comp2Limits(literal_bytes=module.literal_bytes)
    assert check_module(module.data, exact).ok
    over = check_module(module.data, Comp2Limits(literal_bytes=module.literal_bytes - 1))
    assert over.rules == ["LITERAL_BUDGET_EXCEEDED"], over.summary()
    # three decodes what was meant: the mug's red, its height along Y filling the normalised cube
    decoded = decode_in_node(module.source, tmp_path)
    assert len(decoded["index"]) == module.faces and decoded["vertexColors"] is True
    assert decoded["position"][:, 1].max() == pytest.approx(HALF, abs=1e-6)
    mean = decoded["color"].mean(axis=0)
    assert mean[0] > 4 * mean[1] and mean[0] > 4 * mean[2], mean


@needs_node
def test_a_smaller_budget_decimates_further_and_still_fits(red_mug_glb):
    mesh = load_mesh(red_mug_glb)
    full = glb_to_module(red_mug_glb)
    small = generate_module(mesh, literal_budget=12_000)
    assert small.faces < full.faces / 2 and small.literal_bytes <= 12_000
    assert check_module(small.data, Comp2Limits(literal_bytes=12_000)).ok


@needs_node
def test_a_mesh_that_fits_travels_whole_and_three_rebuilds_it(tmp_path):
    sphere = coloured_sphere()
    module = generate_module(sphere)
    assert (module.vertices, module.faces) == (642, 1280)
    assert check_module(module.data).ok
    decoded = decode_in_node(module.source, tmp_path)
    # the input, centred and scaled so its longest side is 2 * HALF
    lo, hi = sphere.vertices.min(axis=0), sphere.vertices.max(axis=0)
    expected = (sphere.vertices - (lo + hi) / 2) * (2 * HALF / (hi - lo).max())
    step = 2 * HALF / ((1 << module.position_bits) - 1)
    distance, nearest = trimesh.proximity.cKDTree(expected).query(decoded["position"])
    assert distance.max() <= step, (distance.max(), step)
    assert len(set(nearest)) == 642  # every input vertex, once
    # the same triangles, corner for corner (up to the walk's order)
    assert {tuple(f) for f in nearest[decoded["index"]]} == {tuple(f) for f in sphere.faces}
    # colours: sRGB bytes quantised to 6 bits, turned linear by THREE.Color
    want = srgb_to_linear(np.round(sphere.visual.vertex_colors[nearest, :3] / 255 * 63) / 63)
    assert np.abs(decoded["color"] - want).max() < 1e-5


def test_vertices_no_triangle_uses_change_nothing():
    sphere = coloured_sphere()
    stray = trimesh.Trimesh(np.vstack([sphere.vertices, [[100.0, -50.0, 7.0]]]), sphere.faces, process=False,
                            vertex_colors=np.vstack([sphere.visual.vertex_colors, [[0, 255, 0, 255]]]))
    assert generate_module(stray).source == generate_module(sphere).source


def test_the_same_mesh_gives_the_same_bytes_in_another_process(red_mug_glb, tmp_path):
    (tmp_path / "mug.glb").write_bytes(red_mug_glb)
    here = glb_to_module(red_mug_glb).source
    assert glb_to_module(red_mug_glb).source == here
    code = ("import sys; from threegen_dagster.rounds.comp2_generate import glb_to_module; "
            "sys.stdout.write(glb_to_module(open(sys.argv[1], 'rb').read()).source)")
    there = subprocess.run([sys.executable, "-c", code, str(tmp_path / "mug.glb")], capture_output=True, text=True,
                           check=True, timeout=300, env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert there == here


def test_only_allowlisted_three_members_and_no_banned_names():
    source = generate_module(coloured_sphere()).source
    used = set(re.findall(r"THREE\.(\w+)", source))
    assert used == {"Color", "SRGBColorSpace", "BufferGeometry", "BufferAttribute", "MeshStandardMaterial",
                    "DoubleSide", "Group", "Mesh"}
    for banned in ("eval", "Function(", "Date", "performance", "Math.random", "import ", "require", "async",
                   "globalThis", "self", "process", "THREE["):
        assert banned not in source
    assert literal_bytes(source) < LITERAL_BUDGET


@pytest.mark.parametrize("make, match", [
    (lambda: b"not a glb", "the GLB cannot be read"),
    (lambda: trimesh.Trimesh(np.zeros((3, 3)), [[0, 1, 2]]).export(file_type="glb"), "flat to a point"),
])
def test_bad_meshes_are_refused_with_the_reason(make, match):
    with pytest.raises(Comp2Error, match=match):
        glb_to_module(make())


def test_a_budget_nothing_fits_is_refused(red_mug_glb):
    with pytest.raises(Comp2Error, match="even 64 triangles do not fit a literal budget of 300 bytes"):
        generate_module(load_mesh(red_mug_glb), literal_budget=300)
