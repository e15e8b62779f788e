"""SPZ payload fields written straight into the float32 rows of pyspz's PLY body, two ways with the
same bytes out (the tests decode every case both ways).

The payload is attribute-major: positions, alphas, colours, scales, rotations, SH, each a run
of ``n`` equal-width records.

**The compiled kernel** (``_spz_kernel.c``, ``KERNEL``), where the package was built with a C
compiler: ``kernel_rows`` writes a block of rows from all of their fields once they have all
arrived, a row at a time, in a stage that stays in L1. numpy's writers spend most of a decode in
strided passes over the rows, one per column; the kernel writes each row once, and decodes 100k
SH0 gaussians in about 60% of their time (``benchmarks/bench_spz.py --breakdown``).

**numpy's writers** (``fields``), where the kernel is not built, and for version-1 payloads
(float16 positions, which the kernel does not read). Each writer fills rows ``lo:hi`` of its columns from the bytes of
its field for exactly those rows, in place, through strided views and byte-to-float tables (two
adjacent bytes at a time where their columns are adjacent too), so no per-field arrays are built
and nothing is copied twice; numpy releases the GIL in every step, so blocks run on threads
while zstd delivers the next field. The arithmetic is pyspz's (see ``spz_arith``).

``np.take`` is called with ``mode="clip"``: the indices are bytes, always in range, and numpy's
default mode would first copy the output buffer to keep it intact on an out-of-range error.

Measured against this layout and slower on a 2-core VM (fresh processes, alternating): three
256-entry tables instead of a pair table and a single one; one 16-byte table giving the rotation
pair and the (x, y) norm together (its halves are strided sources); fields read in quarters, or
whole. numpy is near its floor here: a gather and a strided store per column, and every column
pass touches each output row's cache lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spz_arith import LUT, pair_table

try:
    from . import _spz_kernel
except ImportError:  # not built: the package was installed where no C compiler was found
    _spz_kernel = None

F = np.float32
_PAIRS = {name: pair_table(LUT[name]) for name in ("color", "scale", "rotation")}

KERNEL_VERSION = 1
KERNEL = _spz_kernel if getattr(_spz_kernel, "VERSION", None) == KERNEL_VERSION else None
"""The compiled row writer, or None where it is not built, or is a stale build of another version."""


def _kernel_tables() -> np.ndarray:
    """The tables ``_spz_kernel.c`` reads, in its ``Tables`` order, 8-byte aligned: spz_arith's, and the
    SH bytes' values as ``sh`` computes them."""
    sh = np.multiply(np.arange(256, dtype=np.uint8), F(1 / 128), dtype=F) - F(1)
    floats = [LUT[name] for name in ("alpha", "color", "scale", "rotation")] + [sh]
    raw = b"".join(table.astype("<f4").tobytes() for table in floats) + LUT["z_square"].astype("<f8").tobytes()
    tables = np.frombuffer(raw, np.float64).copy()  # a fresh array: numpy aligns it
    tables.flags.writeable = False
    return tables


KERNEL_TABLES = _kernel_tables()


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
    """Rows ``lo:hi`` of ``rows``, and ``data``: the bytes of one payload field for those rows."""

    def __init__(self, data: np.ndarray, rows: np.ndarray, lo: int, hi: int) -> None:
        self.data, self.rows, self.lo, self.m = data, rows, lo, hi - lo

    def column(self, first: int, dtype: str = "<f4") -> np.ndarray:
        """One float column (or, as ``<u8``, two adjacent ones) of the block's rows: slices, which
        numpy makes in a fraction of the time a view through the buffer protocol takes."""
        rows = self.rows[self.lo: self.lo + self.m]
        return rows[:, first] if dtype == "<f4" else rows[:, first: first + 2].view(dtype)[:, 0]

    def source(self, start: int, dtype: str = "u1", step: int = 3) -> np.ndarray:
        """One value of each record, read as ``dtype`` from byte ``start`` of records ``step`` bytes wide."""
        return np.ndarray((self.m,), dtype, buffer=self.data, offset=start, strides=(step,))

    def three(self, first: int, lut: str, pair: np.ndarray | None = None, last: np.ndarray | None = None) -> None:
        """A u8 x 3 field through a table: bytes 0-1 as a pair, byte 2 alone (their indices as given,
        or read here: ``np.take`` converts them to ``intp`` itself)."""
        pair = self.source(0, "<u2") if pair is None else pair
        last = self.source(2) if last is None else last
        self.column(first, "<u8")[...] = np.take(_PAIRS[lut], pair, mode="clip")
        self.column(first + 2)[...] = np.take(LUT[lut], last, mode="clip")


