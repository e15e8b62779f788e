"""The inbox sensor, ticked with ``dg.build_sensor_context`` on real files: bad entries of every kind
are set aside without being opened (or read past the limit) and never stop the good ones; a task's
run request and its file's move are never separable; duplicates; error files never follow links."""

import base64
import hashlib
import io
import json
import os
import threading
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image

from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.inbox import TAG_FILE_ID, InboxResource, InboxTickError, inbox_sensor
from threegen_dagster.defs.resources import StoreResource
from threegen_dagster.settings import Settings
from threegen_dagster.tasks import MAX_TASK_BYTES

STAND_IN = dg.GraphDefinition("stand_in", node_defs=[dg.op(name="noop")(lambda: None)]).to_job()


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox")


def tick(instance, settings: Settings, **inbox) -> dg.SensorResult:
    resources = build_definitions(settings).resources
    with dg.build_sensor_context(instance=instance, resources={
            "store": resources["store"], "inbox": InboxResource(path=str(settings.inbox), **inbox)}) as context:
        return inbox_sensor(context)


def task(folder: Path, name: str, body) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(body if isinstance(body, bytes) else json.dumps(body).encode())
    return folder / name


def create_run(instance, request: dg.RunRequest, launch: bool = True) -> dg.DagsterRun:
    """What the daemon does with a request: a run carrying its tags and run key, created, then launched."""
    run = instance.create_run_for_job(STAND_IN, status=dg.DagsterRunStatus.NOT_STARTED, tags={
        **request.tags, "dagster/run_key": request.run_key, "dagster/sensor_name": "inbox_sensor"})
    if launch:
        launched(instance, run)
    return run


def launched(instance, run: dg.DagsterRun) -> None:
    instance.report_dagster_event(dg.DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value,
                                                  job_name=run.job_name), run_id=run.run_id)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


class FifoWatch:
    """Notices a reader opening the FIFO (a writer's non-blocking open succeeds only then) and frees it."""

    def __init__(self, path: Path) -> None:
        self.path, self.opened, self.stop = path, False, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stop.wait(0.01):
            try:
                os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
            except FileNotFoundError:
                return  # set aside
            except OSError:
                continue  # ENXIO: nobody reading
            self.opened = True  # a reader blocked on it: closing our end gives it EOF

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def __enter__(self):
        return self


