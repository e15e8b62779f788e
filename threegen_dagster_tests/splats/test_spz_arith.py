"""pyspz's float32 arithmetic (``spz_arith``) against an exact scalar model of its C++.

The model does every step the way pyspz's build does, one value at a time: numpy float32 scalars
for ``* / sqrt`` (IEEE, like the hardware), and each FMA computed exactly with Fractions and
rounded once to the nearest float32 (ties to even). The cases are the hard ones: float64 sums
that land on a float32 midpoint (where rounding twice goes wrong), exact ties, float32 overflow and
underflow of the quaternion's squared norm, zero, axis-aligned and w = -1 quaternions.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import zstandard

from threegen_dagster.splats import spz, spz_arith
from threegen_dagster.splats.spz_arith import LUT, fma32, pack_rotations, u8_of_fma

from .conftest import random_cloud

F = np.float32
UP, DOWN = F(np.inf), F(-np.inf)


def exact_fma(a: float, b: float, c: float) -> np.float32:
    """float32 fma(a, b, c) by definition: the exact a*b + c, rounded once to nearest-even."""
    a, b, c = F(a), F(b), F(c)
    if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(c)):
        with np.errstate(invalid="ignore", over="ignore"):
            return F(np.float64(a) * np.float64(b) + np.float64(c))  # inf/NaN propagate the same
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    largest = Fraction(float(np.finfo(F).max))
    if abs(exact) >= largest + Fraction(2) ** 103:  # past FLT_MAX by half an ulp or more
        return F(np.inf) if exact > 0 else F(-np.inf)
    near = F(float(exact))
    candidates = [near, np.nextafter(near, DOWN), np.nextafter(near, UP)]
    return min((c for c in candidates if np.isfinite(c)),
               key=lambda c: (abs(Fraction(float(c)) - exact), int(np.array(c).view(np.uint32)) & 1))


def twice_rounded_fma(a: float, b: float, c: float) -> np.float32:
    """What a plain float64 emulation gives: the sum rounded to float64, then to float32."""
    return F(np.float64(F(a)) * np.float64(F(b)) + np.float64(F(c)))


def c_to_u8(x: np.float32) -> int:
    """``static_cast<uint8_t>(std::clamp(std::round(x), 0.f, 255.f))`` on x86 (NaN -> 0)."""
    if np.isnan(x):
        return 0
    r = np.trunc(x) + (1 if x - np.trunc(x) >= 0.5 else -1 if x - np.trunc(x) <= -0.5 else 0)
    return int(min(max(r, 0), 255))


def pyspz_rotation_bytes(w: float, x: float, y: float, z: float) -> list[int]:
    """pyspz's packGaussians for one quaternion (PLY order: rot_0 = w), step by step."""
    w, x, y, z = F(w), F(x), F(y), F(z)
    with np.errstate(all="ignore"):
        norm = np.sqrt(exact_fma(w, w, exact_fma(z, z, exact_fma(x, x, y * y))))
        q = [x / norm, y / norm, z / norm, w / norm]
        scale = F(-127.5) if q[3] < 0 else F(127.5)
        return [c_to_u8(exact_fma(c, scale, F(127.5))) for c in q[:3]]


def bits(value: int) -> float:
    return float(np.array(value, np.uint32).view(F))


# fma(a, b, c) whose float64 sum lands exactly on a float32 midpoint though the exact sum does not
DOUBLE_ROUNDING = [
    (1 + 2**-23, (1 - 2**-23) * 2**-24, 1 + 2**-23),  # exact sum just below the midpoint
    (-(1 + 2**-23), (1 - 2**-23) * 2**-24, 1 + 2**-23),  # just above one
    (-(1 + 2**-23), (1 - 2**-23) * 2**-24, -(1 + 2**-23)),
    *[(bits(x), bits(x), float(F(bits(y)) * F(bits(y))))  # squares, as in pyspz's norm: x*x + y*y
      for x, y in [(1068827946, 940818639), (1068828115, 923758064), (1068828185, 937926210)]],
]


@pytest.mark.parametrize("a,b,c", DOUBLE_ROUNDING)
def test_fma32_is_exact_where_rounding_twice_is_not(a: float, b: float, c: float) -> None:
    assert twice_rounded_fma(a, b, c) != exact_fma(a, b, c)  # the case is a hard one
    assert fma32(F(a), F(b), F(c)) == exact_fma(a, b, c)


EDGES = [
    (1.0, 2**-24, 1.0),  # an exact tie, to even: 1
    (1.0, 2**-24, 1 + 2**-23),  # an exact tie, to even: up
    (2.0**64, 2.0**64, 0.0),  # overflow to inf
    (-(2.0**64), 2.0**64, 1.0),
    (3.4e38, 1.0, 3.4e38),
    (2.0**-75, 2.0**-75, 0.0),  # 2^-150: a tie below the smallest subnormal, to even: 0
    (2.0**-75, 3 * 2.0**-76, 0.0),  # 1.5 * 2^-150: up to 2^-149
    (2.0**-70, 2.0**-70, 2.0**-149),  # subnormal sums
    (2.0**-70, -(2.0**-70), 2.0**-130),
    (-1.0, 1.0, 1.0),  # exact zero is +0
    (0.0, 5.0, -0.0),
]