def positions(block: Block, lay: Layout, version: int, fractional_bits: int) -> None:
    """xyz (and the zero normals) from 24-bit fixed point, or float16 in version 1."""
    if version == 1:
        half = block.data.view("<f2").reshape(block.m, 3)
        for c in range(3):
            block.column(c)[...] = half[:, c]
    else:  # read 4 bytes ending at a value's top byte and shift the extra one out, sign-extending
        scale, fixed = F(1.0 / (1 << fractional_bits)), np.empty(block.m, np.int32)
        np.left_shift(block.source(0, "<i4", 9), 8, out=fixed)  # x has no byte before it: drop the next one
        for c in range(3):
            np.right_shift(block.source(3 * c - 1, "<i4", 9) if c else fixed, 8, out=fixed)
            np.multiply(fixed, scale, out=block.column(c), dtype=F)
    if lay.normals:
        block.column(3, "<u8").fill(0)
        block.column(5).fill(0)


def alpha(block: Block, lay: Layout) -> None:
    block.column(lay.opacity)[...] = np.take(LUT["alpha"], block.source(0, step=1), mode="clip")


def colour(block: Block, lay: Layout) -> None:
    block.three(lay.dc, "color")


def scale(block: Block, lay: Layout) -> None:
    block.three(lay.opacity + 1, "scale")


def rotation(block: Block, lay: Layout) -> None:
    """rot_1..3 = xyz from the bytes, rot_0 = w = sqrtf(max(0, 1 - fma(z, z, fma(x, x, y*y))))."""
    xy, z = block.source(0, "<u2").astype(np.intp), block.source(2).astype(np.intp)  # each used twice
    block.three(lay.opacity + 5, "rotation", xy, z)
    # the inner FMA is a table over the (x, y) bytes, the outer one a float64 sum that is never a
    # float32 double-rounding case (checked for all 2^24 byte triples in the tests)
    w = np.take(LUT["z_square"], z, mode="clip")
    w += np.take(LUT["xy_norm"], xy, mode="clip")
    w32 = np.subtract(F(1), w, dtype=F, casting="same_kind")
    np.maximum(w32, F(0), out=w32)
    np.sqrt(w32, out=block.column(lay.opacity + 4))


def sh(block: Block, lay: Layout) -> None:
    """f_rest from the SH bytes: (b - 128) / 128, exactly b * 2^-7 - 1; coefficient-major in the
    payload, channel-major in the PLY."""
    k, lo, hi = lay.k, block.lo, block.lo + block.m
    values = np.multiply(block.data, F(1 / 128), dtype=F)
    values -= F(1)
    dest = block.rows[lo:hi, lay.dc + 3: lay.opacity].reshape(block.m, 3, k)
    dest[...] = values.reshape(block.m, k, 3).transpose(0, 2, 1)


def kernel_rows(fields: list[tuple[int, np.ndarray]], rows: np.ndarray, start: int, lo: int, hi: int,
                lay: Layout, fractional_bits: int) -> None:
    """Rows ``lo:hi`` of ``rows`` through ``KERNEL``, from the (bytes per record, data) of every field
    of a version-2 payload, each field's data starting at row ``start``."""
    data = [field[width * (lo - start): width * (hi - start)] for width, field in fields]
    sh = data[5] if lay.k else b""
    KERNEL.unpack(rows[lo:hi], *data[:5], sh, KERNEL_TABLES, lay.k, lay.normals,
                  float(F(1.0 / (1 << fractional_bits))))


def fields(lay: Layout, version: int, fractional_bits: int) -> list[tuple[int, object]]:
    """(bytes per record, writer) of each payload field in payload order; SH0 has no SH field."""
    position_bytes = 6 if version == 1 else 9
    writers = [(position_bytes, lambda block, lay: positions(block, lay, version, fractional_bits)),
               (1, alpha), (3, colour), (3, scale), (3, rotation), (3 * lay.k, sh)]
    return [(width, write) for width, write in writers if width]
