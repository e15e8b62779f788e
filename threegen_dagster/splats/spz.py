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
from .ply import read_ply, write_ply

MAGIC = 0x5053474E  # "NGSP"
VERSION = 2
FRACTIONAL_BITS = 12
FLAG_ANTIALIASED = 0x1
MAX_DECODE_POINTS = 10_000_000
"""pyspz's decoder refuses payloads claiming more points than this."""

_HEADER = struct.Struct("<IIIBBBB")
_F = np.float32
_COLOR_SCALE = _F(0.15)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class SpzError(SplatError):
    """SPZ bytes that cannot be decoded, or a cloud that cannot be encoded; the message says why."""


def _bytes_per_point(sh_degree: int, version: int = VERSION) -> int:
    position_bytes = 9 if version == 2 else 6
    return position_bytes + 1 + 3 + 3 + 3 + 3 * SH_COEFFS_FOR_DEGREE[sh_degree]


MAX_PAYLOAD = _HEADER.size + MAX_DECODE_POINTS * _bytes_per_point(3)


# --- float32 arithmetic exactly as pyspz's C++ does it -------------------------------------------

def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``roundf``: half away from zero (numpy's ``rint`` rounds half to even)."""
    t = np.trunc(x)
    frac = x - t  # exact, with the sign of x
    t += frac >= _F(0.5)
    t -= frac <= _F(-0.5)
    return t


def _to_u8(x: np.ndarray) -> np.ndarray:
    """``uint8(clamp(round(x), 0, 255))``; NaN gives 0 as the x86 float-to-int conversion does."""
    x = np.clip(x, _F(0), _F(255))  # NaN stays NaN and is zeroed below; -inf/+inf clamp
    r = np.floor(x)
    r += (x - r) >= _F(0.5)  # x >= 0 here, so this is half away from zero, exactly
    r[np.isnan(r)] = 0
    return r.astype(np.uint8)


def _to_i32(x: np.ndarray) -> np.ndarray:
    """``static_cast<int32_t>`` on x86: truncation, with INT_MIN for NaN and out-of-range values."""
    bad = ~(np.abs(x) < 2.0**31)
    out = np.where(bad, 0, x).astype(np.int32)
    out[bad] = np.iinfo(np.int32).min
    return out


def _fma(a: np.ndarray, b: np.ndarray | np.float32, c: np.ndarray | np.float32) -> np.ndarray:
    """float32 fused multiply-add (one rounding): pyspz's build contracts ``a * b + c`` into FMAs.

    The float32 product is exact in float64, so only the final sum is rounded (twice, which
    can differ from a true FMA in rare halfway cases; the vectors show none).
    """
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(_F)


def _expf(x: np.ndarray) -> np.ndarray:
    """C ``expf`` (correctly rounded); numpy's float32 exp is off by an ulp on some inputs."""
    with np.errstate(over="ignore"):
        return np.exp(x.astype(np.float64)).astype(_F)


def _decode_tables() -> dict[str, np.ndarray]:
    """Decoded floats for the byte fields that need C's libm or an FMA to come out exact."""
    b = np.arange(256, dtype=_F)
    a = b / _F(255)
    with np.errstate(divide="ignore"):
        alpha = np.log((a / (_F(1) - a)).astype(np.float64)).astype(_F)  # C logf, correctly rounded
    return {
        "alpha": alpha,
        "rotation": _fma(b, _F(1.0 / 127.5), _F(-1)),
    }


def _quantize_sh(x: np.ndarray, bucket: int) -> np.ndarray:
    """pyspz's ``quantizeSH``: ``q = int(round(x * 128) + 128)``, rounded to a bucket centre, clamped.

    Values whose ``q`` overflows int32 (or NaN) become INT_MIN in C and so clamp to 0, not 255.
    """
    v = np.multiply(x, _F(128))
    lo, hi = v.min(initial=0), v.max(initial=0)
    overflow = None if lo > -2.0**30 and hi < 2.0**30 else ~(np.abs(v) < _F(2.0**31 - 256))
    np.clip(v, -512, 512, out=v)  # beyond this everything clamps alike
    k = _round_half_away(v).astype(np.int16) + np.int16(128 + bucket // 2)
    k >>= bucket.bit_length() - 1  # floor division by the power-of-two bucket (C's truncation
    k <<= bucket.bit_length() - 1  # differs only below zero, which clamps to 0 either way)
    np.clip(k, 0, 255, out=k)
    if overflow is not None:
        k[overflow] = 0
    return k.astype(np.uint8)


# --- packing -------------------------------------------------------------------------------------

def pack(cloud: GaussianCloud, antialiased: bool = False) -> bytes:
    """The uncompressed SPZ payload (header + packed arrays) exactly as pyspz builds it."""
    return _pack(cloud, antialiased).tobytes()


def _pack(cloud: GaussianCloud, antialiased: bool) -> np.ndarray:
    n, k = len(cloud), cloud.sh_rest.shape[1]
    if n == 0:
        raise SpzError("cannot encode an empty cloud: SPZ needs at least one gaussian")
    if n > MAX_DECODE_POINTS:
        raise SpzError(f"{n:,} gaussians is more than the {MAX_DECODE_POINTS:,} pyspz can decode")
    header = _HEADER.pack(MAGIC, VERSION, n, cloud.sh_degree, FRACTIONAL_BITS,
                          FLAG_ANTIALIASED if antialiased else 0, 0)
    out = np.empty(_HEADER.size + n * _bytes_per_point(cloud.sh_degree), dtype=np.uint8)
    out[: _HEADER.size] = np.frombuffer(header, np.uint8)
    at = _HEADER.size

    def put(values: np.ndarray) -> None:
        nonlocal at
        flat = values.reshape(-1)
        out[at: at + flat.size] = flat
        at += flat.size

    fixed = _to_i32(_round_half_away(cloud.positions * _F(1 << FRACTIONAL_BITS)))
    put(fixed.astype("<i4").view(np.uint8).reshape(n, 3, 4)[:, :, :3])
    put(_to_u8(_F(1) / (_F(1) + _expf(-cloud.opacity_logits)) * _F(255)))
    put(_to_u8(_fma(cloud.sh_dc, _COLOR_SCALE * _F(255), _F(0.5 * 255))))
    put(_to_u8((cloud.log_scales + _F(10)) * _F(16)))
    put(_pack_rotations(cloud.rotations))
    if k:
        put(_pack_sh(cloud.sh_rest.reshape(n, 3 * k)))
    return out


_SH_ROWS = 16384  # rows per block: keeps the quantiser's passes in cache; blocks run on two threads


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="spz")


def _pack_sh(sh: np.ndarray) -> np.ndarray:
    """SH bytes: degree-1 coefficients (the first 9 values) in 5-bit buckets, the rest in 4-bit."""
    out = np.empty(sh.shape, np.uint8)

    def block(start: int) -> None:
        rows = sh[start: start + _SH_ROWS]
        out[start: start + _SH_ROWS, :9] = _quantize_sh(rows[:, :9], 8)
        out[start: start + _SH_ROWS, 9:] = _quantize_sh(rows[:, 9:], 16)

    list(_pool().map(block, range(0, len(sh), _SH_ROWS)))
    return out


def _pack_rotations(wxyz: np.ndarray) -> np.ndarray:
    """xyz bytes of the normalised quaternion with w made non-negative (pyspz's float32 steps)."""
    x, y, z, w = wxyz[:, 1], wxyz[:, 2], wxyz[:, 3], wxyz[:, 0]
    norm = np.sqrt(x * x + y * y + z * z + w * w)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = _F(1) / norm
        scale = np.where((w * inv) < 0, _F(-127.5), _F(127.5))
        xyz = np.stack([x, y, z], axis=1) * inv[:, None]
        return _to_u8(_fma(xyz, scale[:, None], _F(127.5)))


def compress(ply: bytes, compression_level: int = 1, workers: int = -1) -> bytes:
    """``pyspz.compress``: a gaussian PLY in, SN17 SPZ (one zstd frame with content size) out."""
    return encode(read_ply(ply), compression_level=compression_level, workers=workers)


def encode(cloud: GaussianCloud, compression_level: int = 1, workers: int = -1,
           antialiased: bool = False) -> bytes:
    """A cloud as SN17 SPZ bytes. ``workers <= 0`` is single-threaded, as in pyspz."""
    compressor = zstandard.ZstdCompressor(level=max(int(compression_level), 1),
                                          threads=max(int(workers), 0), write_content_size=True)
    return compressor.compress(_pack(cloud, antialiased))  # zstd reads the array's buffer: no copy


_LUT = _decode_tables()


# --- unpacking -----------------------------------------------------------------------------------

def _read_payload(spz: bytes) -> tuple[tuple[int, ...], bytearray]:
    """Decompress just enough of the frame to hold the header's promised arrays, never more."""
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
        body = bytearray()
        while len(body) < need:  # bounded by what the header promises, never by the frame
            chunk = reader.read(min(need - len(body), 1 << 22))
            if not chunk:
                break
            body += chunk
    except zstandard.ZstdError as exc:
        raise SpzError(f"corrupt or truncated zstd frame: {exc}") from None
    if len(body) < need:
        raise SpzError(f"truncated SPZ: {header[2]:,} gaussians need {need:,} payload bytes after the "
                       f"header, the frame holds {len(body):,}")
    return header, body


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


def decode(spz: bytes) -> GaussianCloud:
    """SN17 SPZ bytes to a cloud, with pyspz's exact float32 decoding."""
    header, body = _read_payload(spz)
    _magic, version, n, degree, fractional_bits, _flags, _reserved = header
    k = SH_COEFFS_FOR_DEGREE[degree]
    raw = np.frombuffer(body, dtype=np.uint8)
    at = 0

    def take(count: int) -> np.ndarray:
        nonlocal at
        at += count
        return raw[at - count: at]

    if version == 1:  # legacy float16 positions
        positions = take(n * 6).view("<f2").astype(_F).reshape(n, 3)
    else:
        b = take(n * 9).reshape(n * 3, 3).astype(np.int32)
        fixed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        fixed -= (fixed & 0x800000) << 1  # sign-extend 24 bits
        positions = (fixed.astype(_F) * _F(1.0 / (1 << fractional_bits))).reshape(n, 3)
    alphas = take(n)
    colors = take(n * 3).reshape(n, 3).astype(_F)
    scales = take(n * 3).reshape(n, 3).astype(_F)
    rot = _LUT["rotation"][take(n * 3).reshape(n, 3)]
    sh = take(n * 3 * k).reshape(n, k, 3).astype(_F)
    sh -= _F(128)
    sh *= _F(1 / 128)  # exact: a power-of-two scale
    x, y, z = rot[:, 0], rot[:, 1], rot[:, 2]
    # w = sqrtf(max(0, 1 - |xyz|^2)) with the sum contracted as pyspz's build does: z*z + (x*x + y*y)
    w = np.sqrt(np.maximum(_F(0), _F(1) - _fma(z, z, _fma(x, x, y * y))))
    return GaussianCloud(
        positions=positions,
        log_scales=scales / _F(16) - _F(10),
        rotations=np.concatenate([w[:, None], rot], axis=1),
        opacity_logits=_LUT["alpha"][alphas],
        sh_dc=((colors / _F(255)) - _F(0.5)) / _COLOR_SCALE,
        sh_rest=sh,
    )


def decompress(spz: bytes, include_normals: bool = False) -> bytes:
    """``pyspz.decompress``: SN17 SPZ in, the gaussian PLY pyspz writes out (normals as zeros)."""
    return write_ply(decode(spz), include_normals=include_normals)