@pytest.mark.parametrize("a,b,c", EDGES)
def test_fma32_ties_overflow_and_subnormals(a: float, b: float, c: float) -> None:
    with np.errstate(over="ignore"):
        got = fma32(F(a), F(b), F(c))
    assert np.array(got).view(np.uint32) == np.array(exact_fma(a, b, c)).view(np.uint32)


def test_fma32_matches_the_exact_fma_on_random_triples() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    values = (rng.choice([-1, 1], (3, n)) * rng.uniform(1, 2, (3, n))
              * 2.0 ** rng.integers(-80, 64, (3, n))).astype(F)
    values[2, ::3] = values[0, ::3] * values[1, ::3]  # sums that cancel to a few bits
    got = fma32(*values)
    expected = [exact_fma(*values[:, i]) for i in range(n)]
    np.testing.assert_array_equal(got.view(np.uint32), np.array(expected, F).view(np.uint32))


HARD_QUATERNIONS = [  # PLY order: w (rot_0), x, y, z
    (0, 0, 0, 0),  # 0/0: NaN, packed as 0
    (1, 0, 0, 0), (-1, 0, 0, 0), (0, 1, 0, 0), (0, -1, 0, 0), (0, 0, 1, 0), (0, 0, 0, -1),
    (-1e-45, 0, 0, 0),  # a subnormal w: its square underflows to 0, w / 0 = -inf
    (1e-30, -2e-30, 3e-30, 0),  # every square underflows: q = +-inf, or NaN for the zero component
    (1e-20, 1e-20, -1e-20, 1e-20),  # squares subnormal (2^-133)
    (1e20, -3e20, 2e20, 1e19),  # y*y overflows: norm inf, q = 0
    (3.4e38, 3.4e38, 0, 0), (-1e25, 1, 2, 3),
    (-0.5, 0.5, -0.5, 0.5), (0.5, 0.5, 0.5, 0.5), (-0.0, 0.6, 0.8, 0),  # -0 is not < 0
    *[(w, x, y, z) for x, y in [(bits(1068827946), bits(940818639)), (bits(1068828115), bits(923758064))]
      for w, z in [(0, 0)]],  # double-rounding cases of fma(x, x, y*y) in the norm
    (bits(1068827946), 0, bits(940818639), 0),  # ... of fma(w, w, y*y)
    (0, 0, bits(940818639), bits(1068827946)),  # ... of fma(z, z, y*y)
]


def test_rotation_bytes_match_pyspz_on_hard_quaternions() -> None:
    q = np.array(HARD_QUATERNIONS, F)
    expected = [pyspz_rotation_bytes(*row) for row in q]
    assert pack_rotations(q).tolist() == expected


def test_rotation_bytes_match_pyspz_on_random_magnitudes() -> None:
    rng = np.random.default_rng(11)
    q = (rng.normal(size=(2000, 4)) * 10.0 ** rng.uniform(-25, 25, (2000, 1))).astype(F)
    q[::5] = rng.normal(size=(400, 4)) * 10.0 ** rng.uniform(-44, 37, (400, 4))  # components of unlike size
    q[::7, rng.integers(0, 4)] = 0
    assert np.isfinite(q).all()
    expected = [pyspz_rotation_bytes(*row) for row in q]
    assert pack_rotations(q).tolist() == expected


# Random quaternions (float32 bits, PLY order) where a near-miss formula packs one byte differently:
# the plain sum of squares times 1/norm (what this codec did), x*x as the plain product instead of
# y*y, w fused before z, and a multiply by 1/norm instead of the division. Found by searching
# millions of normal-distributed quaternions; pyspz's stress digests pin the real formula.
NEAR_MISSES = [
    (1051513751, 3203283913, 3214812130, 3219470918), (3205968756, 1023982037, 3193000851, 1062577033),
    (1048072813, 3171004513, 1070482918, 1065120839), (3194611128, 1068652602, 3208681180, 1057330529),
    (1064287676, 1060372139, 1059678612, 1054279586), (3207966888, 3218168080, 1058731084, 1054544397),
    (1049099981, 1051833023, 1064302950, 3184581634), (1068250944, 3221578527, 1054785110, 1067734544),
    (1049453354, 3206154953, 1039728511, 1065678844), (3214649228, 3202373985, 1058207924, 1064162798),
    (1038048454, 3205629668, 3205196131, 3205587662), (3215517124, 3217940439, 1051702132, 3189618877),
]


