"""The SN17 SPZ codec: a pure-numpy drop-in for 404-GEN's ``pyspz``.

SN17 validators decode submissions with ``pyspz`` (404-Repo/spz), which wraps a
version-2 SPZ payload (Niantic's packed layout, ``NGSP`` header) in **one zstd
frame** with its content size. ``compress``/``decompress`` take and give the same
bytes pyspz does; the packing replays pyspz's float32 arithmetic exactly, so the
payload is byte-identical to pyspz's (checked against vectors pyspz made).

Layout after the 16-byte header, attribute-major: positions (3 x 24-bit fixed
point), alphas (u8), colours (u8 x 3), log-scales (u8 x 3), rotations (u8 xyz of
the unit quaternion with w >= 0), SH (u8, coefficient-major, channel innermost).

This is not Niantic's own ``.spz`` (gzip-wrapped): neither library reads the
other's files.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import numpy as np
import zstandard

from .cloud import SH_COEFFS_FOR_DEGREE, GaussianCloud, SplatError
from .ply import ply_header, read_ply
from .spz_arith import LUT, expf, fma32, pack_rotations, pair_table, quantize_sh, round_half_away, to_i32, to_u8

MAGIC = 0x5053474E  # "NGSP"
VERSION = 2
FRACTIONAL_BITS = 12
FLAG_ANTIALIASED = 0x1
MAX_DECODE_POINTS = 10_000_000
"""pyspz's decoder refuses payloads claiming more points than this."""

_HEADER = struct.Struct("<IIIBBBB")
_F = np.float32
_COLOR_SCALE = _F(0.15)
_CHUNK = 1 << 22
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class SpzError(SplatError, RuntimeError):
    """SPZ bytes that cannot be decoded, or a cloud that cannot be encoded; the message says why.

    A ``ValueError`` like every splat error, and a ``RuntimeError`` like what pyspz raises, so code
    written against either catches it."""


def _bytes_per_point(sh_degree: int, version: int = VERSION) -> int:
    position_bytes = 9 if version == 2 else 6
    return position_bytes + 1 + 3 + 3 + 3 + 3 * SH_COEFFS_FOR_DEGREE[sh_degree]


MAX_PAYLOAD = _HEADER.size + MAX_DECODE_POINTS * _bytes_per_point(3)


# --- packing -------------------------------------------------------------------------------------

def pack(cloud: GaussianCloud, antialiased: bool = False) -> bytes:
    """The uncompressed SPZ payload (header + packed arrays) exactly as pyspz builds it."""
    return _pack(cloud, antialiased).tobytes()


def _pack(cloud: GaussianCloud, antialiased: bool) -> np.ndarray:
    n = len(cloud)
    if n == 0:
        raise SpzError("cannot encode an empty cloud: SPZ needs at least one gaussian")
    if n > MAX_DECODE_POINTS:
        raise SpzError(f"{n:,} gaussians is more than the {MAX_DECODE_POINTS:,} pyspz can decode")
    header = _HEADER.pack(MAGIC, VERSION, n, cloud.sh_degree, FRACTIONAL_BITS,
                          FLAG_ANTIALIASED if antialiased else 0, 0)
    out = np.empty(_HEADER.size + n * _bytes_per_point(cloud.sh_degree), dtype=np.uint8)
    out[: _HEADER.size] = np.frombuffer(header, np.uint8)
    list(_pool().map(lambda lo: _pack_block(cloud, out, lo, min(lo + _ROWS, n)), range(0, n, _ROWS)))
    return out


_ROWS = 16384  # rows per block: small temporaries (in cache, and reused by malloc); blocks run on the pool
_WORKERS = min(4, os.cpu_count() or 1)


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="spz")


def _pack_block(cloud: GaussianCloud, out: np.ndarray, lo: int, hi: int) -> None:
    """Rows ``lo:hi`` of every attribute-major array of the payload ``out``."""
    n, k = len(cloud), cloud.sh_rest.shape[1]
    at = _HEADER.size

    def put(bytes_per_row: int, values: np.ndarray) -> None:
        nonlocal at
        out[at + bytes_per_row * lo: at + bytes_per_row * hi] = values.reshape(-1)
        at += bytes_per_row * n

    fixed = to_i32(round_half_away(cloud.positions[lo:hi] * _F(1 << FRACTIONAL_BITS)))
    put(9, fixed.astype("<i4").view(np.uint8).reshape(hi - lo, 3, 4)[:, :, :3])
    put(1, to_u8(_F(1) / (_F(1) + expf(-cloud.opacity_logits[lo:hi])) * _F(255)))
    put(3, to_u8(fma32(cloud.sh_dc[lo:hi], _COLOR_SCALE * _F(255), _F(0.5 * 255))))
    put(3, to_u8((cloud.log_scales[lo:hi] + _F(10)) * _F(16)))
    put(3, pack_rotations(cloud.rotations[lo:hi]))
    if k:  # degree-1 coefficients (the first 9 values) in 5-bit buckets, the rest in 4-bit
        sh = cloud.sh_rest[lo:hi].reshape(hi - lo, 3 * k)
        dest = out[at + 3 * k * lo: at + 3 * k * hi].reshape(hi - lo, 3 * k)
        dest[:, :9] = quantize_sh(sh[:, :9], 8)
        dest[:, 9:] = quantize_sh(sh[:, 9:], 16)


