"""The comp 2 checker on real modules, run in Node with three@0.183.2: a valid module passes; for every
rule of the specification's "Failure Semantics" table, a module that breaks exactly that rule fails
with exactly that rule code (and nothing else)."""

import json
import subprocess

import pytest

from threegen_dagster.rounds.comp2_check import CHECKER, CheckerError, Comp2Limits, check_module, checker_ready

pytestmark = pytest.mark.skipif(not checker_ready(), reason="the Node checker is not installed: "
                                "run scripts/install_node_checker.sh (make test does)")


def module(body: str, before: str = "", after: str = "") -> bytes:
    """A module whose generate(THREE) runs ``body`` (``g`` is a Group with one small box in it)."""
    return f"""{before}
export default function generate(THREE) {{
  const g = new THREE.Group();
  const mat = new THREE.MeshStandardMaterial({{ color: 0x336699 }});
  g.add(new THREE.Mesh(new THREE.BoxGeometry(0.2, 0.2, 0.2), mat));
{body}
  return g;
}}
{after}""".encode()


VALID = module("""
  const legs = makeLegs(THREE, mat);
  g.add(legs);
  const pts = new THREE.Points(new THREE.BufferGeometry().setAttribute('position',
      new THREE.Float32BufferAttribute([0, 0.4, 0, 0.1, 0.4, 0], 3)), new THREE.PointsMaterial({ size: 0.01 }));
  g.add(pts);
  const tex = new THREE.DataTexture(new Uint8Array(4 * 16 * 16).fill(200), 16, 16);
  tex.needsUpdate = true;
  g.add(new THREE.Mesh(new THREE.SphereGeometry(0.1, 16, 8), new THREE.MeshBasicMaterial({ map: tex })));
  const v = new THREE.Vector3(1, 2, 3).multiplyScalar(THREE.MathUtils.clamp(0.05, 0, 1));
  g.position.y = -v.y * 0.5;
  label`template ${v.x} text`;
""", before="""
function label(parts) { return parts.join(''); }
function makeLegs(THREE, material) {
  const legs = new THREE.Group();
  for (let i = 0; i < 4; i++) {
    const leg = new THREE.Mesh(new THREE.CylinderGeometry(0.02, 0.02, 0.3), material);
    leg.position.set(i % 2 ? 0.15 : -0.15, -0.15, i < 2 ? 0.15 : -0.15);
    legs.add(leg);
  }
  return legs;
}""")

