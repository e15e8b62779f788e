"""The batch state machine and the results ZIP without a server: every limit of the ZIP holds on real bytes
(an output over one becomes a failure entry, the ZIP stays whole), the saved state restores a batch."""

from __future__ import annotations

import io
import json
import zipfile

import pytest

from threegen_dagster.serve.batch import BatchBook, GenerateRequest, Refused, ServeLimits
from threegen_dagster.serve.results import ENTRY_OVERHEAD, FAILED_RESERVE, plan, stream


def _request(stems, seed=7) -> GenerateRequest:
    return GenerateRequest.model_validate({"prompts": [{"stem": s, "image_url": f"http://h/{s}.png"} for s in stems],
                                           "seed": seed})


def _complete(stems, sizes, limits=ServeLimits(), failed=()):
    saved = []
    book = BatchBook(saved.append, limits=limits)
    book.set_warm()
    book.submit(_request(stems))
    for stem in stems:
        book.finish(book.batch.id, stem, reason="no surface" if stem in failed else "", key=f"k-{stem}", version=1)
    outputs = {stem: bytes([65 + i % 26]) * size for i, (stem, size) in enumerate(zip(stems, sizes))}
    return book, outputs, saved


def _zip(zip_plan) -> tuple[bytes, zipfile.ZipFile]:
    data = b"".join(stream(zip_plan))
    return data, zipfile.ZipFile(io.BytesIO(data))


def test_outputs_past_the_zip_byte_limit_become_failure_entries_and_the_zip_stays_whole() -> None:
    limits = ServeLimits(zip_bytes=FAILED_RESERVE + 2 * ENTRY_OVERHEAD + 700_000, file_bytes=400_000)
    book, outputs, _ = _complete(["a", "b", "c", "d"], [300_000, 300_000, 300_000, 500_000], limits)
    zip_plan = plan(book.completed(), lambda stem, key, version: outputs[stem], "js", limits)
    data, archive = _zip(zip_plan)
    assert archive.testzip() is None and len(data) <= limits.zip_bytes
    assert archive.namelist() == ["a.js", "b.js", "_failed.json"]
    assert archive.read("a.js") == outputs["a"]
    failed = json.loads(archive.read("_failed.json"))
    assert "byte limit with this output" in failed["c"] and "over the 400,000-byte file limit" in failed["d"]


def test_the_entry_limit_keeps_room_for_the_failure_file_and_unreadable_outputs_are_failures() -> None:
    limits = ServeLimits(zip_entries=3)
    book, outputs, _ = _complete(["a", "b", "c", "d", "e"], [10] * 5, limits, failed={"e"})

    def read(stem, key, version):
        if stem == "b":
            raise OSError("blob missing")
        return outputs[stem]

    _, archive = _zip(plan(book.completed(), read, "js", limits))
    assert archive.namelist() == ["a.js", "c.js", "_failed.json"]
    failed = json.loads(archive.read("_failed.json"))
    assert failed["b"].startswith("the output cannot be read: OSError: blob missing")
    assert "3-entry limit" in failed["d"] and failed["e"] == "no surface"


def test_a_batch_where_everything_failed_is_a_zip_of_the_failure_file_alone() -> None:
    book, _, _ = _complete(["a"], [1], failed={"a"})
    _, archive = _zip(plan(book.completed(), lambda *a: b"", "js", ServeLimits()))
    assert archive.namelist() == ["_failed.json"]


def test_the_saved_batch_resumes_after_a_restart_and_the_states_follow_the_spec() -> None:
    saved = []
    book = BatchBook(saved.append)
    assert book.status()["status"] == "warming_up"
    with pytest.raises(Refused, match="warming up"):
        book.submit(_request(["a"]))
    book.set_warm()
    assert book.status() == {"status": "ready", "progress": 0, "total": 0, "payload": {}}
    with pytest.raises(Refused, match="the status is ready"):
        book.completed()
    book.submit(_request(["a", "b", "c"]))
    first = book.next_pending(timeout_s=0)
    book.finish(first[0], "a", key="k-a", version=3)
    assert saved[-1]["stems"][0] == {"stem": "a", "url": "http://h/a.png", "state": "done", "key": "k-a",
                                     "version": 3, "reason": "", "seconds": 0.0}

    restarted = BatchBook([].append, saved=saved[-1])  # the process died while "b" was in progress
    assert restarted.resumed and restarted.status()["status"] == "warming_up"
    assert restarted.next_pending(timeout_s=0) is None  # nothing is generated before the models are warm
    restarted.set_warm()
    assert restarted.status()["progress"] == 1 and restarted.status()["status"] == "generating"
    assert restarted.next_pending(timeout_s=0)[2].stem == "b"
    assert restarted.submit(_request(["c", "b", "a"])) == 3  # the same batch again: idempotent
    with pytest.raises(Refused, match="different batch") as refused:
        restarted.submit(_request(["a", "b", "c"], seed=8))
    assert refused.value.status == 409


def test_a_server_that_cannot_warm_up_asks_to_be_replaced() -> None:
    book = BatchBook([].append)
    book.set_broken("warm-up failed: RuntimeError: the comp 2 checker is not installed")
    status = book.status(replacements_remaining=0)
    assert status["status"] == "replace" and "checker is not installed" in status["payload"]["reason"]
    with pytest.raises(Refused, match="cannot generate") as refused:
        book.submit(_request(["a"]))
    assert refused.value.status == 503


@pytest.mark.parametrize(("body", "error"), [
    ({"prompts": [{"stem": "a b", "image_url": "http://h/a.png"}], "seed": 1}, "String should match pattern"),
    ({"prompts": [{"stem": "a", "image_url": "ftp://h/a.png"}], "seed": 1}, "not an http"),
    ({"prompts": [{"stem": "a", "image_url": "http:///a.png"}], "seed": 1}, "not an http"),
    ({"prompts": [{"stem": "a", "image_url": "http://h/a.png"}], "seed": True}, "valid integer"),
    ({"prompts": [{"stem": "a", "image_url": "http://h/a.png"}], "seed": -1}, "greater than or equal to 0"),
])
def test_requests_are_validated_at_the_edge(body, error) -> None:
    with pytest.raises(ValueError, match=error):
        GenerateRequest.model_validate(body)
