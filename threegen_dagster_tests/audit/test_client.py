"""The results ZIP as the validators read it: within its byte, entry and per-file limits, ``_failed.json`` a
``{stem: reason}`` object, names that are no output ignored; anything else refused whole, naming why."""

from __future__ import annotations

import gzip
import io
import json
import time
import zipfile

import pytest

from threegen_dagster.audit.client import ApiError, BatchClient, ZipLimits, ZipRefused, parse_zip

from ..raw_host import RawHost


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


def _encrypted_entry() -> bytes:
    """A ZIP whose entry says it is encrypted (general-purpose flag bit 0), as a hostile server may send."""
    data = bytearray(_zip({"a.glb": b"glTF...."}, zipfile.ZIP_STORED))
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local header, central directory
        at = data.index(signature) + flag_at
        data[at] |= 1
    return bytes(data)


@pytest.mark.parametrize(("data", "message"), [
    (_encrypted_entry(), r"a\.glb cannot be read: .*encrypted"),
    (_zip({"_failed.json": b"[" * 100_000}), r"_failed\.json is not JSON: RecursionError"),
])
def test_an_entry_that_cannot_be_read_is_a_refusal_not_a_crash(data, message):
    with pytest.raises(ZipRefused, match=message):
        parse_zip(data, ZipLimits())


def _drip(conn) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        conn.sendall(b" ")
        time.sleep(0.05)


def _gzip_twice(conn) -> None:
    body = gzip.compress(gzip.compress(b" " * 10_000_000))
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip, gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def _endless(conn) -> None:
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    while True:
        conn.sendall(b"x" * 65536)


def _deep(conn) -> None:
    body = b"[" * 60_000
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize(("answer", "message"), [
    (_drip, r"GET /status: no whole answer within 1 s"),
    (_gzip_twice, r"GET /status answered in Content-Encoding 'gzip, gzip', not asked for"),
    (_deep, r"GET /status answered no status JSON \(maximum recursion depth"),
])
def test_a_status_answer_that_would_hang_or_blow_up_is_one_error(answer, message):
    """A broken or hostile server under audit: a dripped answer is cut off at the client's timeout (each byte
    is well within it), an encoding never asked for is refused unread (a gzip bomb never inflates), JSON
    nested past Python's recursion limit is an answer without status."""
    server = RawHost(answer)
    with BatchClient(server.url, timeout_s=1) as client, pytest.raises(ApiError, match=message):
        client.status()
    server.close()


def test_a_post_answer_is_read_only_as_far_as_it_is_shown():
    server = RawHost(_endless)
    with BatchClient(server.url, timeout_s=10) as client:
        code, text = client.generate([{"stem": "a", "image_url": "http://h/a.png"}], 1)
    assert code == 400 and text == "x" * 300
    server.close()


def test_the_server_s_words_stay_text_in_the_run_page():
    """What an audited server answers reaches the asset's markdown tables: it stays one escaped cell."""
    from threegen_dagster.defs.audit import _md

    table = _md([{"outcome": "refused: | # Injected heading\n![pixel](http://e/x.png) [a](javascript:x)"}], ["outcome"])
    text = table.value
    assert text.count("\n") == 2 and "\n#" not in text  # one row: no heading, no line of its own
    assert "![" not in text and "](" not in text.replace("\\](", "")  # no image, no link: brackets escaped
