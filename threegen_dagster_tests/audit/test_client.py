"""The results ZIP as the validators read it: within its byte, entry and per-file limits, ``_failed.json`` a
``{stem: reason}`` object, names that are no output ignored; anything else refused whole, naming why."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from threegen_dagster.audit.client import ZipLimits, ZipRefused, parse_zip


def _zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


def test_outputs_and_failures_are_read():
    data = _zip({"a.js": b"export default 1", "b-2.js": b"x", "notes/readme.txt": b"?",
                 "_failed.json": json.dumps({"c": "prompt c: not found (HTTP 404)"}).encode()})
    results = parse_zip(data, ZipLimits())
    assert results.files == {"a": b"export default 1", "b-2": b"x"}
    assert results.failed == {"c": "prompt c: not found (HTTP 404)"}
    assert parse_zip(_zip({}), ZipLimits()).files == {}  # an empty ZIP: the batch failed (the driver says so)


@pytest.mark.parametrize("entries, limits, message", [
    ({f"s{i}.js": b"x" for i in range(4)}, ZipLimits(zip_entries=3), "holds 4 entries, over the 3-entry limit"),
    ({"a.js": b"x" * 5000}, ZipLimits(file_bytes=4096), "a.js is 5,000 bytes, over the 4,096-byte file limit"),
    ({"a.js": b"\0" * 300_000}, ZipLimits(zip_bytes=1000, file_bytes=2**20), None),  # deflates small: fine
    ({"_failed.json": b"[1, 2]"}, ZipLimits(), r"_failed.json is not a \{stem: reason\} object"),
    ({"_failed.json": b"{oops"}, ZipLimits(), "_failed.json is not JSON"),
])
def test_a_zip_over_a_limit_is_refused(entries, limits, message):
    data = _zip(entries)
    if message is None:
        assert len(parse_zip(data, limits).files["a"]) == 300_000
        return
    with pytest.raises(ZipRefused, match=message):
        parse_zip(data, limits)


def test_bytes_over_the_limit_or_no_zip_at_all():
    big = _zip({"a.js": bytes(range(256)) * 40}, zipfile.ZIP_STORED)
    with pytest.raises(ZipRefused, match=f"the ZIP is {len(big):,} bytes, over the 1,000-byte limit"):
        parse_zip(big, ZipLimits(zip_bytes=1000))
    with pytest.raises(ZipRefused, match="not a ZIP"):
        parse_zip(b"<html>oops</html>", ZipLimits())