def compress(ply: bytes, compression_level: int = 1, workers: int = -1) -> bytes:
    """``pyspz.compress``: a gaussian PLY in, SN17 SPZ (one zstd frame with content size) out."""
    return encode(read_ply(ply), compression_level=compression_level, workers=workers)


def encode(cloud: GaussianCloud, compression_level: int = 1, workers: int = -1,
           antialiased: bool = False) -> bytes:
    """A cloud as SN17 SPZ bytes. ``workers <= 0`` is single-threaded, as in pyspz."""
    compressor = zstandard.ZstdCompressor(level=max(int(compression_level), 1),
                                          threads=max(int(workers), 0), write_content_size=True)
    return compressor.compress(_pack(cloud, antialiased))  # zstd reads the array's buffer: no copy


# --- unpacking -----------------------------------------------------------------------------------

def _read_payload(spz: bytes) -> tuple[tuple[int, ...], np.ndarray]:
    """The header and the arrays after it (uint8), decompressing no more than the header promises,
    and never allocating much ahead of what the frame actually delivers."""
    if not spz:
        raise SpzError("empty SPZ data")
    if spz[:2] == b"\x1f\x8b":
        raise SpzError("this is gzip data (Niantic's own .spz?), not SN17 SPZ, which is one zstd frame")
    if spz[:4] != _ZSTD_MAGIC:
        raise SpzError(f"not SN17 SPZ: expected the zstd frame magic 28 b5 2f fd, got {spz[:4].hex(' ')}")
    try:
        params = zstandard.get_frame_parameters(spz)
    except zstandard.ZstdError as exc:
        raise SpzError(f"corrupt zstd frame header: {exc}") from None
    known = params.content_size not in (0, zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR)
    if known and params.content_size > MAX_PAYLOAD:
        raise SpzError(f"zstd frame claims {params.content_size:,} bytes, more than any valid SPZ payload")
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(spz, read_across_frames=False)
        head = reader.read(_HEADER.size)
        if len(head) < _HEADER.size:
            raise SpzError(f"SPZ payload is {len(head)} bytes, shorter than its 16-byte header")
        header = _HEADER.unpack(head)
        need = _check_header(header)
        chunks, got = [], 0
        while got < need:  # each read at most doubles what the frame has delivered so far
            chunk = reader.read(min(need - got, max(got, _CHUNK)))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except zstandard.ZstdError as exc:
        raise SpzError(f"corrupt or truncated zstd frame: {exc}") from None
    if got < need:
        raise SpzError(f"truncated SPZ: {header[2]:,} gaussians need {need:,} payload bytes after the "
                       f"header, the frame holds {got:,}")
    return header, np.frombuffer(chunks[0] if len(chunks) == 1 else b"".join(chunks), np.uint8)


def _check_header(header: tuple[int, ...]) -> int:
    """Validate a payload header; return how many bytes of arrays follow it."""
    magic, version, n, degree, _fractional, _flags, _reserved = header
    if magic != MAGIC:
        raise SpzError(f"SPZ payload magic is {magic:#010x}, expected {MAGIC:#010x} ('NGSP')")
    if version not in (1, 2):
        raise SpzError(f"SPZ version {version} is not supported (pyspz reads 1 and 2)")
    if n == 0:
        raise SpzError("SPZ holds 0 gaussians")
    if n > MAX_DECODE_POINTS:
        raise SpzError(f"SPZ claims {n:,} gaussians, more than the {MAX_DECODE_POINTS:,} pyspz decodes")
    if degree > 3:
        raise SpzError(f"SPZ SH degree {degree} is not supported (0 to 3)")
    return n * _bytes_per_point(degree, version)


_PAIRS = {name: pair_table(LUT[name]) for name in ("color", "scale", "rotation")}
_MIN_BLOCK = 16384  # rows per task at least: below that, thread hand-off costs more than it saves


