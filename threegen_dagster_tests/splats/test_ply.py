"""Gaussian PLY: the strict form out, what real tools write in, a named error for everything else."""

from __future__ import annotations

import numpy as np
import pytest

from threegen_dagster.splats import GaussianCloud, SplatError, ply
from threegen_dagster.splats.ply import PlyError, read_ply, write_ply

from .conftest import random_cloud, vector

ORDER = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
         "rot_0", "rot_1", "rot_2", "rot_3"]


def values(cloud: GaussianCloud) -> dict[str, np.ndarray]:
    """Each PLY property of a cloud by name, as the 3DGS code lays them out."""
    out = dict(zip(["x", "y", "z"], cloud.positions.T))
    out.update(zip(["f_dc_0", "f_dc_1", "f_dc_2"], cloud.sh_dc.T))
    out.update(zip(["scale_0", "scale_1", "scale_2"], cloud.log_scales.T))
    out.update(zip(["rot_0", "rot_1", "rot_2", "rot_3"], cloud.rotations.T))
    out["opacity"] = cloud.opacity_logits
    k = cloud.sh_rest.shape[1]
    for channel in range(3):
        for j in range(k):
            out[f"f_rest_{channel * k + j}"] = cloud.sh_rest[:, j, channel]
    return out


def handmade(cloud: GaussianCloud, names: list[str], types: dict[str, str] | None = None, *,
             fmt: str = "binary_little_endian", newline: str = "\n", comments: bool = False,
             before: str = "", after: str = "", before_bytes: bytes = b"") -> bytes:
    """A PLY written the way another tool might: any order, types, endianness, extras."""
    types = types or {}
    cols = values(cloud)
    header = ["ply", f"format {fmt} 1.0"]
    if comments:
        header += ["comment made by some tool", "obj_info generated"]
    header += [before] if before else []
    header += [f"element vertex {len(cloud)}"] + [f"property {types.get(n, 'float')} {n}" for n in names]
    header += [after] if after else []
    head = (newline.join(header + ["end_header"]) + newline).encode()
    if fmt == "ascii":
        rows = np.stack([cols[n].astype(np.float64) for n in names], axis=1)  # repr keeps float32 exact
        return head + "\n".join(" ".join(repr(float(v)) for v in row) for row in rows).encode() + b"\n"
    endian = "<" if fmt == "binary_little_endian" else ">"
    table = np.empty(len(cloud), dtype=[(n, endian + {"float": "f4", "double": "f8"}[types.get(n, "float")])
                                        for n in names])
    for n in names:
        table[n] = cols.get(n, 0.0)  # properties a splat does not use (normals, red ...) are zeros
    return head + before_bytes + table.tobytes()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("normals", [False, True])
def test_write_then_read_is_exact(degree: int, normals: bool) -> None:
    cloud = random_cloud(257, sh_degree=degree, seed=degree)
    back = read_ply(write_ply(cloud, include_normals=normals))
    assert back.sh_degree == degree
    for name, column in values(cloud).items():
        np.testing.assert_array_equal(values(back)[name], column, err_msg=name)


def test_written_header_is_what_pyspz_parses() -> None:
    data = write_ply(random_cloud(3, sh_degree=1))
    head, _, body = data.partition(b"end_header\n")
    lines = head.decode().splitlines()
    assert lines[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 3"]
    assert all(line.startswith("property float ") for line in lines[3:])
    assert b"\r" not in head and b"comment" not in head
    assert len(body) == 3 * len(lines[3:]) * 4


def test_written_file_matches_pyspz_decoder_output_byte_for_byte() -> None:
    assert write_ply(read_ply(vector("inria_1000_sh3.decoded.ply"))) == vector("inria_1000_sh3.decoded.ply")
    with_normals = vector("inria_1000_sh3.decoded_n.ply")
    assert write_ply(read_ply(with_normals), include_normals=True) == with_normals


def test_sh_rest_is_channel_major_in_the_file() -> None:
    cloud = random_cloud(4, sh_degree=1)
    rebuilt = handmade(cloud, ORDER + [f"f_rest_{i}" for i in range(9)])
    np.testing.assert_array_equal(read_ply(rebuilt).sh_rest, cloud.sh_rest)
    body = np.frombuffer(write_ply(cloud).partition(b"end_header\n")[2], "<f4").reshape(4, -1)
    np.testing.assert_array_equal(body[:, 6:9], cloud.sh_rest[:, :, 0])  # all red coefficients first


@pytest.mark.parametrize(
    "variant",
    [
        dict(comments=True),
        dict(newline="\r\n"),
        dict(fmt="binary_big_endian"),
        dict(fmt="ascii"),
        dict(types={"x": "double", "opacity": "double"}),
        dict(before="element camera 2\nproperty float fx\nproperty float fy", before_bytes=b"\0" * 16),
        dict(after="element face 0\nproperty list uchar int vertex_indices"),
        dict(shuffle=True),
        dict(extra=["nx", "ny", "nz", "red"]),
    ],
    ids=lambda v: "-".join(v),
)
def test_lenient_reading_of_what_real_tools_write(variant: dict) -> None:
    cloud = random_cloud(50, sh_degree=1, seed=3)
    names = ORDER + [f"f_rest_{i}" for i in range(9)]
    if variant.pop("shuffle", False):
        names = list(np.random.default_rng(1).permutation(names))
    extra = variant.pop("extra", [])
    names = names[:3] + extra + names[3:]
    back = read_ply(handmade(cloud, names, **variant))
    assert back.sh_degree == 1
    for name, column in values(cloud).items():
        np.testing.assert_allclose(values(back)[name], column, rtol=1e-7, err_msg=name)


def _header(*lines: str, count: int = 2) -> bytes:
    return ("\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {count}", *lines,
                       "end_header", ""])).encode()