def test_rotation_bytes_match_pyspz_where_near_miss_formulas_do_not() -> None:
    q = np.array(NEAR_MISSES, np.uint32).view(F)
    assert pack_rotations(q).tolist() == [pyspz_rotation_bytes(*row) for row in q]


def test_colour_bytes_match_pyspz_at_the_rounding_steps() -> None:
    steps = (np.arange(-20, 276) + 0.5 - 127.5) / F(38.25)
    dc = np.concatenate([steps, np.nextafter(steps.astype(F), UP), np.nextafter(steps.astype(F), DOWN),
                         [0, -0.0, 3.3333333, -3.3333333, 1e30, -1e30, 1e-30]]).astype(F)
    expected = [c_to_u8(exact_fma(c, spz_arith.COLOR_FACTOR, F(127.5))) for c in dc]
    assert u8_of_fma(dc, spz_arith.COLOR_FACTOR, F(127.5)).tolist() == expected


def _around(x: np.ndarray, ulps: int) -> np.ndarray:
    """Every float32 within ``ulps`` steps of each value."""
    out, up, down = [x], x, x
    for _ in range(ulps):
        up, down = np.nextafter(up, UP), np.nextafter(down, DOWN)
        out += [up, down]
    return np.concatenate(out)


@pytest.mark.parametrize("b", [spz_arith.COLOR_FACTOR, F(127.5), F(-127.5)])
def test_u8_of_fma_needs_no_double_rounding_check(b: np.float32) -> None:
    """Its bytes equal the correctly rounded FMA's next to every byte threshold k + 0.5, and where a
    float64 sum can land on the float32 midpoint below 127.5 (a*b near -2^-18)."""
    thresholds = ((np.arange(256) + 0.5 - 127.5) / np.float64(b)).astype(F)
    near_midpoint = np.array([-(2.0**-18) / b, 2.0**-18 / b], F)
    a = np.concatenate([_around(thresholds, 40), _around(near_midpoint, 4096)])
    np.testing.assert_array_equal(u8_of_fma(a, b, F(127.5)), spz_arith.to_u8(fma32(a, b, F(127.5))))


# --- the decoder's tables ------------------------------------------------------------------------

def test_rotation_table_is_pyspz_xyz() -> None:
    expected = [exact_fma(b, F(1) / F(127.5), -1) for b in range(256)]
    np.testing.assert_array_equal(LUT["rotation"], np.array(expected, F))


def test_decoder_w_needs_no_double_rounding_fix_for_any_byte_triple() -> None:
    """All 2^24 (x, y, z) bytes: the decoder's float64 sum of its two tables, rounded to float32,
    is the correctly rounded fma(z, z, fma(x, x, y*y)) pyspz computes."""
    r = LUT["rotation"]
    xy = fma32(r[None, :], r[None, :], r[:, None] * r[:, None]).ravel()  # [y byte, x byte]
    np.testing.assert_array_equal(LUT["xy_norm"], xy)
    for z in range(256):
        fast = (LUT["xy_norm"].astype(np.float64) + LUT["z_square"][z]).astype(F)
        np.testing.assert_array_equal(fast, fma32(r[z], r[z], xy), err_msg=f"z byte {z}")


def test_the_kernels_inner_norm_is_pyspz_fma_for_every_byte_pair() -> None:
    """The compiled kernel computes fma(x, x, y*y) as (float)((double)x*x + (double)(y*y)), with y*y
    rounded in float32: for all 65,536 (x, y) bytes that is the correctly rounded fma (the table)."""
    r = LUT["rotation"]
    x, yy = r[None, :].astype(np.float64), (r[:, None] * r[:, None]).astype(np.float64)  # [y byte, x byte]
    np.testing.assert_array_equal((x * x + yy).astype(F).ravel(), LUT["xy_norm"])


def test_decoded_w_matches_pyspz_model() -> None:
    rng = np.random.default_rng(2)
    rot = rng.integers(0, 256, (3000, 3), dtype=np.uint8)
    rot[:256, 0], rot[:256, 1], rot[:256, 2] = np.arange(256), 127, 128  # small |xyz|: w near 1
    payload = bytearray(spz.pack(random_cloud(len(rot))))
    at = 16 + 16 * len(rot)  # header, positions (9), alpha (1), colours (3), scales (3)
    payload[at: at + rot.size] = rot.tobytes()
    decoded = spz.decode(zstandard.ZstdCompressor().compress(bytes(payload)))
    xyz = LUT["rotation"][rot]
    expected = [np.sqrt(max(F(0), F(1) - exact_fma(z, z, exact_fma(x, x, y * y)))) for x, y, z in xyz]
    np.testing.assert_array_equal(decoded.rotations[:, 0], np.array(expected, F))
    np.testing.assert_array_equal(decoded.rotations[:, 1:], xyz)

