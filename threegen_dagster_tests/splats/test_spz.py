"""The SPZ codec against vectors made by pyspz itself, and against corrupt input."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import multiprocessing
import struct
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zstandard

from threegen_dagster.splats import GaussianCloud, ply, spz
from threegen_dagster.splats.spz import SpzError

from .conftest import CASES, VECTORS, random_cloud, vector


decodes = pytest.mark.usefixtures("decoder")  # the test runs with the compiled kernel and with numpy's writers


def payload_of(frame: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(frame)


@pytest.mark.parametrize("case", CASES)
def test_compress_payload_is_byte_identical_to_pyspz(case: str) -> None:
    frame = spz.compress(vector(f"{case}.ply"), compression_level=1, workers=-1)
    assert frame[:4] == b"\x28\xb5\x2f\xfd"
    expected = vector(f"{case}.payload")
    assert zstandard.get_frame_parameters(frame).content_size == len(expected)
    assert payload_of(frame) == expected


@decodes
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("normals", [False, True])
def test_decompress_is_byte_identical_to_pyspz(case: str, normals: bool) -> None:
    expected = vector(f"{case}.decoded_n.ply" if normals else f"{case}.decoded.ply")
    assert spz.decompress(vector(f"{case}.spz"), include_normals=normals) == expected


@decodes
def test_our_frames_decode_with_what_pyspz_wrote_and_back() -> None:
    ours = spz.compress(vector("inria_1000_sh3.ply"))
    assert spz.decompress(ours) == vector("inria_1000_sh3.decoded.ply")


@pytest.mark.parametrize("level,workers", [(1, 0), (3, -1), (9, 2), (0, 1)])
def test_levels_and_workers_change_the_frame_not_the_payload(level: int, workers: int) -> None:
    frame = spz.compress(vector("trellis_7000_sh0.ply"), compression_level=level, workers=workers)
    assert zstandard.get_frame_parameters(frame).content_size == len(vector("trellis_7000_sh0.payload"))
    assert payload_of(frame) == vector("trellis_7000_sh0.payload")


@decodes
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_error_is_within_pyspz_bounds(degree: int) -> None:
    cloud = random_cloud(3000, sh_degree=degree, seed=degree)
    back = spz.decode(spz.encode(cloud))
    assert back.sh_degree == degree
    assert np.abs(back.positions - cloud.positions).max() <= 1.3e-4
    assert np.abs(back.sh_dc - cloud.sh_dc).max() <= 0.014
    assert np.abs(back.log_scales - cloud.log_scales).max() <= 0.032
    assert np.abs(back.opacities - cloud.opacities).max() <= 0.0021
    if degree:
        assert np.abs(back.sh_rest - cloud.sh_rest).max() <= 0.067
    dots = np.abs(np.sum(back.unit_rotations * cloud.unit_rotations, axis=1))
    assert dots.min() >= 0.994


@decodes
def test_frame_without_content_size_still_decodes() -> None:
    streamed = zstandard.ZstdCompressor(write_content_size=False).compress(vector("inria_1000_sh1.payload"))
    assert zstandard.get_frame_parameters(streamed).content_size == zstandard.CONTENTSIZE_UNKNOWN
    assert spz.decompress(streamed) == vector("inria_1000_sh1.decoded.ply")


@decodes
def test_version_1_payload_with_float16_positions_decodes() -> None:
    v2 = vector("inria_1000_sh1.payload")
    n = struct.unpack_from("<I", v2, 8)[0]
    positions = ply.read_ply(vector("inria_1000_sh1.ply")).positions.astype("<f2")
    v1 = struct.pack("<II", spz.MAGIC, 1) + v2[8:16] + positions.tobytes() + v2[16 + 9 * n:]
    decoded = spz.decode(zstandard.ZstdCompressor().compress(v1))
    np.testing.assert_array_equal(decoded.positions, positions.astype(np.float32))
    reference = spz.decode(vector("inria_1000_sh1.spz"))
    np.testing.assert_array_equal(decoded.sh_rest, reference.sh_rest)


# --- inputs pyspz refuses --------------------------------------------------------------------------

REFUSED = {
    "ascii_format.ply": "binary data",
    "double_property.ply": "truncated PLY body",
    "missing_opacity.ply": "lacks required gaussian properties: opacity",
    "truncated_body.ply": "truncated PLY body",
    "zero_vertices.ply": "0 vertices",
}


@pytest.mark.parametrize("name,message", sorted(REFUSED.items()))
def test_refused_ply_gets_a_specific_error(name: str, message: str) -> None:
    with pytest.raises(ply.PlyError, match=message):
        spz.compress((VECTORS / "rejected" / name).read_bytes())


def _cleaned(data: bytes) -> bytes:
    """The same file as pyspz would accept it: LF header, no comment lines."""
    end = data.index(b"end_header") + len(b"end_header")
    body = data[end:].removeprefix(b"\r\n").removeprefix(b"\n")
    lines = [line for line in data[:end].replace(b"\r\n", b"\n").split(b"\n") if not line.startswith(b"comment")]
    return b"\n".join(lines) + b"\n" + body


@pytest.mark.parametrize("name", ["comment_line.ply", "crlf_header.ply"])
def test_accepted_beyond_pyspz_gives_the_payload_of_the_clean_file(name: str) -> None:
    data = (VECTORS / "rejected" / name).read_bytes()
    clean = _cleaned(data)
    assert clean != data and b"comment" not in clean and b"\r" not in clean[: clean.index(b"end_header")]
    assert payload_of(spz.compress(data)) == payload_of(spz.compress(clean))
    assert len(ply.read_ply(clean)) == 100


CORRUPT = {
    "empty.spz": "empty SPZ",
    "not_zstd.spz": "gzip",
    "truncated_frame.spz": "truncated|corrupt|shorter",
}


@decodes
@pytest.mark.parametrize("name,message", sorted(CORRUPT.items()))
def test_corrupt_spz_vectors_get_a_clear_error(name: str, message: str) -> None:
    with pytest.raises(SpzError, match=message):
        spz.decompress((VECTORS / "rejected" / name).read_bytes())


def _frame(header: tuple[int, ...], body: bytes = b"") -> bytes:
    return zstandard.ZstdCompressor().compress(struct.pack("<IIIBBBB", *header) + body)


@decodes
@pytest.mark.parametrize(
    "frame,message",
    [
        (_frame((0x12345678, 2, 10, 0, 12, 0, 0)), "magic"),
        (_frame((spz.MAGIC, 3, 10, 0, 12, 0, 0)), "version 3"),
        (_frame((spz.MAGIC, 0, 10, 0, 12, 0, 0)), "version 0"),
        (_frame((spz.MAGIC, 2, 10, 4, 12, 0, 0)), "SH degree 4"),
        (_frame((spz.MAGIC, 2, 0, 0, 12, 0, 0)), "0 gaussians"),
        (_frame((spz.MAGIC, 2, 4_000_000_000, 0, 12, 0, 0)), "more than"),
        (_frame((spz.MAGIC, 2, 9_999_999, 3, 12, 0, 0), b"\0" * 1000), "truncated SPZ"),
        (b"PK\x03\x04 zip", "zstd frame magic"),
        (b"\x28\xb5\x2f\xfd\xff", "corrupt"),
        (_frame((spz.MAGIC, 2, 1, 0, 12, 0, 0)) + b"", "truncated SPZ"),
    ],
)
def test_corrupt_spz_is_refused_without_a_huge_allocation(frame: bytes, message: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(SpzError, match=message):
            spz.decode(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000


@decodes
def test_cut_off_frames_are_refused_at_every_length() -> None:
    frame = spz.compress(vector("inria_1000_sh1.ply"))
    for cut in range(0, len(frame), 997):
        with pytest.raises(SpzError, match=r"SPZ"):
            spz.decode(frame[:cut])


def test_encode_refuses_an_empty_cloud() -> None:
    empty = GaussianCloud(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 4)), np.zeros(0), np.zeros((0, 3)))
    with pytest.raises(SpzError, match="empty"):
        spz.encode(empty)


def test_antialiased_flag_is_written() -> None:
    payload = payload_of(spz.encode(random_cloud(10), antialiased=True))
    assert payload[14] == spz.FLAG_ANTIALIASED


# --- pyspz's digests of large stress clouds (every SH degree, hard quaternions, rounding ties) ----

STRESS = VECTORS.parent / "sn17-spz-stress"
_spec = importlib.util.spec_from_file_location("stress_clouds", STRESS / "stress_clouds.py")
stress_clouds = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stress_clouds)
STRESS_EXPECTED = json.loads((STRESS / "expected.json").read_text())


@pytest.fixture(scope="module", params=stress_clouds.CASES, ids=[case[0] for case in stress_clouds.CASES])
def stress(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    """(case, our SPZ frame of the case's PLY); one cloud in memory at a time (up to 500k gaussians)."""
    name, n, degree, normals, seed, shuffled = request.param
    return name, spz.compress(stress_clouds.cloud(n, degree, normals, seed, shuffled))


def test_stress_payload_matches_pyspz_digest(stress: tuple[str, bytes]) -> None:
    name, frame = stress
    assert hashlib.sha256(payload_of(frame)).hexdigest() == STRESS_EXPECTED[name]["payload"]


@decodes
def test_stress_decompress_matches_pyspz_digests(stress: tuple[str, bytes]) -> None:
    name, frame = stress
    assert hashlib.sha256(spz.decompress(frame)).hexdigest() == STRESS_EXPECTED[name]["decoded"]
    assert hashlib.sha256(spz.decompress(frame, include_normals=True)).hexdigest() == STRESS_EXPECTED[name]["decoded_n"]


# --- errors: ValueError like every splat error, RuntimeError like pyspz's --------------------------

@pytest.mark.parametrize("caught", [ValueError, RuntimeError])
def test_errors_are_caught_as_pyspz_errors_too(caught: type[Exception]) -> None:
    with pytest.raises(caught, match="0 vertices"):
        spz.compress((VECTORS / "rejected" / "zero_vertices.ply").read_bytes())
    with pytest.raises(caught, match="gzip"):
        spz.decompress((VECTORS / "rejected" / "not_zstd.spz").read_bytes())
    with pytest.raises(caught, match="empty cloud"):
        spz.encode(random_cloud(1).subset(np.zeros(1, bool)))


# --- decompress writes the PLY in place, on the pool's threads -------------------------------------

@decodes
def test_decompress_gives_independent_plain_bytes() -> None:
    frame = vector("large_20000_sh3.spz")
    first, second = spz.decompress(frame), spz.decompress(frame)
    assert type(first) is bytes and first == second == vector("large_20000_sh3.decoded.ply")
    assert first is not second and hash(first) == hash(second)
    spz.decompress(vector("inria_1000_sh1.spz"))  # a later call does not touch earlier results
    assert first == vector("large_20000_sh3.decoded.ply")


@decodes
def test_concurrent_decompress_calls_share_the_pool_safely() -> None:
    frames = [spz.encode(random_cloud(40_000, sh_degree=d, seed=d)) for d in (0, 1, 2, 3)] * 2
    expected = [spz.decompress(f, include_normals=bool(i % 2)) for i, f in enumerate(frames)]
    with ThreadPoolExecutor(max_workers=len(frames)) as callers:
        got = list(callers.map(lambda i: spz.decompress(frames[i], include_normals=bool(i % 2)), range(len(frames))))
    assert got == expected


@decodes
@pytest.mark.parametrize("section", ["positions", "colours", "rotations", "sh"])
def test_a_payload_cut_in_any_section_is_refused(section: str) -> None:
    n = 40_000  # rows split over the pool's threads
    payload = spz.pack(random_cloud(n, sh_degree=1))
    cut = 16 + {"positions": 4 * n, "colours": 12 * n, "rotations": 17 * n, "sh": 23 * n}[section]
    with pytest.raises(SpzError, match="truncated SPZ: 40,000 gaussians need"):
        spz.decompress(zstandard.ZstdCompressor().compress(payload[:cut]))


def _decompressed_digest(frame: bytes) -> str:
    return hashlib.sha256(spz.decompress(frame)).hexdigest()


@decodes
def test_a_forked_child_decodes_on_a_pool_of_its_own() -> None:
    """The parent's pool threads do not exist in a forked child; reusing that pool would hang."""
    frame = spz.encode(random_cloud(40_000, sh_degree=1))
    expected = _decompressed_digest(frame)  # the parent's pool is running now
    with multiprocessing.get_context("fork").Pool(1) as child:
        assert child.apply_async(_decompressed_digest, (frame,)).get(timeout=60) == expected
        assert child.apply_async(spz.compress, (vector("inria_1000_sh3.ply"),)).get(timeout=60) == \
            spz.compress(vector("inria_1000_sh3.ply"))


@decodes
@pytest.mark.parametrize("fractional_bits", [0, 12, 23, 30, 142, 149, 160])
def test_positions_are_the_fixed_point_values_times_two_to_minus_fractional_bits(fractional_bits: int) -> None:
    """pyspz writes 12; any other header value scales the signed 24-bit values by 2^-bits, rounded
    once in float32, in every block of the rows (40,000 gaussians: split over the threads)."""
    n = 40_000
    payload = bytearray(spz.pack(random_cloud(n)))
    payload[13] = fractional_bits
    fixed = np.frombuffer(bytes(payload[16: 16 + 9 * n]), np.uint8).reshape(3 * n, 3).astype(np.int32)
    values = fixed[:, 0] | fixed[:, 1] << 8 | fixed[:, 2] << 16
    values -= (values >= 1 << 23) * (1 << 24)
    expected = values.astype(np.float32) * np.float32(2.0 ** -fractional_bits)
    decoded = spz.decode(zstandard.ZstdCompressor().compress(bytes(payload))).positions
    assert decoded.tobytes() == expected.reshape(n, 3).astype("<f4").tobytes()


@decodes
@pytest.mark.parametrize(("n", "body"), [
    (10_000_000, 1000),  # a 10M SH3 header in a tiny frame
    (1_000_000, 4_500_000),  # half the positions: enough that the rows (236 MB) were allocated before the check
])
def test_a_frame_declaring_less_than_its_header_needs_is_refused_before_the_rows(n: int, body: int) -> None:
    frame = _frame((spz.MAGIC, 2, n, 3, 12, 0, 0), bytes(body))  # zstd writes the content size by default
    assert zstandard.get_frame_parameters(frame).content_size == 16 + body
    need = n * (9 + 1 + 3 + 3 + 3 + 45)
    tracemalloc.start()
    try:
        with pytest.raises(SpzError, match=f"^truncated SPZ: {n:,} gaussians need {need:,} payload bytes after the "
                                           f"header, the zstd frame declares {body:,}$"):
            spz.decode(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
