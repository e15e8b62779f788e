"""SN17's SPZ as Niantic's ``.spz``, which web viewers (Spark) read. Both carry the same payload,
byte for byte (the 16-byte "NGSP" header, version 2, then the packed attributes: checked against
Niantic's reference library's own v2 files in ``threegen_dagster_tests/viewer``); SN17 wraps it in
one zstd frame, Niantic's v2 in gzip. So the conversion is exact and cheap: unwrap, re-wrap, no
re-quantisation, and the viewer shows the very splat that was submitted. No Dagster imports."""

from __future__ import annotations

import gzip

import zstandard

from ..splats import spz

NIANTIC_VERSION = 2  # the payload version both read; pyspz's version 1 is decoded to PLY instead


def sn17_to_niantic(data: bytes, max_bytes: int) -> bytes:
    """Niantic SPZ v2 (gzip, reproducible: no time stamp) holding ``data``'s payload; ``SpzError``
    if ``data`` is not SN17 SPZ of version 2, or its payload (known from its header, before anything
    is decompressed past it) is over ``max_bytes``."""
    header, _ = spz._open(data)  # the checked header: magic, version, count, degree
    if header[1] != NIANTIC_VERSION:
        raise spz.SpzError(f"SPZ payload version {header[1]}, not {NIANTIC_VERSION}: Niantic's reader differs")
    size = spz._HEADER.size + spz._check_header(header)
    if size > max_bytes:
        raise spz.SpzError(f"its payload is {size:,} bytes, over the {max_bytes:,} a page embeds")
    try:
        payload = zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise spz.SpzError(f"corrupt or truncated zstd frame: {exc}") from None
    if len(payload) != size:
        raise spz.SpzError(f"the payload is {len(payload):,} bytes; its header says {size:,}")
    return gzip.compress(payload, compresslevel=6, mtime=0)
