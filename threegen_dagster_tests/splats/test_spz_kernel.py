"""The SPZ decoder's compiled kernel (``_spz_kernel.c``): built wherever a C compiler is, the same bytes as
numpy's writers on every rotation byte pair, safe against wrong buffers, and optional at install time.
(test_spz runs every decoding test both ways.)"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import zstandard

from threegen_dagster.splats import spz, spz_unpack

from .conftest import random_cloud

ROOT = Path(__file__).resolve().parents[2]
needs_kernel = pytest.mark.skipif(spz_unpack.KERNEL is None, reason="the SPZ kernel is not built here")


def _compiler() -> str | None:
    """The C compiler setuptools would use, if it is installed."""
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shutil.which(shlex.split(command)[0])


def test_the_kernel_is_built_wherever_a_c_compiler_is() -> None:
    if _compiler() is None:
        pytest.skip("no C compiler here: the numpy writers decode, as in the slim Docker image")
    assert spz_unpack.KERNEL is not None, "the SPZ kernel is not built: run `pip install -e .` (make setup) again"
    assert spz_unpack.KERNEL.TABLES_BYTES == spz_unpack.KERNEL_TABLES.nbytes


def _decode_both(frame: bytes, monkeypatch: pytest.MonkeyPatch, include_normals: bool = False) -> tuple[bytes, bytes]:
    compiled = spz.decompress(frame, include_normals)
    with monkeypatch.context() as patch:
        patch.setattr(spz_unpack, "KERNEL", None)
        return compiled, spz.decompress(frame, include_normals)


@needs_kernel
@pytest.mark.parametrize("z_shift", [0, 85, 170])
def test_every_rotation_byte_pair_decodes_as_numpy_does(z_shift: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's w uses (float)((double)x*x + y*y) for pyspz's fma(x, x, y*y), not numpy's table:
    all 65,536 (x, y) byte pairs, each with a z byte that runs through all 256 values along them."""
    n = 1 << 16
    payload = bytearray(spz.pack(random_cloud(n, seed=z_shift)))
    pairs = np.arange(n, dtype=np.uint32)
    rotations = np.stack([pairs & 255, pairs >> 8, (pairs + z_shift * (pairs >> 8)) & 255], axis=1)
    payload[16 + 16 * n: 16 + 19 * n] = rotations.astype(np.uint8).tobytes()
    compiled, numpy_rows = _decode_both(zstandard.ZstdCompressor().compress(bytes(payload)), monkeypatch)
    assert compiled == numpy_rows


@needs_kernel
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
@pytest.mark.parametrize("normals", [False, True])
def test_random_payload_bytes_decode_as_numpy_does(degree: int, normals: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every field's bytes uniformly random (no encoder would write most of them), in blocks of odd sizes."""
    n = 33_333
    header = spz.pack(random_cloud(1, sh_degree=degree))[:16]
    payload = bytearray(header) + np.random.default_rng(degree).integers(0, 256, n * spz._bytes_per_point(degree),
                                                                         dtype=np.uint8).tobytes()
    payload[8:12] = n.to_bytes(4, "little")
    compiled, numpy_rows = _decode_both(zstandard.ZstdCompressor().compress(bytes(payload)), monkeypatch, normals)
    assert compiled == numpy_rows


@needs_kernel
@pytest.mark.parametrize(("change", "message"), [
    ({"positions": 8}, "positions: 8 bytes given, 9 needed"),
    ({"sh": 0, "k": 3}, "sh: 0 bytes given, 9 needed"),
    ({"rows": 55}, "rows: 55 bytes is not a whole number of 14-float rows"),
    ({"k": 4}, "k = 4 SH coefficients per channel, expected 0, 3, 8 or 15"),
    ({"tables": 100}, "tables: 100 bytes given"),
])
def test_the_kernel_refuses_buffers_that_do_not_fit(change: dict[str, int], message: str) -> None:
    """Buffers come from spz.py, sized from the header; a mistake there is an error, never a write out of bounds."""
    sizes = {"rows": 56, "positions": 9, "alphas": 1, "colors": 3, "scales": 3, "rotations": 3, "sh": 0}
    k = change.pop("k", 0)
    sizes.update(change)
    rows = bytearray(sizes.pop("rows") + 4 * 3 * k)
    buffers = [bytes(size) for name, size in sizes.items() if name != "tables"]
    tables = spz_unpack.KERNEL_TABLES.tobytes()[: sizes.get("tables", spz_unpack.KERNEL_TABLES.nbytes)]
    with pytest.raises(ValueError, match=message):
        spz_unpack.KERNEL.unpack(rows, *buffers, tables, k, False, 1.0)
    assert rows == bytearray(len(rows))
    with pytest.raises(TypeError):
        spz_unpack.KERNEL.unpack(b"read-only", *buffers, tables, k, False, 1.0)


def test_an_install_without_a_c_compiler_goes_on_without_the_kernel(tmp_path: Path) -> None:
    """The kernel is optional (the slim Docker image has no compiler): its build fails with a warning,
    the install does not, and numpy's writers decode there."""
    env = {**os.environ, "CC": str(tmp_path / "no-such-cc")}
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
                           "--build-temp", str(tmp_path / "temp")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert 'building extension "threegen_dagster.splats._spz_kernel" failed' in done.stderr
    assert not list((tmp_path / "lib").rglob("_spz_kernel*"))
