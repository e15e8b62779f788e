"""SPZ payload sections written straight into the float32 rows of pyspz's PLY body.

Each writer fills rows ``lo:hi`` of its columns from one attribute-major payload section, in
place, through strided views and byte-to-float tables (two adjacent bytes at a time where their
columns are adjacent too), so no per-field arrays are built and nothing is copied twice; numpy
releases the GIL in every step, so blocks of rows run on threads. The arithmetic is pyspz's
(see ``spz_arith``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spz_arith import LUT, pair_table

F = np.float32
_PAIRS = {name: pair_table(LUT[name]) for name in ("color", "scale", "rotation")}


@dataclass(frozen=True)
class Layout:
    """Where pyspz's PLY puts each field: x y z [nx ny nz] f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3."""

    n: int
    k: int  # higher-band SH coefficients per colour channel
    normals: bool

    @property
    def dc(self) -> int:
        return 6 if self.normals else 3

    @property
    def opacity(self) -> int:
        return self.dc + 3 + 3 * self.k

    @property
    def width(self) -> int:
        return self.opacity + 8


class Block:
    """Rows ``lo:hi`` of ``rows``, read from one payload section ``data``."""

    def __init__(self, data: np.ndarray, rows: np.ndarray, lo: int, hi: int) -> None:
        self.data, self.rows, self.lo, self.m = data, rows, lo, hi - lo
        self.f32, self.u64 = np.empty(self.m, F), np.empty(self.m, np.uint64)

    def column(self, first: int, dtype: str = "<f4") -> np.ndarray:
        """One float column (or, as ``<u8``, two adjacent ones) of the block's rows."""
        stride = self.rows.strides[0]
        return np.ndarray((self.m,), dtype, buffer=self.rows, offset=self.lo * stride + 4 * first, strides=(stride,))

    def source(self, start: int, dtype: str = "u1", step: int = 3) -> np.ndarray:
        """The block's values of one field of the section, ``step`` bytes apart."""
        return np.ndarray((self.m,), dtype, buffer=self.data, offset=start + self.lo * step, strides=(step,))

    def three(self, start: int, first: int, lut: str) -> tuple[np.ndarray, np.ndarray]:
        """A u8 x 3 field through a table: bytes 0-1 as a pair, byte 2 alone; gives both indices."""
        pair, last = self.source(start, "<u2").astype(np.intp), self.source(start + 2).astype(np.intp)
        self.column(first, "<u8")[...] = np.take(_PAIRS[lut], pair, out=self.u64)
        self.column(first + 2)[...] = np.take(LUT[lut], last, out=self.f32)
        return pair, last


def positions(block: Block, lay: Layout, version: int, fractional_bits: int) -> None:
    """xyz (and the zero normals) from 24-bit fixed point, or float16 in version 1."""
    if version == 1:
        half = block.data[6 * block.lo: 6 * (block.lo + block.m)].view("<f2").reshape(block.m, 3)
        for c in range(3):
            block.column(c)[...] = half[:, c]
    else:  # read 4 bytes ending at a value's top byte and shift the extra one out, sign-extending
        scale, fixed = F(1.0 / (1 << fractional_bits)), block.u64.view(np.int32)[: block.m]
        np.left_shift(block.source(0, "<i4", 9), 8, out=fixed)  # x has no byte before it: drop the next one
        for c in range(3):
            np.right_shift(block.source(3 * c - 1, "<i4", 9) if c else fixed, 8, out=fixed)
            np.multiply(fixed, scale, out=block.column(c), dtype=F)
    if lay.normals:
        block.column(3, "<u8").fill(0)
        block.column(5).fill(0)


def attributes(block: Block, lay: Layout) -> None:
    """Opacity, f_dc and log-scales from the alpha (N), colour (3N) and scale (3N) bytes."""
    n = lay.n
    block.column(lay.opacity)[...] = np.take(LUT["alpha"], block.source(0, step=1), out=block.f32)
    block.three(n, lay.dc, "color")
    block.three(4 * n, lay.opacity + 1, "scale")


def rotations(block: Block, lay: Layout) -> None:
    """rot_1..3 = xyz from the bytes, rot_0 = w = sqrtf(max(0, 1 - fma(z, z, fma(x, x, y*y))))."""
    xy, z = block.three(0, lay.opacity + 5, "rotation")
    # the inner FMA is a table over the (x, y) bytes, the outer one a float64 sum that is never a
    # float32 double-rounding case (checked for all 2^24 byte triples in the tests)
    xy_norm = np.take(LUT["xy_norm"], xy, out=block.f32)
    w = np.add(xy_norm, np.take(LUT["z_square"], z), out=block.u64.view(np.float64))
    np.subtract(F(1), w, out=block.f32, dtype=F, casting="same_kind")
    np.maximum(block.f32, F(0), out=block.f32)
    np.sqrt(block.f32, out=block.column(lay.opacity + 4))


def sh(block: Block, lay: Layout) -> None:
    """f_rest from the SH bytes: (b - 128) / 128, exactly b * 2^-7 - 1; coefficient-major in the
    payload, channel-major in the PLY."""
    k, lo, hi = lay.k, block.lo, block.lo + block.m
    values = np.multiply(block.data[3 * k * lo: 3 * k * hi], F(1 / 128), dtype=F)
    values -= F(1)
    dest = block.rows[lo:hi, lay.dc + 3: lay.opacity].reshape(block.m, 3, k)
    dest[...] = values.reshape(block.m, k, 3).transpose(0, 2, 1)

