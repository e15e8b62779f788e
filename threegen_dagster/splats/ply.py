"""Gaussian-splat PLY files: the strict form pyspz accepts out, and what real tools write in.

Writing always produces the form SN17's ``pyspz`` parses: ``ply``, ``format
binary_little_endian 1.0``, one ``element vertex N``, only ``property float``
lines in the order the original 3DGS code uses, LF endings, no comments.

Reading is lenient about what real tools write (``comment``/``obj_info`` lines,
CRLF, big-endian or ASCII bodies, any numeric property type, extra elements,
any property order) and strict about meaning: every malformed file raises a
:class:`PlyError` that names what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .cloud import SH_COEFFS_FOR_DEGREE, GaussianCloud, SplatError

MAX_GAUSSIANS = 10 * 1024 * 1024
"""The largest vertex count pyspz accepts (10,485,760)."""

REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "ascii"}
_END_HEADER = re.compile(rb"end_header[ \t]*\r?\n")
_MAX_HEADER = 1 << 16
_MAX_COUNT_DIGITS = 12


class PlyError(SplatError, RuntimeError):
    """A PLY file that is not a readable gaussian splat; the message says why.

    A ``ValueError`` like every splat error, and a ``RuntimeError`` like what pyspz raises."""


@dataclass(frozen=True)
class _Element:
    name: str
    count: int
    properties: tuple[tuple[str, str], ...]  # (name, numpy type code); list properties refused
    has_list: bool = False


def _parse_header(data: bytes) -> tuple[str, list[_Element], int]:
    """(format, elements, body offset) of a PLY file."""
    if not data:
        raise PlyError("empty file: expected a PLY header starting with 'ply'")
    if not data.startswith(b"ply"):
        raise PlyError(f"not a PLY file: it starts with {data[:16]!r}, expected 'ply'")
    match = _END_HEADER.search(data, 0, _MAX_HEADER)
    if match is None:
        raise PlyError("PLY header has no 'end_header' line (truncated file or not a PLY)")
    try:
        text = data[: match.start()].decode("ascii")
    except UnicodeDecodeError as exc:
        raise PlyError(f"PLY header is not ASCII text ({exc.reason} at byte {exc.start})") from None
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")]
    if lines[0] != "ply":
        raise PlyError(f"first header line is {lines[0]!r}, expected 'ply'")

    fmt: str | None = None
    elements: list[_Element] = []
    current: dict | None = None
    for number, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        keyword = words[0]
        if keyword == "format":
            if len(words) != 3 or words[1] not in _FORMATS or words[2] != "1.0":
                raise PlyError(f"header line {number}: unsupported format {line!r}")
            fmt = _FORMATS[words[1]]
        elif keyword == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyError(f"header line {number}: malformed element line {line[:80]!r}")
            if len(words[2]) > _MAX_COUNT_DIGITS:
                raise PlyError(f"header line {number}: element {words[1][:40]!r} count has {len(words[2]):,} digits, "
                               f"at most {_MAX_COUNT_DIGITS}")
            current = {"name": words[1], "count": int(words[2]), "properties": [], "has_list": False}
            elements.append(current)  # type: ignore[arg-type]
        elif keyword == "property":
            if current is None:
                raise PlyError(f"header line {number}: property before any element: {line!r}")
            if len(words) == 5 and words[1] == "list":
                current["has_list"] = True
                current["properties"].append((words[4], "list"))
                continue
            if len(words) != 3 or words[1] not in _TYPES:
                raise PlyError(f"header line {number}: unsupported property {line!r}")
            current["properties"].append((words[2], _TYPES[words[1]]))
        else:
            raise PlyError(f"header line {number}: unknown keyword in {line!r}")
    if fmt is None:
        raise PlyError("PLY header has no 'format' line")
    parsed = [_Element(e["name"], e["count"], tuple(e["properties"]), e["has_list"]) for e in elements]  # type: ignore[index]
    return fmt, parsed, match.end()


def _vertex_table(data: bytes) -> tuple[np.ndarray, tuple[str, ...], int]:
    """The vertex element as a structured array (or 2-D float array for ASCII), its property
    names and its f_rest count; the header's meaning is checked before the body is touched."""
    fmt, elements, offset = _parse_header(data)
    vertex_at = next((i for i, e in enumerate(elements) if e.name == "vertex"), None)
    if vertex_at is None:
        raise PlyError("PLY has no 'vertex' element")
    vertex = elements[vertex_at]
    if vertex.has_list:
        raise PlyError("the vertex element has a list property; gaussian splats have scalar properties only")
    for element in elements:
        named = [name for name, _ in element.properties]
        duplicates = sorted({n for n in named if named.count(n) > 1})
        if duplicates:
            raise PlyError(f"duplicate {element.name} properties: {', '.join(duplicates)}")
    names = tuple(name for name, _ in vertex.properties)
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise PlyError(f"PLY lacks required gaussian properties: {', '.join(missing)}")
    rest = sh_rest_count(names)
    if vertex.count == 0:
        raise PlyError("PLY declares 0 vertices: a splat needs at least one gaussian")
    if vertex.count > MAX_GAUSSIANS:
        raise PlyError(f"PLY declares {vertex.count:,} vertices, more than the {MAX_GAUSSIANS:,} pyspz accepts")

    if fmt == "ascii":
        if vertex_at != 0:
            raise PlyError("ASCII PLY with elements before 'vertex' is not supported")
        try:
            lines = data[offset:].decode("ascii").splitlines()[: vertex.count]
            table = np.array([line.split() for line in lines], dtype=np.float64)
        except UnicodeDecodeError:
            raise PlyError("header says 'format ascii' but the body is binary data") from None
        except ValueError:
            raise PlyError("ASCII PLY body has rows of the wrong length or non-numeric values") from None
        if table.shape != (vertex.count, len(names)):
            raise PlyError(f"ASCII PLY body has {len(lines)} usable rows, header declares {vertex.count}")
        return table, names, rest

    for before in elements[:vertex_at]:
        if before.has_list:
            raise PlyError(f"element {before.name!r} with list properties precedes 'vertex'; cannot locate vertices")
        offset += before.count * np.dtype([(n, fmt + t) for n, t in before.properties]).itemsize
    dtype = np.dtype([(n, fmt + t) for n, t in vertex.properties])
    need = vertex.count * dtype.itemsize
    have = len(data) - offset
    if have < need:
        raise PlyError(f"truncated PLY body: {vertex.count:,} vertices need {need:,} bytes, file has {max(have, 0):,}")
    return np.frombuffer(data, dtype=dtype, count=vertex.count, offset=offset), names, rest


