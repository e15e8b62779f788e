"""pyspz's float32 arithmetic, replayed exactly in numpy (the SPZ codec's numeric core).

pyspz (404-Repo/spz, GCC 12 -O3 on x86-64) computes in float32 with IEEE round-to-nearest-even,
``std::round`` (half away from zero), x86 float-to-int conversion, and FMA instructions wherever
GCC contracts ``a * b + c`` (``-ffp-contract=fast`` is GCC's default). numpy's float32 ``+ - * /``
and ``sqrt`` round exactly as the hardware does (including overflow to inf and gradual
underflow), so only the FMA needs emulating, and only the operand order of each contraction
needs knowing. Each contraction below names the C++ expression it replays.

Why :func:`fma32` is exact (float32 ``fma(a, b, c)``: ``a*b + c`` rounded once):

* ``a*b`` of two float32s has at most 48 significant bits and a magnitude within 2^-298..2^256,
  so it is exact in float64; so is ``c``. The only rounding to replay is that of ``p + c``.
* ``s = RN64(p + c)`` then ``RN32(s)`` rounds twice. Every float32 rounding boundary (a midpoint
  between neighbouring float32s, subnormal ones and the overflow threshold included) is a float64
  number. RN64 is monotonic, so the exact sum and ``s`` lie on the same side of every boundary,
  unless ``s`` lands exactly on one. Then RN32(s) is the tie-to-even choice, which is wrong when
  the exact sum was not the midpoint itself (the float64 rounding error is not zero).
* So: find the sums that landed on a float32 midpoint (their low 29 float64 mantissa bits read
  ``1000...0``; float32-subnormal sums are all checked), get their exact float64 rounding error
  with Knuth's TwoSum, and where it is not zero move ``s`` one float64 step toward the exact sum.
  That is round-to-odd, and RN32 of a round-to-odd float64 is the correctly rounded float32
  because float64 carries more than float32's precision plus two bits (Boldo & Melquiond).
  A float64 sum never rounds a non-zero exact sum to zero (all values are multiples of 2^-298).

The decoder's rotation w is ``sqrtf(max(0, 1 - fma(z, z, fma(x, x, y*y))))`` over 256 byte values
per axis; ``test_spz_arith`` checks all 2^24 byte triples: none of their float64 sums lands on a
float32 midpoint inexactly, so the decoder's hot path adds them without the check.
"""

from __future__ import annotations

import numpy as np

F = np.float32
_MID_MASK, _MID_BITS = np.int64(0x1FFFFFFF), np.int64(0x10000000)  # float64 bits of a float32 midpoint
_F32_NORMAL_MIN = 2.0 ** -126


