"""The comp 2 backend slot for a code-writing model behind an OpenAI-compatible HTTP API (``/v1/chat/completions``,
what vLLM, SGLang, llama.cpp's server and hosted APIs expose): the model is asked for a ``generate(THREE)`` module
for the prompt (its image, its text), the answer goes through the same comp 2 check as every output, and a
failed check's messages go back to the model for a bounded number of further attempts.

The API key is sent only as the ``Authorization`` header: it is never logged, never in an error, never in a
repr. Answers are bounded before they are read whole. No Dagster imports."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from .rules import CheckReport

DEFAULT_ATTEMPTS, DEFAULT_TIMEOUT_S = 3, 300.0
MAX_ANSWER_BYTES = 4 * 2**20  # a module is at most 1 MiB; an answer is that plus the model's words
RULES = """\
Write one JavaScript ES module for SN17's three.js competition. Rules (a validator rejects any breach):
- Exactly one export: `export default function generate(THREE) { ... }`, synchronous; no import, require, async.
- THREE is only available as that parameter; a helper may receive it only as a parameter named exactly THREE.
  Put every helper (functions, constants) BEFORE the export: code after it never runs.
- Return a THREE.Group, Mesh, LineSegments or Points. Its Box3 must be non-empty and inside [-0.5, 0.5]^3
  (nothing is rescaled). Y is up; the object faces +Z.
- Allowed THREE members only: BufferGeometry, BufferAttribute, Float32BufferAttribute and the other typed
  BufferAttributes, Box/Sphere/Cylinder/Cone/Torus/TorusKnot/Plane/Circle/Ring/Tetrahedron/Octahedron/
  Dodecahedron/Icosahedron/Polyhedron/Extrude/Lathe/Shape/Tube/Edges/Wireframe Geometry, MeshStandardMaterial,
  MeshPhysicalMaterial, MeshBasicMaterial, PointsMaterial, LineBasicMaterial, LineDashedMaterial, DataTexture,
  Vector2/3/4, Matrix3/4, Quaternion, Euler, Box3, Sphere, Plane, Ray, Color, MathUtils, Curve, CurvePath, Shape,
  Path, CatmullRomCurve3, CubicBezierCurve3, LineCurve3, QuadraticBezierCurve3, Object3D, Group, Mesh,
  InstancedMesh, Line, LineSegments, Points, and the colour-space, side, blending, filter, wrapping and format
  constants. No lights, loaders, shader materials, Lambert/Phong materials, other textures or animation.
- Globals allowed: Math, Number, String, Array, Object, Symbol, JSON, Map, Set, Boolean, the Error types,
  parseInt, parseFloat, isFinite, isNaN, BigInt, ArrayBuffer, DataView, typed arrays. Banned, even as local
  names: eval, Function, timers, fetch and other network APIs, the DOM, crypto, Date, performance, Proxy, Reflect,
  Worker, process, globalThis, self, require, import, Math.random, MathUtils.seededRandom/generateUUID,
  computed access THREE[x], aliasing or spreading THREE.
- At most 51,200 bytes of literals (string, template and number text), 1 MiB of file, 250k vertices,
  200 draw calls, depth 32, 50k instances, 4 MiB of DataTexture data; no cycles; it must run within 5 s and
  256 MB, and give the same result every time.
Answer with the whole module in one ```javascript block."""


class LlmError(RuntimeError):
    """The model could not be asked (unreachable, an HTTP error, a malformed answer) or never passed the check."""


@dataclass(frozen=True)
class LlmConfig:
    base_url: str  # THREEGEN_COMP2_LLM_URL: the API root, e.g. http://127.0.0.1:8000/v1
    model: str  # THREEGEN_COMP2_LLM_MODEL
    api_key: str = field(default="", repr=False)  # THREEGEN_COMP2_LLM_KEY: only ever the Authorization header
    attempts: int = DEFAULT_ATTEMPTS  # THREEGEN_COMP2_LLM_ATTEMPTS: answers asked for, the first one included
    timeout_s: float = DEFAULT_TIMEOUT_S  # THREEGEN_COMP2_LLM_TIMEOUT: per request
    max_tokens: int = 32_000
    send_image: bool = True  # the prompt image as an image_url part (a vision model); False: text only

    def __post_init__(self) -> None:
        if not re.match(r"https?://[^\s/]+", self.base_url):
            raise ValueError(f"the code model's URL must be http(s)://HOST[:PORT]/..., not {self.base_url!r}")
        if not self.model:
            raise ValueError("the code model's name is empty")
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")


@dataclass(frozen=True)
class Attempt:
    number: int
    failures: tuple[str, ...]  # the check's failures ("RULE (stage): detail"); empty when it passed
    module_bytes: int


@dataclass(frozen=True)
class LlmResult:
    source: str
    report: CheckReport
    attempts: tuple[Attempt, ...]


_FENCE = re.compile(r"```(?:javascript|js|mjs)?[ \t]*\n(.*?)```", re.S)


def extract_module(answer: str) -> str:
    """The module in a model's answer: its fenced code block (the longest, when there are several), else the
    whole answer."""
    blocks = _FENCE.findall(answer)
    return (max(blocks, key=len) if blocks else answer).strip() + "\n"


def feedback(report: CheckReport) -> str:
    lines = "\n".join(f"- {f.rule} ({f.stage}): {f.detail}" for f in report.failures)
    return (f"The module failed the SN17 comp 2 check:\n{lines}\nFix every failure and answer with the whole "
            "corrected module in one ```javascript block.")


