"""SN17 SPZ -> Niantic SPZ: the payload is the reference library's own, byte for byte."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import zstandard

from threegen_dagster.splats import SpzError, spz
from threegen_dagster.viewer.niantic import sn17_to_niantic

DATA = Path(__file__).with_name("data")


@pytest.mark.parametrize("case", ["n1000_sh0", "n1000_sh3"])
def test_the_payload_is_the_reference_librarys(case: str) -> None:
    ours = sn17_to_niantic(spz.compress((DATA / f"{case}.ply").read_bytes()), max_bytes=2**20)
    reference = (DATA / f"{case}.v2.spz").read_bytes()
    assert ours[:2] == reference[:2] == b"\x1f\x8b"  # gzip, as Niantic's v2
    assert gzip.decompress(ours) == gzip.decompress(reference)
    assert sn17_to_niantic(spz.compress((DATA / f"{case}.ply").read_bytes()), max_bytes=2**20) == ours  # no time stamp


def test_bounds_and_bad_input_are_refused_before_decompressing() -> None:
    sn17 = spz.compress((DATA / "n1000_sh0.ply").read_bytes())
    size = 16 + 1000 * 19  # header, then 9 position + 1 alpha + 3 colour + 3 scale + 3 rotation bytes each
    assert len(sn17_to_niantic(sn17, max_bytes=size)) > 0
    with pytest.raises(SpzError, match=f"its payload is {size:,} bytes, over the {size - 1:,} a page embeds"):
        sn17_to_niantic(sn17, max_bytes=size - 1)
    with pytest.raises(SpzError, match="this is gzip data"):
        sn17_to_niantic((DATA / "n1000_sh0.v2.spz").read_bytes(), max_bytes=2**20)
    payload = bytearray(zstandard.ZstdDecompressor().decompress(sn17))
    payload[4] = 1  # pyspz's version 1: float16 positions, a layout Niantic's v2 reader does not share
    with pytest.raises(SpzError, match="SPZ payload version 1, not 2"):
        sn17_to_niantic(zstandard.ZstdCompressor(write_content_size=True).compress(bytes(payload)), max_bytes=2**20)
    with pytest.raises(SpzError, match="SPZ payload is 0 bytes, shorter than its 16-byte header"):
        sn17_to_niantic(sn17[:-40], max_bytes=2**20)  # a truncated frame