def fma32(a: np.ndarray | np.float32, b: np.ndarray | np.float32, c: np.ndarray | np.float32) -> np.ndarray:
    """float32 ``fma(a, b, c)``, correctly rounded, as an array of at least one dimension (see the
    module docstring for why it is exact)."""
    a, b, c = np.broadcast_arrays(np.atleast_1d(a).astype(F, copy=False), np.asarray(b, F), np.asarray(c, F))
    s = np.multiply(a, b, dtype=np.float64)
    s += c
    with np.errstate(over="ignore"):
        r = s.astype(F)
    hazard = np.abs(r) <= _F32_NORMAL_MIN  # a float32-subnormal result (or at its edge),
    bits = s.view(np.int64)
    bits &= _MID_MASK  # (s is done with)
    hazard |= bits == _MID_BITS  # or a float64 sum exactly on a float32 midpoint
    if hazard.any():
        at = np.unravel_index(np.flatnonzero(hazard), hazard.shape)  # (faster than nonzero in 2-D)
        ps, cs = np.multiply(a[at], b[at], dtype=np.float64), c[at].astype(np.float64)
        ss = ps + cs  # the same float64 sums again
        back = ss - ps  # TwoSum: err = exact (ps + cs) - ss, computed exactly
        err = (ps - (ss - back)) + (cs - back)
        odd = np.where((err != 0) & ((ss.view(np.int64) & 1) == 0),  # round to odd: a step to the exact sum
                       ss.view(np.int64) + np.where((err > 0) == (ss > 0), 1, -1), ss.view(np.int64))
        r[at] = odd.view(np.float64).astype(F)
    return r


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``roundf``: half away from zero (numpy's ``rint`` rounds half to even)."""
    t = np.trunc(x)
    frac = x - t  # exact, with the sign of x
    t += frac >= F(0.5)
    t -= frac <= F(-0.5)
    return t


def to_u8(x: np.ndarray) -> np.ndarray:
    """``uint8(clamp(round(x), 0, 255))``; NaN gives 0 as the x86 float-to-int conversion does."""
    x = np.fmax(x, F(0))  # negatives and NaN to 0
    np.minimum(x, F(255), out=x)
    r = np.floor(x)
    x -= r  # the fraction, exactly
    r += x >= F(0.5)  # x >= 0 here, so this is half away from zero
    return r.astype(np.uint8)


def to_i32(x: np.ndarray) -> np.ndarray:
    """``static_cast<int32_t>`` on x86: truncation, with INT_MIN for NaN and out-of-range values."""
    if x.size and -(2.0**31) < x.min() and x.max() < 2.0**31:  # (False with NaN)
        return x.astype(np.int32)
    bad = ~(np.abs(x) < 2.0**31)
    out = np.where(bad, 0, x).astype(np.int32)
    out[bad] = np.iinfo(np.int32).min
    return out


def expf(x: np.ndarray) -> np.ndarray:
    """C ``expf`` (correctly rounded); numpy's float32 exp is off by an ulp on some inputs."""
    with np.errstate(over="ignore"):
        return np.exp(x.astype(np.float64)).astype(F)


def quantize_sh(x: np.ndarray, bucket: int) -> np.ndarray:
    """pyspz's ``quantizeSH``: ``q = int(round(x * 128) + 128)``, rounded to a bucket centre, clamped.

    Values whose ``q`` overflows int32 (or NaN) become INT_MIN in C and so clamp to 0, not 255.
    """
    v = np.multiply(x, F(128))
    lo, hi = v.min(initial=0), v.max(initial=0)
    overflow = None if lo > -2.0**30 and hi < 2.0**30 else ~(np.abs(v) < F(2.0**31 - 256))
    np.clip(v, -512, 512, out=v)  # beyond this everything clamps alike
    k = round_half_away(v).astype(np.int16) + np.int16(128 + bucket // 2)
    k >>= bucket.bit_length() - 1  # floor division by the power-of-two bucket (C's truncation
    k <<= bucket.bit_length() - 1  # differs only below zero, which clamps to 0 either way)
    np.clip(k, 0, 255, out=k)
    if overflow is not None:
        k[overflow] = 0
    return k.astype(np.uint8)


def pack_rotations(wxyz: np.ndarray) -> np.ndarray:
    """(N, 3) xyz bytes (a transposed view) of the normalised quaternion with w made non-negative, as pyspz packs them.

    pyspz holds the quaternion as ``v = (x, y, z, w) = (rot_1, rot_2, rot_3, rot_0)`` and computes
    ``norm = sqrtf(v0*v0 + v1*v1 + v2*v2 + v3*v3)``, contracted by GCC (it fuses each product
    into the sum that follows, leaving ``v1*v1`` as the one plain product) to
    ``sqrtf(fma(w, w, fma(z, z, fma(x, x, y*y))))``; then ``q = v / norm`` (a division per
    component), ``q * (q.w < 0 ? -127.5 : 127.5) + 127.5`` (an FMA) and ``toUint8``. float32
    overflow (huge components: inf norm, q = 0) and underflow (tiny ones: zero norm, q = inf, or
    NaN for a zero quaternion, which packs as 0) follow from doing every step in float32.
    """
    v = wxyz.T  # component-major, so every step runs along all N quaternions at once
    w, x, y, z = v
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        norm = np.sqrt(fma32(w, w, fma32(z, z, fma32(x, x, y * y))))
        scale = np.where(w / norm < 0, F(-127.5), F(127.5))
        return u8_of_fma(v[1:] / norm, scale, F(127.5)).T


COLOR_FACTOR = F(0.15) * F(255)  # pyspz's colorScale * 255.0f


def u8_of_fma(a: np.ndarray, b: np.ndarray | np.float32, c: np.float32) -> np.ndarray:
    """``toUint8(fma(a, b, 127.5))`` for pyspz's colour and rotation bytes: ``b`` is
    ``COLOR_FACTOR`` or +-127.5 and ``c`` is 127.5. Computed as the float64 sum rounded to float32,
    with no double-rounding check, because for these constants it gives the same byte for every
    float32 ``a``:

    * ``a*b + 127.5`` is exact in float64 unless ``|a| < 2^-19`` (the product has at most 32
      significant bits; the sum needs more than 53 only when they reach far below 127.5's) or
      ``|a*b| > 2^49`` (the byte saturates at 0 or 255 either way); so only sums within 2^-11 of
      127.5 can round twice, and the only byte threshold there is 127.5 itself.
    * There the byte is 128 exactly when the float32 sum is >= 127.5, i.e. when the sum reaches the
      float32 midpoint ``127.5 - 2^-18``. Rounding to float64 first could only move a sum in
      ``[127.5 - 2^-18 - 2^-47, 127.5 - 2^-18)`` onto it, which needs ``a*b = -(2^-18 + k 2^-49)``
      (or ``k 2^-50``) with k in 1..4 (1..8): for ``b = 127.5 = 255/2`` that is ``255 m = 2^31 + k``
      or ``2^32 + k`` for an integer float32 mantissa m, for ``b = 38.25 = 153/4`` it is
      ``153 m = 2^31 + k``; 2^31 = 128 and 2^32 = 1 (mod 255), 2^31 = 128 (mod 153), so no k fits.

    ``test_spz_arith`` checks every float32 near every rounding threshold against :func:`fma32`.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        s = np.multiply(a, b, dtype=np.float64)
        s += c
        return to_u8(s.astype(F))


# --- decode tables (byte -> float exactly as pyspz's unpack computes it) -------------------------

def _decode_tables() -> dict[str, np.ndarray]:
    b = np.arange(256, dtype=F)
    a = b / F(255)
    with np.errstate(divide="ignore"):
        alpha = np.log((a / (F(1) - a)).astype(np.float64)).astype(F)  # C logf, correctly rounded
    rot = fma32(b, F(1) / F(127.5), F(-1))  # r * (1.0f / 127.5f) + -1, contracted
    rot64 = rot.astype(np.float64)
    xy = fma32(rot[None, :], rot[None, :], rot[:, None] * rot[:, None])  # [y byte, x byte]: fma(x, x, y*y)
    return {
        "alpha": alpha,
        "color": ((b / F(255)) - F(0.5)) / F(0.15),
        "scale": b / F(16) - F(10),
        "rotation": rot,
        "xy_norm": xy.ravel(),  # indexed by the little-endian u16 of bytes (x, y)
        "z_square": rot64 * rot64,  # exact in float64
    }


def pair_table(lut: np.ndarray) -> np.ndarray:
    """(lut[b0], lut[b1]) as one uint64, indexed by the little-endian u16 of two adjacent bytes."""
    pair = np.empty((256, 256, 2), F)
    pair[..., 0] = lut[None, :]
    pair[..., 1] = lut[:, None]
    return pair.reshape(-1).view(np.uint64)


LUT = _decode_tables()
