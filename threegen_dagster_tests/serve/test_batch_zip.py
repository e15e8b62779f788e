"""The batch state machine and the results ZIP without a server: every limit of the ZIP holds on real bytes
(an output over one becomes a failure entry, the ZIP stays whole), the saved state restores a batch."""

from __future__ import annotations

import io
import json
import threading
import time
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


def test_a_store_that_fails_to_save_never_stops_the_batch() -> None:
    """A full disk or a store that is down: each failed save is a log line, the batch goes on to complete in
    memory, and the generation loop (which records outcomes) outlives every failure."""
    from threegen_dagster.serve.batch import GenerationFailed, run_loop

    def save(batch: dict) -> None:
        raise OSError(28, "No space left on device")

    class Stems:  # what run_loop drives: one stem fails, the others give an output
        def warm(self) -> None: ...

        def generate(self, batch: str, stem: str, url: str, seed: int) -> tuple[str, int]:
            if stem == "b":
                raise GenerationFailed("no object found")
            return f"k-{stem}", 1

    lines: list[str] = []
    book = BatchBook(save, log=lines.append)
    stop = threading.Event()
    loop = threading.Thread(target=run_loop, args=(book, Stems(), lines.append, stop), daemon=True)
    loop.start()
    while book.status()["status"] != "ready":
        time.sleep(0.01)
    assert book.submit(_request(["a", "b", "c"])) == 3  # accepted though its save failed
    deadline = time.monotonic() + 60
    while book.status()["status"] != "complete" and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    loop.join(10)
    status = book.status()
    assert status["status"] == "complete" and status["payload"]["failed"] == 1, (status, lines)
    assert sum("could not be saved (OSError: [Errno 28] No space left on device)" in line for line in lines) == 4
    assert [s.state for s in book.completed().stems.values()] == ["done", "failed", "done"]


def test_a_saved_batch_of_another_shape_is_read_or_left_out() -> None:
    saved = {"id": "x", "seed": 1, "created": 0, "finished": None, "stems": [
        {"stem": "a", "url": "http://h/a.png", "state": "pending", "key": "", "version": 0, "reason": "",
         "seconds": 0, "added_by_a_newer_version": 1}]}
    assert BatchBook([].append, saved=saved).batch.stems["a"].url == "http://h/a.png"  # unknown fields left out
    for broken in ({**saved, "seed": None}, {k: v for k, v in saved.items() if k != "seed"},
                   {**saved, "stems": [{"url": "http://h/a.png"}]}, {**saved, "stems": "a"}):
        lines: list[str] = []
        book = BatchBook([].append, saved=broken, log=lines.append)
        book.set_warm()
        assert book.batch is None and book.status()["status"] == "ready"
        assert len(lines) == 1 and "the saved batch is not one" in lines[0] and "starting without it" in lines[0]


def test_image_urls_are_taken_as_the_round_pipeline_takes_them() -> None:
    item = GenerateRequest.model_validate({"prompts": [{"stem": "a", "image_url": "HTTP://h:9/a.png"}], "seed": 1})
    assert item.prompts[0].image_url == "http://h:9/a.png"  # a scheme's case is no matter
    for url in ("http://h/a b.png", "http://h/\n.png", "https:///a.png", "http//h/a.png"):
        with pytest.raises(ValueError, match="not an http"):
            GenerateRequest.model_validate({"prompts": [{"stem": "a", "image_url": url}], "seed": 1})


def test_a_list_past_the_prompt_limit_is_one_error() -> None:
    with pytest.raises(ValueError) as refused:
        GenerateRequest.model_validate_json(b'{"prompts": [' + b",".join([b"{}"] * 100_000) + b'], "seed": 1}')
    assert refused.value.error_count() == 1 and "at most 99 items" in str(refused.value)
