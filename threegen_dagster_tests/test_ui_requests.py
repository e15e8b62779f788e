"""Generations requested from the UI, on a real instance and a real store: the request job (typed
config) registers them and the run status sensor, ticked with ``build_run_status_sensor_context``,
asks for one generate run each, which then succeed; a bad request registers nothing and says what to
change in one line; a readable key typed into "Add partition" just works, a junk one fails in one line
and is removed by the junk sensor. Image prompts come from a file and from a real HTTP server."""

import http.server
import io
import json
import threading
import time

import dagster as dg
import pytest
from PIL import Image

from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.requests import (JUNK_GRACE_S, TAG_REQUEST, remove_junk_partitions,
                                            start_requested_generations)
from threegen_dagster.keys import MAX_IMAGE_BYTES, Prompt, generation_key
from threegen_dagster.ledger import Ledger
from threegen_dagster.prompt_requests import fetch_image
from threegen_dagster.keys import PromptError
from threegen_dagster.settings import Settings
from threegen_dagster.storage import LocalStore

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def png(size=(64, 48), colour=(200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def world(tmp_path):
    settings = Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox", gaussians=8000)
    with dg.instance_for_test() as instance:
        yield settings, build_definitions(settings), instance, Ledger(LocalStore(tmp_path / "store"))


def request(defs, instance, **config) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("request_generations").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={**QUIET, "ops": {"register_request": {"config": config}}})


def failure_line(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.is_step_failure]
    return failure.step_failure_data.user_failure_data.description


def tick_starts(instance, result: dg.ExecuteInProcessResult) -> list[dg.RunRequest]:
    """The run status sensor, as the daemon evaluates it after the request run's success."""
    run = instance.get_run_by_id(result.run_id)
    [success] = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)
    context = dg.build_run_status_sensor_context(sensor_name="start_requested_generations", dagster_instance=instance,
                                                 dagster_run=run, dagster_event=success.dagster_event)
    return list(start_requested_generations(context))