def _unpack_rows(header: tuple[int, ...], raw: np.ndarray, include_normals: bool) -> np.ndarray:
    """The decoded gaussians as the float32 rows of pyspz's PLY body (columns in its order).

    Rows are split into one block per pool thread (numpy releases the GIL in every step); each
    block writes its columns in place from the payload through views and byte-to-float tables."""
    n, k = header[2], SH_COEFFS_FOR_DEGREE[header[3]]
    dc = 6 if include_normals else 3
    rows = np.empty((n, dc + 3 * k + 11), "<f4")
    step = max(_MIN_BLOCK, -(-n // _WORKERS))
    if n <= step:
        _unpack_block(header, raw, rows, dc, 0, n)
    else:
        list(_pool().map(lambda lo: _unpack_block(header, raw, rows, dc, lo, min(lo + step, n)),
                         range(0, n, step)))
    return rows


def _unpack_block(header: tuple[int, ...], raw: np.ndarray, rows: np.ndarray, dc: int, lo: int, hi: int) -> None:
    """Rows ``lo:hi`` of :func:`_unpack_rows`; ``dc`` is the first colour column."""
    _magic, version, n, degree, fractional_bits, _flags, _reserved = header
    k = SH_COEFFS_FOR_DEGREE[degree]
    m, op, stride = hi - lo, dc + 3 + 3 * k, rows.strides[0]
    tmp32, tmp64 = np.empty(m, _F), np.empty(m, np.uint64)

    def column(first: int, dtype: str = "<f4") -> np.ndarray:  # one (or, as u8, two) floats per row
        return np.ndarray((m,), dtype, buffer=rows, offset=lo * stride + 4 * first, strides=(stride,))

    def source(start: int, dtype: str = "u1", step: int = 3) -> np.ndarray:  # payload bytes, strided
        return np.ndarray((m,), dtype, buffer=raw, offset=start + lo * step, strides=(step,))

    def three(start: int, first: int, lut: str) -> tuple[np.ndarray, np.ndarray]:
        """A u8 x 3 field: bytes 0-1 as a pair, byte 2 alone; gives the two index arrays."""
        pair, last = source(start, "<u2").astype(np.intp), source(start + 2).astype(np.intp)
        column(first, "<u8")[...] = np.take(_PAIRS[lut], pair, out=tmp64)
        column(first + 2)[...] = np.take(LUT[lut], last, out=tmp32)
        return pair, last

    at = 0
    if version == 1:  # legacy float16 positions
        half = raw[at + 6 * lo: at + 6 * hi].view("<f2").reshape(m, 3)
        for c in range(3):
            column(c)[...] = half[:, c]
        at += 6 * n
    else:  # 24-bit fixed point: read 4 bytes ending at the value's top byte, shift out the extra one
        scale, fixed = _F(1.0 / (1 << fractional_bits)), tmp64.view(np.int32)[:m]
        np.left_shift(source(at, "<i4", 9), 8, out=fixed)  # x has no byte before it: take the next one
        for c in range(3):
            np.right_shift(source(at + 3 * c - 1, "<i4", 9) if c else fixed, 8, out=fixed)  # sign-extends
            np.multiply(fixed, scale, out=column(c), dtype=_F)
        at += 9 * n
    if dc == 6:  # normals, written as zeros
        column(3, "<u8").fill(0)
        column(5).fill(0)
    column(op)[...] = np.take(LUT["alpha"], source(at, step=1), out=tmp32)
    three(at + n, dc, "color")
    three(at + 4 * n, op + 1, "scale")
    at += 7 * n
    xy, z = three(at, op + 5, "rotation")
    # w = sqrtf(max(0, 1 - fma(z, z, fma(x, x, y*y)))): the inner FMA is a table over (x, y) bytes,
    # the outer one a float64 sum that is never a float32 double-rounding case (see spz_arith)
    w = np.take(LUT["xy_norm"], xy, out=tmp64.view(np.float64))
    w += np.take(LUT["z_square"], z)
    np.subtract(_F(1), w, out=tmp32, dtype=_F, casting="same_kind")
    np.maximum(tmp32, _F(0), out=tmp32)
    np.sqrt(tmp32, out=column(op + 4))
    at += 3 * n
    if k:  # (b - 128) / 128, exactly b * 2^-7 - 1; coefficient-major in the payload, channel-major in the PLY
        sh = np.multiply(raw[at + 3 * k * lo: at + 3 * k * hi], _F(1 / 128), dtype=_F)
        sh -= _F(1)
        rows[lo:hi, dc + 3: op].reshape(m, 3, k)[...] = sh.reshape(m, k, 3).transpose(0, 2, 1)


def decode(spz: bytes) -> GaussianCloud:
    """SN17 SPZ bytes to a cloud, with pyspz's exact float32 decoding."""
    header, raw = _read_payload(spz)
    rows = _unpack_rows(header, raw, include_normals=False)
    k = SH_COEFFS_FOR_DEGREE[header[3]]
    op = 6 + 3 * k
    return GaussianCloud(
        positions=rows[:, 0:3],
        log_scales=rows[:, op + 1: op + 4],
        rotations=rows[:, op + 4: op + 8],
        opacity_logits=rows[:, op],
        sh_dc=rows[:, 3:6],
        sh_rest=rows[:, 6:op].reshape(len(rows), 3, k).transpose(0, 2, 1),
    )


def decompress(spz: bytes, include_normals: bool = False) -> bytes:
    """``pyspz.decompress``: SN17 SPZ in, the gaussian PLY pyspz writes out (normals as zeros)."""
    header, raw = _read_payload(spz)
    rows = _unpack_rows(header, raw, include_normals)
    head = ply_header(header[2], SH_COEFFS_FOR_DEGREE[header[3]], include_normals)
    return b"".join((head, rows.data))  # the one copy of the body