BREAKS = {
    "PARSE_ERROR": module("  const x = ;"),
    "MISSING_DEFAULT_EXPORT": b"function generate(THREE) { return new THREE.Group(); }\n",
    "MULTIPLE_TOP_LEVEL_EXPORTS": module("", after="export const extra = 1;"),
    "ASYNC_NOT_ALLOWED": module("").replace(b"export default function", b"export default async function"),
    "IDENTIFIER_NOT_ALLOWED": module("  console.log(g);"),
    "FORBIDDEN_IDENTIFIER": module("  const performance = 2;\n  g.scale.setScalar(performance / 2);"),
    "FORBIDDEN_THREE_API": module("  g.add(new THREE.Mesh(new THREE.BoxGeometry(0.1, 0.1, 0.1), new THREE.MeshLambertMaterial()));"),
    "THREE_AT_TOP_LEVEL": module("", before="const Box = THREE.BoxGeometry;"),
    "COMPUTED_PROPERTY_ACCESS": module("  g.add(new THREE['Mesh'](new THREE.BoxGeometry(0.1, 0.1, 0.1), mat));"),
    "LITERAL_BUDGET_EXCEEDED": module(f"  g.name = '{'a' * 51_201}';"),
    "EXECUTION_THREW": module("  g.add(helper());", after="const helper = () => new Error('never set');"),
    "INVALID_RETURN_TYPE": module("  return new THREE.Object3D();"),
    "EMPTY_SCENE": module("  return new THREE.Group();"),
    "TIMEOUT_EXCEEDED": module("  for (;;) { g.rotation.x += 1; }"),
    "HEAP_EXCEEDED": module("  const keep = [];\n  for (;;) keep.push(new Array(100000).fill(keep.length + 0.5));"),
    "CYCLE_DETECTED": module("  const inner = new THREE.Group();\n  g.add(inner);\n  inner.children.push(g);"),
    "VERTEX_LIMIT_EXCEEDED": module("  g.add(new THREE.Mesh(new THREE.BufferGeometry().setAttribute('position',"
                                    " new THREE.BufferAttribute(new Float32Array(3 * 250001), 3)), mat));"),
    "DRAW_CALL_LIMIT_EXCEEDED": module("  for (let i = 0; i < 200; i++) g.add(new THREE.Mesh(g.children[0].geometry, mat));"),
    "DEPTH_LIMIT_EXCEEDED": module("  let at = g;\n  for (let i = 0; i < 33; i++) { const n = new THREE.Group(); at.add(n); at = n; }"),
    "INSTANCE_LIMIT_EXCEEDED": module("  g.add(new THREE.InstancedMesh(new THREE.BoxGeometry(0.1, 0.1, 0.1), mat, 50001));"),
    "TEXTURE_DATA_EXCEEDED": module("  const t = new THREE.DataTexture(new Uint8Array(4 * 1024 * 1025), 1024, 1025);\n"
                                    "  g.add(new THREE.Mesh(new THREE.BoxGeometry(0.1, 0.1, 0.1), new THREE.MeshStandardMaterial({ map: t })));"),
    "BOUNDING_BOX_OUT_OF_RANGE": module("  g.add(new THREE.Mesh(new THREE.BoxGeometry(0.2, 1.2, 0.2), mat));"),
}
# the specification's "Failure Semantics" rule codes (RENDER_RUN_FAILED comes from the judges' render)
SPEC_CODES = {"FILE_SIZE_EXCEEDED", "MISSING_DEFAULT_EXPORT", "MULTIPLE_TOP_LEVEL_EXPORTS", "ASYNC_NOT_ALLOWED",
              "IDENTIFIER_NOT_ALLOWED", "FORBIDDEN_IDENTIFIER", "FORBIDDEN_THREE_API", "THREE_AT_TOP_LEVEL",
              "COMPUTED_PROPERTY_ACCESS", "LITERAL_BUDGET_EXCEEDED", "EXECUTION_THREW", "INVALID_RETURN_TYPE",
              "EMPTY_SCENE", "TIMEOUT_EXCEEDED", "HEAP_EXCEEDED", "CYCLE_DETECTED", "VERTEX_LIMIT_EXCEEDED",
              "DRAW_CALL_LIMIT_EXCEEDED", "DEPTH_LIMIT_EXCEEDED", "INSTANCE_LIMIT_EXCEEDED", "TEXTURE_DATA_EXCEEDED",
              "BOUNDING_BOX_OUT_OF_RANGE"}


def test_a_valid_module_passes_with_its_measures():
    report = check_module(VALID)
    assert report.ok, report.summary()
    assert report.three == "0.183.2"
    m = report.metrics
    assert m["draw_calls"] == 7 and m["depth"] == 2 and m["texture_bytes"] == 4 * 16 * 16
    assert all(-0.5 <= c <= 0.5 for corner in m["bbox"].values() for c in corner)


def test_every_spec_rule_has_a_breaking_module():
    assert set(BREAKS) | {"FILE_SIZE_EXCEEDED"} == SPEC_CODES | {"PARSE_ERROR"}


@pytest.mark.parametrize("rule", sorted(BREAKS))
def test_a_module_breaking_one_rule_fails_with_its_code(rule):
    # V8 collects ever harder near its heap cap: on a busy machine that can take longer than the 5 s rule,
    # so the heap case gets time enough to meet its own rule
    report = check_module(BREAKS[rule], Comp2Limits(time_s=120) if rule == "HEAP_EXCEEDED" else Comp2Limits(),
                          timeout_s=180)
    assert not report.ok
    assert set(report.rules) == {rule}, report.summary()
    assert all(f.detail for f in report.failures)


def test_file_size_is_refused_before_node_runs():
    big = VALID + b"// " + b"x" * 1_048_576 + b"\n"
    report = check_module(big)
    assert report.rules == ["FILE_SIZE_EXCEEDED"] and "1,048,576" in report.failures[0].detail
    assert check_module(VALID, Comp2Limits(file_bytes=len(VALID))).ok  # the limit itself is allowed


def test_the_node_checker_alone_applies_the_size_limit(tmp_path):
    path = tmp_path / "m.js"
    path.write_bytes(VALID)
    done = subprocess.run(["node", str(CHECKER / "check.mjs"), str(path), json.dumps({"file_bytes": len(VALID) - 1})],
                          capture_output=True, timeout=60, check=True)
    answer = json.loads(done.stdout)
    assert not answer["ok"] and [f["rule"] for f in answer["failures"]] == ["FILE_SIZE_EXCEEDED"]