def test_bad_entries_are_set_aside_unopened_and_never_stop_the_good_ones(tmp_path, instance, settings) -> None:
    inbox = settings.inbox
    outside = task(tmp_path / "elsewhere", "real.json", {"id": "via-link", "prompt": "a mug"})
    task(inbox, "a-good.json", {"id": "task-a", "prompt": "a green vase", "seed": 3})
    (inbox / "b-folder.json").mkdir()
    (inbox / "b-folder.json" / "inside.txt").write_text("kept")
    (inbox / "c-dangling.json").symlink_to(tmp_path / "nowhere.json")
    task(inbox, "d-deep.json", b"[" * 200_000 + b"]" * 200_000)
    (inbox / "e-zero.json").symlink_to("/dev/zero")
    os.mkfifo(inbox / "f-fifo.json")
    (inbox / "g-link.json").symlink_to(outside)
    with open(inbox / "h-huge.json", "wb") as huge:
        huge.truncate(MAX_TASK_BYTES + 1)  # sparse: a real size, no disk
    task(inbox, "i-empty.json", b"")
    good = json.dumps({"id": "task-name", "prompt": "a vase"}).encode()
    task(inbox, "j-new\nline.json", good)  # a fine task, but its name would go into logs and run tags
    with open(os.fsencode(inbox) + b"/k-\xff.json", "wb") as undecodable:
        undecodable.write(good)
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(png, format="PNG")
    task(inbox, "z-good.json", {"id": "task-z", "image_b64": base64.b64encode(png.getvalue()).decode()})

    with FifoWatch(inbox / "f-fifo.json") as fifo:
        result = tick(instance, settings)
    assert not fifo.opened, "the sensor opened the FIFO (a tick would hang on it)"
    assert sorted(r.run_key for r in result.run_requests) == ["task:task-a", "task:task-z"]
    keys = {r.partition_key for r in result.run_requests}
    assert set(result.dynamic_partitions_requests[0].partition_keys) == keys
    ledger = StoreResource.from_settings(settings).ledger()
    assert {ledger.get(k).task_id for k in keys} == {"task-a", "task-z"}

    rejected = inbox / "rejected"
    why = {p.name.removesuffix(".error.txt"): p.read_text() for p in rejected.glob("*.error.txt")}
    assert set(why) == {"b-folder.json", "c-dangling.json", "d-deep.json", "e-zero.json", "f-fifo.json",
                        "g-link.json", "h-huge.json", "i-empty.json", "j-new\nline.json", "k-\udcff.json"}
    assert why["b-folder.json"].startswith("a folder, not a task file")
    assert why["c-dangling.json"].startswith("a symbolic link (links are never followed)")
    assert why["e-zero.json"].startswith("a symbolic link") and why["g-link.json"].startswith("a symbolic link")
    assert why["f-fifo.json"].startswith("a FIFO")
    assert "nested too deeply" in why["d-deep.json"]
    assert f"over the {MAX_TASK_BYTES:,} limit" in why["h-huge.json"] and "not JSON" in why["i-empty.json"]
    assert why["j-new\nline.json"] == why["k-\udcff.json"] == "the file name is not printable UTF-8 text; rename it\n"
    assert (rejected / "b-folder.json" / "inside.txt").read_text() == "kept"  # moved whole, as it was
    assert os.readlink(rejected / "e-zero.json") == "/dev/zero" and (rejected / "g-link.json").is_symlink()
    assert outside.is_file()  # a link's target is never moved or touched
    # the good files wait in the inbox until their runs exist
    assert listing(inbox) == ["a-good.json", "rejected", "z-good.json"]


def test_a_run_request_and_the_files_move_are_not_separable(instance, settings) -> None:
    task(settings.inbox, "a.json", {"id": "task-sep", "prompt": "a brass lamp"})
    first = tick(instance, settings).run_requests
    assert [r.run_key for r in first] == ["task:task-sep"]
    # the daemon died before creating the run, or creating it failed: the task is not taken
    again = tick(instance, settings).run_requests
    same = lambda requests: [(r.run_key, r.partition_key, r.tags) for r in requests]  # noqa: E731
    assert same(again) == same(first)
    assert listing(settings.inbox) == ["a.json"]

    # created but never launched (the daemon died in between): asking again makes the daemon launch it
    run = create_run(instance, again[0], launch=False)
    assert [r.run_key for r in tick(instance, settings).run_requests] == ["task:task-sep"]
    assert listing(settings.inbox) == ["a.json"]

    launched(instance, run)
    assert tick(instance, settings).run_requests == []
    assert listing(settings.inbox) == ["accepted"] and listing(settings.inbox / "accepted") == ["a.json"]
    assert tick(instance, settings).run_requests == []


def test_duplicates_within_a_tick_and_after_a_run(instance, settings) -> None:
    inbox = settings.inbox
    body = {"id": "task-dup", "prompt": "a cup", "seed": 1}
    task(inbox, "d1.json", body)
    task(inbox, "d2.json", body)
    result = tick(instance, settings)
    assert [r.run_key for r in result.run_requests] == ["task:task-dup"]
    assert "file d1.json" in (inbox / "duplicate" / "d2.json.error.txt").read_text()
    run = create_run(instance, result.run_requests[0])
    assert tick(instance, settings).run_requests == []
    assert listing(inbox / "accepted") == ["d1.json"]

    task(inbox, "d1.json", body)  # the same bytes under the same name again: another file, a duplicate
    task(inbox, "d3.json", body)
    assert tick(instance, settings).run_requests == []
    duplicates = inbox / "duplicate"
    assert run.run_id in (duplicates / "d1.json.error.txt").read_text()
    assert run.run_id in (duplicates / "d3.json.error.txt").read_text()
    assert listing(inbox) == ["accepted", "duplicate"] and listing(inbox / "accepted") == ["d1.json"]
    assert run.tags[TAG_FILE_ID].endswith(hashlib.sha256(json.dumps(body).encode()).hexdigest())


