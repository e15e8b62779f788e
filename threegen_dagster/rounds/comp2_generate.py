"""The embedded comp 2 generator: the pipeline's mesh (with its vertex colours) as an SN17 comp 2 module,
``export default function generate(THREE)``, that rebuilds it as one indexed BufferGeometry.

The module's literals are what the spec budgets (51,200 bytes of string, template and number text), so the mesh
travels as one string: a bit stream in the 128 ASCII characters, 7 bits per literal byte (the spec counts a
string's value, so a character written as an escape such as ``\\x01`` counts one byte). In it, vertices come in the
order a depth-first walk over the triangles first uses them; each vertex's quantised position and colour are
coded as differences from the previous vertex (zig-zag, Exp-Golomb with the best k per channel), and each
triangle corner as 0 (the next new vertex), its place in a list of the most recently used vertices, or how far
back its vertex is (Exp-Golomb). Positions are quantised on one grid over the normalised mesh (centred, longest
side 2 x ``HALF``, so inside [-0.5, 0.5]^3); the grid's bits follow the triangle count. The triangle count is
the largest the budget allows: a binary search over the decimation target (quadric decimation,
``backends/decimate.py``). Helpers come before the export (the validator turns the export into a ``return``);
only allowlisted THREE members are used, and nothing is random:
the same mesh gives the same bytes. No Dagster imports."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
import trimesh
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, depth_first_order

from ..backends.decimate import _vertex_colours, refine

LITERAL_BUDGET = 51_200  # bytes of literal text a module may hold (the spec's LITERAL_BUDGET_EXCEEDED)
MODULE_MAX_BYTES = 1_048_576
HALF = 0.49  # the mesh's half-extent: inside the spec's [-0.5, 0.5]^3 with room for float rounding
COLOUR_BITS = 6  # per sRGB channel, before delta coding
MIN_FACES, MAX_FACES = 64, 200_000
SYMBOL_BITS = 7  # one ASCII character of the data string
# how each of the 128 characters is written inside a "..." literal: itself, or an escape when it is a control
# character, the quote, the backslash or DEL
_WRITTEN = [chr(c) if 32 <= c < 127 and chr(c) not in '"\\' else f"\\x{c:02x}" for c in range(128)]
MAX_K = 20
RECENT = 16  # the corner coder's list of most recently used vertices


class Comp2Error(ValueError):
    """A mesh that cannot become a comp 2 module (no faces, or no decimation fits the budget)."""


@dataclass(frozen=True)
class Comp2Module:
    source: str
    vertices: int
    faces: int
    position_bits: int
    literal_bytes: int

    @property
    def data(self) -> bytes:
        return self.source.encode("utf-8")


def load_mesh(glb: bytes) -> trimesh.Trimesh:
    """A GLB (the pipeline's ``refined_mesh``) as one mesh with its vertex colours."""
    try:
        mesh = trimesh.load(io.BytesIO(glb), file_type="glb", force="mesh", process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh raises many kinds for a bad file
        raise Comp2Error(f"the GLB cannot be read: {type(exc).__name__}: {exc}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise Comp2Error("the GLB holds no triangles")
    return mesh


def position_bits(faces: int) -> int:
    """Grid bits for the longest side: about a twelfth of an edge for a mesh of ``faces`` triangles."""
    return int(np.clip(np.ceil(np.log2(np.sqrt(max(faces, 1)) * 12)), 8, 14))


# ---- the bit stream ----------------------------------------------------------------------------------------

def _bitlen(values: np.ndarray) -> np.ndarray:
    return np.where(values > 0, np.floor(np.log2(np.maximum(values, 1))).astype(np.int64) + 1, 0)


def _eg_lengths(values: np.ndarray, k: int) -> np.ndarray:
    return 2 * _bitlen((values >> k) + 1) - 1 + k


def _best_k(values: np.ndarray) -> tuple[int, int]:
    """(k, total bits) of the cheapest Exp-Golomb code for ``values``."""
    costs = [int(_eg_lengths(values, k).sum()) for k in range(MAX_K + 1)]
    k = int(np.argmin(costs))
    return k, costs[k]


def _eg_codes(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exp-Golomb-k codes as (integer, bit length): leading zeros are implicit in the length."""
    return ((values >> k) + 1) << k | (values & ((1 << k) - 1)), _eg_lengths(values, k)


def _pack(codes: np.ndarray, lengths: np.ndarray) -> str:
    shifts = np.arange(63, -1, -1, dtype=np.uint64)
    bits = (codes.astype(np.uint64)[:, None] >> shifts) & np.uint64(1)
    keep = np.arange(64)[None, :] >= (64 - lengths)[:, None]
    stream = bits[keep].astype(np.uint8)
    stream = np.concatenate([stream, np.zeros((-len(stream)) % SYMBOL_BITS, np.uint8)]).reshape(-1, SYMBOL_BITS)
    symbols = stream @ (1 << np.arange(SYMBOL_BITS - 1, -1, -1))
    return "".join(np.array(_WRITTEN)[symbols])


def _zigzag(values: np.ndarray) -> np.ndarray:
    return np.where(values >= 0, 2 * values, -2 * values - 1)


# ---- the mesh as streams -----------------------------------------------------------------------------------

def _normalised(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices centred with their longest side 2 x HALF, faces, colours (uint8 RGB)."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    used = vertices[np.unique(np.asarray(mesh.faces))]  # a vertex no triangle uses never counts
    lo, hi = used.min(axis=0), used.max(axis=0)
    longest = float((hi - lo).max())
    if not np.isfinite(longest) or longest <= 0:
        raise Comp2Error("the mesh is flat to a point or has non-finite vertices")
    return (vertices - (lo + hi) / 2) * (2 * HALF / longest), np.asarray(mesh.faces), _vertex_colours(mesh)[:, :3]


def _walk(faces: np.ndarray) -> np.ndarray:
    """Faces in depth-first order over shared edges, component by component (deterministic): each triangle
    mostly follows a neighbour, so its corners are recent vertices (a breadth-first order costs 40% more bits)."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    owner = np.repeat(np.arange(len(faces)), 3)
    order = np.lexsort((owner, edges[:, 1], edges[:, 0]))
    edges, owner = edges[order], owner[order]
    same = np.all(edges[1:] == edges[:-1], axis=1)
    graph = coo_matrix((np.ones(int(same.sum())), (owner[:-1][same], owner[1:][same])),
                       shape=(len(faces), len(faces))).tocsr()
    _, labels = connected_components(graph, directed=False)
    walked = [depth_first_order(graph, int(np.flatnonzero(labels == label)[0]), directed=False,
                                  return_predecessors=False) for label in np.unique(labels)]
    return faces[np.concatenate(walked)]


def _corner_codes(corners: np.ndarray) -> np.ndarray:
    """Each triangle corner as 0 (the next new vertex), 1 + its place in the list of the RECENT most recently
    used vertices, or 1 + RECENT + how far back it is among the vertices seen so far. The used vertex then
    moves to the list's front (a new one enters there; the last drops out of a full list)."""
    recent: list[int] = []
    out = np.empty(len(corners), np.int64)
    fresh = 0
    for i, vertex in enumerate(corners.tolist()):
        if vertex == fresh:
            out[i], fresh = 0, fresh + 1
        elif vertex in recent:
            place = recent.index(vertex)
            out[i] = 1 + place
            del recent[place]
        else:
            out[i] = 1 + RECENT + (fresh - 1 - vertex)
        recent.insert(0, vertex)
        del recent[RECENT:]
    return out


@dataclass(frozen=True)
class _Encoded:
    channels: np.ndarray  # V x 6 quantised x, y, z, r, g, b in vertex order
    corners: np.ndarray  # 3F corner codes (``_corner_codes``)
    ks: tuple[int, ...]  # Exp-Golomb k of the six channels, then of the corners
    bits: int
    qbits: int
    centres: tuple[float, ...]

    @property
    def literal_estimate(self) -> int:
        return -(-self.bits // SYMBOL_BITS)


def _encode(vertices: np.ndarray, faces: np.ndarray, colours: np.ndarray) -> _Encoded:
    faces = _walk(faces)
    first_use = np.unique(faces.ravel(), return_index=True)
    order = first_use[0][np.argsort(first_use[1])]
    renumber = np.empty(len(vertices), np.int64)
    renumber[order] = np.arange(len(order))
    faces = renumber[faces]
    qbits = position_bits(len(faces))
    step = 2 * HALF / ((1 << qbits) - 1)
    used = vertices[order]
    lo, hi = used.min(axis=0), used.max(axis=0)
    levels = np.minimum(np.round((hi - lo) / step), (1 << qbits) - 1)
    centres = levels / 2
    grid = np.clip(np.round((used - (lo + hi) / 2) / step + centres), 0, levels).astype(np.int64)
    rgb = np.round(colours[order] / 255 * ((1 << COLOUR_BITS) - 1)).astype(np.int64)
    channels = np.hstack([grid, rgb])
    corners = _corner_codes(faces.ravel())
    deltas = _zigzag(np.diff(channels, axis=0, prepend=0))
    picks = [_best_k(deltas[:, j]) for j in range(6)] + [_best_k(corners)]
    return _Encoded(channels, corners, tuple(k for k, _ in picks), sum(b for _, b in picks), qbits,
                    tuple(float(c) for c in centres))


def _stream(encoded: _Encoded) -> str:
    deltas = _zigzag(np.diff(encoded.channels, axis=0, prepend=0))
    parts = [_eg_codes(deltas[:, j], encoded.ks[j]) for j in range(6)]
    codes = np.stack([p[0] for p in parts], axis=1).ravel()  # vertex by vertex, channel by channel
    lengths = np.stack([p[1] for p in parts], axis=1).ravel()
    corner_codes, corner_lengths = _eg_codes(encoded.corners, encoded.ks[6])
    return _pack(np.concatenate([codes, corner_codes]), np.concatenate([lengths, corner_lengths]))


# ---- the module --------------------------------------------------------------------------------------------

_TEMPLATE = """\
// threegen comp2_generate: @VERTICES@ vertices, @FACES@ triangles
const DATA = "@DATA@";
function reader(text) {
  let at = 0, acc = 0, have = 0;
  function bits(n) {
    while (have < n) { acc = (acc << 7) | text.charCodeAt(at++); have += 7; }
    have -= n;
    const value = (acc >>> have) & ((1 << n) - 1);
    acc &= (1 << have) - 1;
    return value;
  }
  function code(k) {
    let zeros = 0;
    while (bits(1) === 0) zeros++;
    return ((((1 << zeros) | bits(zeros)) - 1) << k) | bits(k);
  }
  return code;
}
function unzig(z) {
  return z & 1 ? -((z + 1) >> 1) : z >> 1;
}
export default function generate(THREE) {
  const code = reader(DATA);
  const count = @VERTICES@, ks = [@KS@], centre = [@CENTRES@], step = @HALF2@ / @LEVELS@, shade = @CMAX@;
  const q = new Int32Array(6), colour = new THREE.Color();
  const position = new Float32Array(count * 3), rgb = new Float32Array(count * 3);
  for (let i = 0; i < count; i++) {
    for (let j = 0; j < 6; j++) q[j] += unzig(code(ks[j]));
    for (let j = 0; j < 3; j++) position[3 * i + j] = (q[j] - centre[j]) * step;
    colour.setRGB(q[3] / shade, q[4] / shade, q[5] / shade, THREE.SRGBColorSpace);
    rgb[3 * i] = colour.r;
    rgb[3 * i + 1] = colour.g;
    rgb[3 * i + 2] = colour.b;
  }
  const index = new Uint32Array(@CORNERS@), recent = new Int32Array(@RECENT@);
  let next = 0, listed = 0;
  for (let i = 0; i < index.length; i++) {
    const c = code(@KC@);
    const vertex = c === 0 ? next++ : c <= @RECENT@ ? recent[c - 1] : next - 1 - (c - 1 - @RECENT@);
    let place = c > 0 && c <= @RECENT@ ? c - 1 : listed < @RECENT@ ? listed++ : @RECENT@ - 1;
    for (; place > 0; place--) recent[place] = recent[place - 1];
    recent[0] = vertex;
    index[i] = vertex;
  }
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(position, 3));
  geometry.setAttribute("color", new THREE.BufferAttribute(rgb, 3));
  geometry.setIndex(new THREE.BufferAttribute(index, 1));
  geometry.computeVertexNormals();
  const material = new THREE.MeshStandardMaterial({ vertexColors: true, roughness: 0.8, metalness: 0,
                                                   side: THREE.DoubleSide });
  const root = new THREE.Group();
  root.add(new THREE.Mesh(geometry, material));
  return root;
}
"""
_NUMBER = re.compile(r"(?<![\w$.])\d+(?:\.\d+)?(?:e[+-]?\d+)?")
_STRING = re.compile(r'"((?:[^"\\\n]|\\x[0-9a-f]{2}|\\["\\\\])*)"')
_ESCAPE = re.compile(r'\\x[0-9a-f]{2}|\\["\\\\]')


def literal_bytes(source: str) -> int:
    """The spec's literal count of a module this file wrote (its strings hold ASCII and \\xNN, \\" or \\\\
    escapes, its numbers are plain decimals and its only comment is the first line): the strings' values in
    UTF-8 plus the numbers' text."""
    body = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("//"))
    strings = sum(len(_ESCAPE.sub("e", m[1]).encode("utf-8")) for m in _STRING.finditer(body))
    return strings + sum(len(m[0]) for m in _NUMBER.finditer(_STRING.sub('""', body)))


def _module(encoded: _Encoded) -> str:
    values = {"VERTICES": str(len(encoded.channels)), "FACES": str(len(encoded.corners) // 3),
              "DATA": _stream(encoded), "KS": ", ".join(map(str, encoded.ks[:6])),
              "CENTRES": ", ".join(f"{c:g}" for c in encoded.centres), "HALF2": f"{2 * HALF:g}",
              "LEVELS": str((1 << encoded.qbits) - 1), "CMAX": str((1 << COLOUR_BITS) - 1),
              "CORNERS": str(len(encoded.corners)), "KC": str(encoded.ks[6]), "RECENT": str(RECENT)}
    return re.sub(r"@([A-Z0-9]+)@", lambda m: values[m[1]], _TEMPLATE)


_OVERHEAD = literal_bytes(_module(_Encoded(np.zeros((1, 6), np.int64), np.zeros(3, np.int64), (0,) * 7, 0, 8,
                                           (0.0, 0.0, 0.0))))


def _fits(encoded: _Encoded, budget: int) -> bool:
    return encoded.literal_estimate + _OVERHEAD + 64 <= budget  # 64: room for longer numbers in the header


def _largest_fit(base: trimesh.Trimesh, lo: int, hi: int, budget: int) -> _Encoded | None:
    """The encoding of the largest decimation target in [lo, hi] that fits (a binary search, to within 1% of the
    target: each step decimates and encodes again), or None."""
    best = None
    while lo <= hi and (best is None or hi - lo > lo // 100):
        target = (lo + hi) // 2
        encoded = _encode(*_normalised(refine(base, target_faces=target, smoothing_iterations=0)))
        if _fits(encoded, budget):
            best, lo = encoded, target + 1
        else:
            hi = target - 1
    return best


def generate_module(mesh: trimesh.Trimesh, literal_budget: int = LITERAL_BUDGET,
                    max_faces: int = MAX_FACES) -> Comp2Module:
    """The mesh as a comp 2 module: as many triangles as fit ``literal_budget`` (decimating when needed)."""
    if len(mesh.faces) == 0:
        raise Comp2Error("the mesh has no faces")
    vertices, faces, colours = _normalised(mesh)
    best, lo, hi = None, MIN_FACES, min(len(faces), max_faces)
    if len(faces) <= max_faces:
        whole = _encode(vertices, faces, colours)
        if _fits(whole, literal_budget):
            best = whole
        else:  # the whole mesh's bits per triangle narrow the search; the rest of the range stays as a fallback
            guess = len(faces) * (literal_budget - _OVERHEAD) * SYMBOL_BITS // whole.bits
            lo, hi = max(lo, guess * 2 // 3), min(hi, guess * 4 // 3)
    if best is None:
        base = trimesh.Trimesh(vertices, faces, vertex_colors=np.hstack([colours, np.full((len(colours), 1), 255)]),
                               process=False)
        best = _largest_fit(base, lo, hi, literal_budget)
        if best is None and lo > MIN_FACES:
            best = _largest_fit(base, MIN_FACES, lo - 1, literal_budget)
    if best is None:
        raise Comp2Error(f"even {MIN_FACES} triangles do not fit a literal budget of {literal_budget} bytes")
    source = _module(best)
    used = literal_bytes(source)
    if used > literal_budget or len(source.encode("utf-8")) > MODULE_MAX_BYTES:
        raise Comp2Error(f"the module holds {used} literal bytes (budget {literal_budget})")
    return Comp2Module(source, len(best.channels), len(best.corners) // 3, best.qbits, used)


def glb_to_module(glb: bytes, literal_budget: int = LITERAL_BUDGET) -> Comp2Module:
    """The pipeline's GLB (``refined_mesh``) as a comp 2 module."""
    return generate_module(load_mesh(glb), literal_budget)