def sh_rest_count(names: tuple[str, ...] | list[str]) -> int:
    """How many consecutive ``f_rest_i`` properties a header has, checked to be a whole SH degree and
    spelled as 3DGS and pyspz write them (``f_rest_7``, not ``f_rest_07``)."""
    rest = [n for n in names if n.startswith("f_rest_") and n[7:].isdigit()]
    for name in rest:
        if len(name) > 9 or name != f"f_rest_{int(name[7:])}":
            raise PlyError(f"property {name[:40]!r} is not an SH coefficient name: expected f_rest_0 to f_rest_44")
    numbered = sorted(int(n[7:]) for n in rest)
    count = len(numbered)
    if numbered != list(range(count)):
        raise PlyError(f"f_rest properties are not numbered 0..{count - 1} without gaps: found {numbered[:6]}...")
    if count % 3 or count // 3 not in SH_COEFFS_FOR_DEGREE.values():
        raise PlyError(f"{count} f_rest properties is no SH degree (expected 0, 9, 24 or 45)")
    return count


def read_ply(data: bytes) -> GaussianCloud:
    """Parse a gaussian-splat PLY (strict pyspz form or what real tools write)."""
    table, names, rest = _vertex_table(bytes(data))

    if table.dtype.names is None:  # ASCII: a 2-D float table
        column = {n: i for i, n in enumerate(names)}

        def cols(keys: list[str]) -> np.ndarray:
            return table[:, [column[k] for k in keys]].astype(np.float32)
    elif all(table.dtype[n] == np.dtype("<f4") for n in names):  # the common case: one float32 matrix
        flat = table.view(np.float32).reshape(len(table), len(names))
        column = {n: i for i, n in enumerate(names)}

        def cols(keys: list[str]) -> np.ndarray:
            idx = [column[k] for k in keys]
            if idx == list(range(idx[0], idx[0] + len(idx))):
                return flat[:, idx[0]: idx[0] + len(idx)]  # a view; the cloud copies it once
            return flat[:, idx]
    else:
        def cols(keys: list[str]) -> np.ndarray:
            return np.stack([table[k].astype(np.float32) for k in keys], axis=1)

    k = rest // 3
    sh_rest = cols([f"f_rest_{i}" for i in range(rest)]).reshape(-1, 3, k).transpose(0, 2, 1) if k else None
    return GaussianCloud(
        positions=cols(["x", "y", "z"]),
        log_scales=cols(["scale_0", "scale_1", "scale_2"]),
        rotations=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=cols(["opacity"])[:, 0],
        sh_dc=cols(["f_dc_0", "f_dc_1", "f_dc_2"]),
        sh_rest=sh_rest if sh_rest is not None else np.zeros((0, 0, 3), np.float32),
    )


def ply_header(n: int, sh_rest_coeffs: int, include_normals: bool) -> bytes:
    """The exact header pyspz writes for ``n`` gaussians (``sh_rest_coeffs`` per channel)."""
    names = ["x", "y", "z"] + (["nx", "ny", "nz"] if include_normals else [])
    names += ["f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(3 * sh_rest_coeffs)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    lines += [f"property float {name}" for name in names] + ["end_header", ""]
    return "\n".join(lines).encode("ascii")


def write_ply(cloud: GaussianCloud, include_normals: bool = False) -> bytes:
    """The cloud as the binary little-endian float32 PLY that pyspz and 3DGS viewers read."""
    n, k = len(cloud), cloud.sh_rest.shape[1]
    width = 3 + (3 if include_normals else 0) + 3 + 3 * k + 8
    body = np.empty((n, width), dtype="<f4")
    body[:, 0:3] = cloud.positions
    c = 3
    if include_normals:
        body[:, 3:6] = 0.0
        c = 6
    body[:, c:c + 3] = cloud.sh_dc
    c += 3
    if k:
        body[:, c:c + 3 * k].reshape(n, 3, k)[...] = cloud.sh_rest.transpose(0, 2, 1)  # channel-major, no temp
        c += 3 * k
    body[:, c] = cloud.opacity_logits
    body[:, c + 1:c + 4] = cloud.log_scales
    body[:, c + 4:c + 8] = cloud.rotations
    return b"".join((ply_header(n, k, include_normals), body.data))  # one copy of the body