def test_error_files_are_never_written_through_a_link(tmp_path, instance, settings) -> None:
    inbox = settings.inbox
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    rejected = inbox / "rejected"
    rejected.mkdir(parents=True)
    (rejected / "bad.json.error.txt").symlink_to(victim)  # planted where the error file would go
    (rejected / "worse.json.error.txt").symlink_to(tmp_path / "created-through-link.txt")  # dangling
    (rejected / "taken.json").symlink_to(victim)  # planted where the moved file would go
    task(inbox, "bad.json", b'{"id": "x", "prompt": "overwrite the victim with this text"')
    task(inbox, "worse.json", b"{oops")
    task(inbox, "taken.json", b"[]")

    assert tick(instance, settings).run_requests == []
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "created-through-link.txt").exists()
    moved = {name: [p.name for p in rejected.glob(f"{name}-*.json")] for name in ("bad", "worse", "taken")}
    assert all(len(names) == 1 for names in moved.values())  # each under a fresh name, its error file beside it
    why = {name: (rejected / f"{names[0]}.error.txt").read_text() for name, names in moved.items()}
    assert why["bad"].startswith("not JSON") and why["worse"].startswith("not JSON")
    assert why["taken"] == "a task is a JSON object, not list\n"
    assert os.readlink(rejected / "taken.json") == str(victim)  # the planted link is left as it was


def test_a_linked_subfolder_leaves_bad_entries_stuck_and_the_good_ones_run(tmp_path, instance, settings, capfd) -> None:
    inbox = settings.inbox
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    inbox.mkdir()
    (inbox / "rejected").symlink_to(elsewhere)
    for n in range(3):  # sorted before the good one, more than the per-tick bound
        task(inbox, f"a{n}.json", b"{oops")
    task(inbox, "b.json", {"id": "task-b", "prompt": "a chair"})

    result = tick(instance, settings, max_per_tick=3)
    assert [r.run_key for r in result.run_requests] == ["task:task-b"]
    assert listing(elsewhere) == []  # nothing moved or written through the link
    assert listing(inbox) == ["a0.json", "a1.json", "a2.json", "b.json", "rejected"]
    err = capfd.readouterr().err
    assert "a0.json stuck (not JSON" in err
    assert "cannot use rejected/ in the inbox (not a folder; links are not followed)" in err


def test_a_store_failure_leaves_the_file_for_the_next_tick_and_fails_the_tick(tmp_path, instance) -> None:
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store folder should be")
    settings = Settings(store=str(blocker), inbox=tmp_path / "inbox")
    task(settings.inbox, "a.json", {"id": "task-store", "prompt": "a teapot"})
    task(settings.inbox, "b.json", b"{oops")
    with pytest.raises(InboxTickError, match=r"1 inbox entry left in place, retried next tick: a.json: StorageError"):
        tick(instance, settings)
    assert listing(settings.inbox) == ["a.json", "rejected"]  # the bad one was still set aside

    blocker.unlink()
    assert [r.run_key for r in tick(instance, settings).run_requests] == ["task:task-store"]


def test_each_tick_reads_at_most_max_per_tick_files(instance, settings) -> None:
    for n in range(5):
        task(settings.inbox, f"t{n}.json", {"id": f"task-bound-{n}", "prompt": f"thing {n}"})
    first = tick(instance, settings, max_per_tick=3).run_requests
    assert [r.run_key for r in first] == [f"task:task-bound-{n}" for n in range(3)]
    for request in first:
        create_run(instance, request)
    assert tick(instance, settings, max_per_tick=3).run_requests == []  # moves t0-t2 (3 reads)
    assert [r.run_key for r in tick(instance, settings, max_per_tick=3).run_requests] == \
        ["task:task-bound-3", "task:task-bound-4"]
    assert listing(settings.inbox / "accepted") == ["t0.json", "t1.json", "t2.json"]