def launch(defs, instance, run_request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    """What the daemon does with the sensor's request: a generate run of that partition, with its tags."""
    return defs.resolve_job_def("generate").execute_in_process(
        instance=instance, partition_key=run_request.partition_key, tags=run_request.tags, run_config=QUIET)


def test_a_request_of_prompts_and_seeds_registers_and_starts_each_generation(world) -> None:
    settings, defs, instance, ledger = world
    result = request(defs, instance, prompts=["a blue vase", "a red mug", "a blue vase"], seeds=[3, 4, 3])
    assert result.success
    keys = [generation_key(Prompt.from_text(text), seed) for text in ("a blue vase", "a red mug") for seed in (3, 4)]
    assert result.output_for_node("register_request") == keys  # each (prompt, seed) once, in order
    metadata = [e for e in result.all_events if e.is_successful_output][0].step_output_data.metadata
    table = metadata["generations"].value
    for key in keys:  # the request's run names what it created, with a link to each
        assert f"[{key}](/assets/validation_score?view=partitions&partition={key})" in table
    assert table.count("registered; its run starts") == 4
    assert set(instance.get_dynamic_partitions("generations")) == set(keys)
    assert {e.key: e.source for e in ledger.all()} == dict.fromkeys(keys, "ui")

    requests = tick_starts(instance, result)
    assert [r.partition_key for r in requests] == keys
    assert {r.run_key for r in requests} == {f"{result.run_id}:{key}" for key in keys}  # once per request
    assert all(r.tags[TAG_REQUEST] == result.run_id for r in requests)
    for run_request in requests:
        assert launch(defs, instance, run_request).success
    from threegen_dagster.artifacts import ArtifactStore

    artifacts = ArtifactStore(LocalStore(settings.store))
    assert all(artifacts.latest(key, "validation_score") is not None for key in keys)

    again = request(defs, instance, prompts=["a red mug", "a green cup"], seeds=[4])
    assert again.success  # what was generated is not run again; the new one is
    new = generation_key(Prompt.from_text("a green cup"), 4)
    assert [r.partition_key for r in tick_starts(instance, again)] == [new]
    table = [e for e in again.all_events if e.is_successful_output][0].step_output_data.metadata["generations"].value
    assert "already generated: not run again" in table


@pytest.mark.parametrize("config, line", [
    ({"prompts": ["a chair", "a \x1b[31mred chair"], "seeds": [1]},
     r"prompt 2: the prompt contains the control character U\+001B at character 3"),
    ({"prompts": ["a chair", "   "], "seeds": [1]}, r"prompt 2: the prompt is empty"),
    ({"prompts": ["a chair"], "seeds": [1, -1]}, r"seed 2: the seed must be between 0 and 4294967295, not -1"),
    ({"prompts": ["a chair"], "seeds": [2**32]}, r"seed 1: the seed must be between 0 and 4294967295"),
    ({"prompts": ["a chair"], "seeds": []}, r"the request has no seed"),
    ({"prompts": [], "seeds": [1]}, r"the request has no prompt"),
    ({"prompts": [f"chair {i}" for i in range(17)], "seeds": [1]}, r"17 prompts; the limit is 16"),
    ({"prompts": [f"chair {i}" for i in range(8)], "seeds": list(range(9))}, r"72 generations; the limit is 64"),
    ({"prompts": ["a chair"], "image": "/nonexistent/mug.png", "seeds": [1]},
     r"image '/nonexistent/mug.png': No such file or directory"),
    ({"prompts": ["a chair"], "image": "ftp://example.com/mug.png", "seeds": [1]}, r"ftp:// is not supported"),
])
def test_a_bad_request_registers_nothing_and_says_what_to_change(world, config, line) -> None:
    _, defs, instance, ledger = world
    result = request(defs, instance, **config)
    assert not result.success
    message = failure_line(result)
    assert message.startswith("request refused, nothing registered: ") and "\n" not in message
    assert __import__("re").search(line, message), message
    assert ledger.all() == [] and instance.get_dynamic_partitions("generations") == []


class Images(http.server.BaseHTTPRequestHandler):
    """A real HTTP server's answers: an image, a 404, a body over the limit (declared or not), a drip."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/mug.png":
            body = png()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/declared-huge.png":
            self.send_response(200)
            self.send_header("Content-Length", str(MAX_IMAGE_BYTES + 1))
            self.end_headers()
        elif self.path == "/endless.png":  # no length: the reader must stop itself
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(2 * MAX_IMAGE_BYTES // 65536 + 10):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
        elif self.path == "/drip.png":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(400):
                    self.wfile.write(b"\x89")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        else:
            self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_image_by_url_or_path_becomes_an_image_generation(world, server, tmp_path) -> None:
    _, defs, instance, ledger = world
    (tmp_path / "mug.png").write_bytes(png(colour=(10, 200, 10)))
    result = request(defs, instance, image=f"{server}/mug.png", caption="a red mug", seeds=[1])
    assert result.success
    [key] = result.output_for_node("register_request")
    assert key.startswith("img-a-red-mug-") and ledger.prompt(key).image == png()
    by_path = request(defs, instance, image=str(tmp_path / "mug.png"), seeds=[2])
    assert by_path.success and ledger.prompt(by_path.output_for_node("register_request")[0]).image \
        == png(colour=(10, 200, 10))


@pytest.mark.parametrize("path, line", [
    ("/missing.png", r"the server answered HTTP 404"),
    ("/declared-huge.png", r"20,971,521 bytes; the limit is 20,971,520"),
    ("/endless.png", r"over 20,971,520 bytes; the limit is 20,971,520"),
])
def test_an_image_url_is_bounded_before_it_costs_memory(server, path, line) -> None:
    with pytest.raises(PromptError, match=line):
        fetch_image(f"{server}{path}")


def test_a_dripping_server_is_cut_off_at_the_deadline(server) -> None:
    with pytest.raises(PromptError, match=r"the download took over 0.5 s; stopped"):
        fetch_image(f"{server}/drip.png", timeout_s=0.5)


def test_an_image_bomb_is_refused_from_its_header(world, tmp_path) -> None:
    _, defs, instance, ledger = world
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, format="PNG")
    (tmp_path / "bomb.png").write_bytes(bomb.getvalue())
    result = request(defs, instance, image=str(tmp_path / "bomb.png"), seeds=[1])
    assert "image prompt refused: the image is 9000 x 9000 = 81,000,000 pixels" in failure_line(result)
    assert ledger.all() == []


def test_a_readable_key_added_in_the_ui_just_works(world) -> None:
    _, defs, instance, ledger = world
    instance.add_dynamic_partitions("generations", ["a-blue-vase-s3"])  # what "Add partition" does
    result = defs.resolve_job_def("generate").execute_in_process(instance=instance, partition_key="a-blue-vase-s3",
                                                                 run_config=QUIET)
    assert result.success
    entry = ledger.get("a-blue-vase-s3")
    assert (entry.prompt, entry.seed, entry.source) == ("a blue vase", 3, "ui")
    # the same prompt by the other route gets its own hashed key: no key ever names two prompts
    hashed, new = ledger.add(Prompt.from_text("a blue vase"), 3, source="cli")
    assert new and hashed.key != "a-blue-vase-s3" and hashed.key.startswith("a-blue-vase-")
    again = defs.resolve_job_def("generate").execute_in_process(instance=instance, partition_key="a-blue-vase-s3",
                                                                run_config=QUIET)
    assert again.success and ledger.get("a-blue-vase-s3") == entry


@pytest.mark.parametrize("junk, line", [
    ("a-blue-vase", r"'a-blue-vase' is not a generation key: type lower-case words and a seed like a-blue-vase-s0"),
    ("A-Blue-Vase-S3", r"like a-blue-vase-s3,"),
    ("a-vase-s007", r"like a-vase-s7,"),
    ("a-chair-0123456-s1", r"its last word looks like a cut hash"),
])
def test_a_junk_key_fails_at_once_in_one_line_and_its_partition_is_removed(world, junk, line) -> None:
    _, defs, instance, ledger = world
    instance.add_dynamic_partitions("generations", [junk, "a-red-mug-s1"])
    result = defs.resolve_job_def("generate").execute_in_process(
        instance=instance, partition_key=junk, run_config=QUIET, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "generated_image"  # the first stage: nothing else ran
    message = failure.step_failure_data.user_failure_data.description
    assert "\n" not in message and __import__("re").search(line, message), message
    assert ledger.all() == []

    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
            return remove_junk_partitions(context)

    first = tick(None)  # seen now: a run of it may be about to launch, so it stays for a while
    assert first.dynamic_partitions_requests == [] and junk in json.loads(first.cursor)
    seen_long_ago = json.dumps({junk: time.time() - JUNK_GRACE_S - 1})
    later = tick(seen_long_ago)
    [delete] = later.dynamic_partitions_requests
    assert list(delete.partition_keys) == [junk] and json.loads(later.cursor) == {}  # the readable key stays
    for key in delete.partition_keys:  # what the daemon does with the request
        instance.delete_dynamic_partition("generations", key)
    assert instance.get_dynamic_partitions("generations") == ["a-red-mug-s1"]


def test_a_junk_partition_with_a_run_in_progress_is_left_until_it_ends(world) -> None:
    _, defs, instance, _ = world
    instance.add_dynamic_partitions("generations", ["a-blue-vase"])
    job = defs.resolve_job_def("generate")
    run = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED,
                                      tags={"dagster/partition": "a-blue-vase"})
    with dg.build_sensor_context(instance=instance,
                                 cursor=json.dumps({"a-blue-vase": time.time() - JUNK_GRACE_S - 1})) as context:
        assert remove_junk_partitions(context).dynamic_partitions_requests == []
    instance.report_run_failed(run)
    with dg.build_sensor_context(instance=instance,
                                 cursor=json.dumps({"a-blue-vase": time.time() - JUNK_GRACE_S - 1})) as context:
        assert remove_junk_partitions(context).dynamic_partitions_requests[0].partition_keys == ["a-blue-vase"]


def test_an_image_path_that_is_not_a_regular_file_is_never_opened(tmp_path) -> None:
    import os

    os.mkfifo(tmp_path / "fifo.png")  # opening it for reading would block until a writer came
    with pytest.raises(PromptError, match=r"fifo.png': not a regular file"):
        fetch_image(str(tmp_path / "fifo.png"))
    (tmp_path / "big.png").write_bytes(b"\0" * (MAX_IMAGE_BYTES + 1))
    with pytest.raises(PromptError, match=r"big.png': 20,971,521 bytes; the limit is 20,971,520"):
        fetch_image(str(tmp_path / "big.png"))


def test_a_readable_entry_altered_in_the_store_is_refused(world, tmp_path) -> None:
    from threegen_dagster.records import CorruptRecord

    _, _, _, ledger = world
    entry, _ = ledger.add_readable("a-blue-vase-s3", source="ui")
    path = tmp_path / "store" / "ledger" / "a-blue-vase-s3.json"
    path.write_text(path.read_text().replace('"a blue vase"', '"a red vase"'))
    with pytest.raises(CorruptRecord, match=r"its prompt and seed do not hash to its key a-blue-vase-s3"):
        ledger.get("a-blue-vase-s3")


def test_a_request_that_fails_midway_undoes_what_it_registered(world, tmp_path) -> None:
    _, defs, instance, ledger = world
    second = generation_key(Prompt.from_text("a table"), 1)
    (tmp_path / "store" / "ledger" / f"{second}.json").mkdir(parents=True)  # its entry cannot be read or written
    result = request(defs, instance, prompts=["a chair", "a table"], seeds=[1])
    assert not result.success
    message = failure_line(result)
    assert message.startswith("request not registered (undone): ") and second in message, message
    assert instance.get_dynamic_partitions("generations") == []  # "a chair" was registered, then undone
    assert ledger.find(generation_key(Prompt.from_text("a chair"), 1)) is None