FULL = [f"property float {n}" for n in ORDER]


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty file"),
        (b"PK\x03\x04", "not a PLY file"),
        (b"ply\nformat binary_little_endian 1.0\nelement vertex 2\n", "no 'end_header'"),
        (_header(*FULL[:-4]) + b"\0" * 80, "lacks required gaussian properties: rot_0, rot_1, rot_2, rot_3"),
        (_header(*FULL, "property float f_rest_0", "property float f_rest_1"), "2 f_rest properties"),
        (_header(*FULL, *[f"property float f_rest_{i}" for i in (0, 1, 2, 4, 5, 6, 7, 8, 9)]), "without gaps"),
        (_header(*FULL, "property float x"), "duplicate vertex properties: x"),
        (_header(*FULL, "property half h"), "unsupported property"),
        (_header(*FULL, "property list uchar int idx"), "list property"),
        (_header(*FULL) + b"\0" * 10, "truncated PLY body"),
        (_header(*FULL, count=0), "0 vertices"),
        (_header(*FULL, count=20_000_000), "more than the 10,485,760"),
        (_header(*FULL).replace(b"binary_little_endian", b"binary_middle_endian"), "unsupported format"),
        (_header(*FULL).replace(b"element vertex 2", b"element point 2"), "no 'vertex' element"),
        (_header(*FULL).replace(b"property float y", b"propertty float y"), "unknown keyword"),
        ("ply\nformat binary_little_endian 1.0\ncomment caf\u00e9\nend_header\n".encode(), "not ASCII"),
    ],
)
def test_malformed_files_get_specific_errors(data: bytes, message: str) -> None:
    with pytest.raises(PlyError, match=message):
        read_ply(data)


def test_ply_errors_are_splat_errors_and_value_errors() -> None:
    with pytest.raises(SplatError, match=r"not a PLY file: it starts with b'nope', expected 'ply'"):
        read_ply(b"nope")
    assert issubclass(PlyError, ValueError)


def test_cloud_checks_shapes_and_reports_non_finite_values() -> None:
    with pytest.raises(SplatError, match="log_scales has shape"):
        GaussianCloud(np.zeros((2, 3)), np.zeros((3, 3)), np.zeros((2, 4)), np.zeros(2), np.zeros((2, 3)))
    with pytest.raises(SplatError, match="no SH degree"):
        GaussianCloud(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 4)), np.zeros(2), np.zeros((2, 3)),
                      np.zeros((2, 4, 3)))
    cloud = random_cloud(5)
    assert cloud.non_finite_fields() == []
    cloud.opacity_logits[2] = np.inf
    cloud.positions[0, 1] = np.nan
    assert cloud.non_finite_fields() == ["positions", "opacity_logits"]
    with pytest.raises(SplatError, match="positions, opacity_logits"):
        cloud.require_finite()


def test_max_gaussians_matches_pyspz() -> None:
    assert ply.MAX_GAUSSIANS == 10_485_760


def test_sh_names_must_be_spelled_as_3dgs_writes_them() -> None:
    zero_padded = [f"property float f_rest_{i:02d}" for i in range(9)]
    with pytest.raises(PlyError, match=r"^property 'f_rest_00' is not an SH coefficient name"):
        read_ply(_header(*FULL, *zero_padded, count=1) + b"\0" * 4 * 23)
    with pytest.raises(PlyError, match="not an SH coefficient name"):
        read_ply(_header(*FULL, "property float f_rest_" + "1" * 5000, count=1) + b"\0" * 4 * 20000)
    plain = [f"property float f_rest_{i}" for i in range(9)]
    assert read_ply(_header(*FULL, *plain, count=1) + b"\0" * 4 * 23).sh_degree == 1


HUGE = "9" * 5000


@pytest.mark.parametrize(("element", "data"), [
    ("vertex", _header(*FULL).replace(b"vertex 2", f"vertex {HUGE}".encode())),
    ("face", _header(*FULL).replace(b"element vertex", f"element face {HUGE}\nproperty float a\nelement vertex".encode())),
])
def test_an_element_count_of_thousands_of_digits_is_a_ply_error(element: str, data: bytes) -> None:
    with pytest.raises(PlyError, match=f"element '{element}' count has 5,000 digits, at most 12"):
        read_ply(data + b"\0" * 112)


def test_duplicate_properties_in_an_element_before_vertex_are_a_ply_error() -> None:
    data = _header(*FULL).replace(b"element vertex 2", b"element face 1\nproperty float a\nproperty float a\n"
                                                       b"element vertex 2")
    with pytest.raises(PlyError, match="^duplicate face properties: a$"):
        read_ply(data + b"\0" * 200)