def first_message(prompt: str, image_png: bytes | None, send_image: bool) -> dict:
    text = f"Make the 3D object of this prompt: {prompt}" if prompt else "Make the 3D object in this image."
    if image_png is None or not send_image:
        return {"role": "user", "content": text}
    url = "data:image/png;base64," + base64.b64encode(image_png).decode("ascii")
    return {"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url}}]}


def chat(config: LlmConfig, messages: list[dict], seed: int, client: httpx.Client) -> str:
    """One chat completion's text; ``LlmError`` naming the endpoint and the cause (never the key)."""
    url = config.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    body = {"model": config.model, "messages": messages, "temperature": 0, "seed": seed,
            "max_tokens": config.max_tokens}
    deadline = time.monotonic() + config.timeout_s
    try:  # the answer as sent (no encoding asked for, none undone), bounded, whole within the timeout
        with client.stream("POST", url, json=body, headers={**headers, "Accept-Encoding": "identity"},
                           timeout=config.timeout_s) as response:
            encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise LlmError(f"the code model at {url} answered in Content-Encoding {encoding[:40]!r}: refused")
            data = bytearray()
            for chunk in response.iter_raw():
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise LlmError(f"the code model at {url} answered more than {MAX_ANSWER_BYTES:,} bytes: refused")
                if time.monotonic() > deadline:
                    raise LlmError(f"the code model at {url} did not answer within {config.timeout_s:g} s")
            status = response.status_code
    except httpx.HTTPError as exc:
        raise LlmError(f"the code model at {url} is unreachable: {type(exc).__name__}: {exc}") from None
    text = data.decode("utf-8", "replace")
    if config.api_key:
        text = text.replace(config.api_key, "[key]")  # a server that echoes the request never leaks the key
    if status != 200:
        raise LlmError(f"the code model at {url} answered HTTP {status}: {text[:300]!r}")
    try:
        content = json.loads(text)["choices"][0]["message"]["content"]
        if isinstance(content, str):
            content.encode("utf-8")  # a lone surrogate ("\ud800") would fail later, outside LlmError
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        raise LlmError(f"the code model at {url} answered something other than a chat completion: "
                       f"{text[:200]!r}") from None
    if not isinstance(content, str) or not content.strip():
        raise LlmError(f"the code model at {url} answered no text")
    return content


def generate_with_llm(config: LlmConfig, check: Callable[[bytes], CheckReport], prompt: str = "",
                      image_png: bytes | None = None, seed: int = 0, client: httpx.Client | None = None) -> LlmResult:
    """Ask the model for a module, check it, and feed a failed check back, up to ``config.attempts`` answers."""
    messages = [{"role": "system", "content": RULES}, first_message(prompt, image_png, config.send_image)]
    attempts: list[Attempt] = []
    own = client is None
    client = client or httpx.Client(follow_redirects=False)
    try:
        for number in range(1, config.attempts + 1):
            answer = chat(config, messages, seed, client)
            source = extract_module(answer)
            report = check(source.encode("utf-8"))
            attempts.append(Attempt(number, tuple(str(f) for f in report.failures), len(source.encode("utf-8"))))
            if report.ok:
                return LlmResult(source, report, tuple(attempts))
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": feedback(report)}]
    finally:
        if own:
            client.close()
    raise LlmError(f"the code model's module failed the comp 2 check {config.attempts} time(s); "
                   f"last: {report.summary()[:500]}")