@pytest.mark.parametrize("body, detail", [
    ("  const T = THREE;", "aliased"),
    ("  const copy = { ...THREE };", "aliased or spread"),
    ("  g.add(build(THREE));", "not named THREE"),
    ("  g.userData.r = THREE.MathUtils.seededRandom(1);", "seededRandom"),
    ("  g.userData.u = THREE.MathUtils.generateUUID();", "generateUUID"),
])
def test_three_is_never_aliased_and_its_banned_members_are_refused(body, detail):
    report = check_module(module(body, after="function build(T) { return new T.Group(); }"))
    assert report.rules == ["FORBIDDEN_THREE_API"] and detail in report.failures[0].detail, report.summary()


@pytest.mark.parametrize("code", ["Math.random()", "new Date()", "eval('1')", "globalThis.x", "setTimeout(g)",
                                  "g.constructor"])
def test_banned_identifiers(code):
    report = check_module(module(f"  g.userData.x = {code};"))
    assert report.rules and set(report.rules) <= {"FORBIDDEN_IDENTIFIER"}, report.summary()


def test_memory_outside_the_js_heap_is_bounded_too():
    """A typed array lives outside V8's heap cap: the checker's process limit stops it (6 GB here)."""
    report = check_module(module("  const big = new Float32Array(1500000000);\n  big.fill(1);"))
    assert report.rules == ["HEAP_EXCEEDED"] and "outside the JS heap" in report.failures[0].detail


def test_not_utf8_is_a_parse_error():
    report = check_module(VALID + b"\n// \xff\xfe\n")
    assert report.rules == ["PARSE_ERROR"] and "UTF-8" in report.failures[0].detail


def test_a_missing_checker_is_an_error_never_a_pass(tmp_path):
    with pytest.raises(CheckerError, match="install_node_checker.sh"):
        check_module(VALID, folder=tmp_path)


@pytest.mark.parametrize("reach", [
    "Object.getOwnPropertyDescriptor(Object.getPrototypeOf(helper), 'constructor').value('return process')()",
    "helper['constr' + 'uctor']('return process')()",
    "helper()['pro' + 'cess']",  # a sloppy function's `this`: the global object
])
def test_a_module_that_evades_the_static_rules_still_reaches_nothing(reach, tmp_path):
    """A module is untrusted code (a model's answer, another miner's CDN output). One that gets past the AST
    checks to the process finds eval and Function off and no `process` on the global object; were it to get
    one, Node's permission model lets it write no file and start no process."""
    marker = tmp_path / "written"
    helper = "function helper() { return this; }"
    body = f"  const p = {reach};\n  p.getBuiltinModule('fs').writeFileSync({json.dumps(str(marker))}, 'x');"
    report = check_module(module(body, before=helper))
    assert not report.ok and report.rules == ["EXECUTION_THREW"], report.summary()
    assert not marker.exists()
    fetched = check_module(module("  helper()['fet' + 'ch']('http://127.0.0.1:9/');", before=helper))
    assert fetched.rules == ["EXECUTION_THREW"] and "is not a function" in fetched.failures[0].detail


def test_a_module_that_takes_the_checker_down_is_its_own_failure():
    """V8 aborting the whole checker (out of memory in a way its worker's limits do not catch) is the
    module's doing: a verdict (so the code model is asked again, or the embedded module used), not a
    CheckerError."""
    report = check_module(module("  const keep = [];\n"
                                 "  for (let i = 0; i < 100000; i++) { const a = new Uint8Array(1 << 20); a[0] = 1; "
                                 "keep.push(a); }"))
    assert not report.ok and report.rules == ["HEAP_EXCEEDED"], report.summary()


def test_a_nan_vertex_cannot_hide_a_box_out_of_bounds():
    """A NaN makes every comparison false, so a bounding box holding one would pass any bound (here it hides a
    10-unit box): refused as not finite."""
    report = check_module(module("  const geo = new THREE.BufferGeometry();\n"
                                 "  geo.setAttribute('position', new THREE.Float32BufferAttribute([NaN, 0, 0, 0, 0, 0, 0, 0.1, 0], 3));\n"
                                 "  g.add(new THREE.Mesh(new THREE.BoxGeometry(10, 10, 10), mat));\n"
                                 "  g.add(new THREE.Mesh(geo, mat));"))
    assert report.rules == ["BOUNDING_BOX_OUT_OF_RANGE"] and "not finite" in report.failures[0].detail
