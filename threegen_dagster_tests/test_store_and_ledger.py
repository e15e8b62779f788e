import errno
import io
import os

import pytest
from PIL import Image

from threegen_dagster.keys import Prompt, PromptError
from threegen_dagster.ledger import Ledger, UnknownGeneration
from threegen_dagster.storage import LocalStore, StorageError



def png(rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A real 4x4 PNG (image prompts must decode)."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), rgb).save(buf, format="PNG")
    return buf.getvalue()


PNG = png()


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path) -> None:
    store = LocalStore(tmp_path)
    store.write("a/b/c.bin", b"one")
    store.write("a/b/c.bin", b"two")
    assert store.read("a/b/c.bin") == b"two"
    assert [p.name for p in (tmp_path / "a/b").iterdir()] == ["c.bin"]
    assert [info.path for info in store.list("a")] == ["a/b/c.bin"]


def test_a_failed_write_changes_nothing(tmp_path, monkeypatch) -> None:
    store = LocalStore(tmp_path)
    store.write("x.bin", b"old")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)  # the disk fills while the new bytes are flushed
    with pytest.raises(StorageError, match="disk is full"):
        store.write("x.bin", b"new")
    assert store.read("x.bin") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


@pytest.mark.parametrize("path", ["../escape", "/abs", "a/../../b", "", "a\\b"])
def test_paths_outside_the_store_are_refused(tmp_path, path: str) -> None:
    with pytest.raises(StorageError, match="not a store path"):
        LocalStore(tmp_path).write(path, b"x")


def test_missing_file_error_names_it(tmp_path) -> None:
    with pytest.raises(StorageError, match="missing from the store: .*nope.png"):
        LocalStore(tmp_path).read("generations/k/nope.png")


def test_ledger_maps_keys_back_to_prompts(tmp_path) -> None:
    ledger = Ledger(LocalStore(tmp_path))
    text, new = ledger.add(Prompt.from_text("a | weird, \"prompt\"\nwith lines 🤖"), 5, source="cli")
    again, new_again = ledger.add(Prompt.from_text("a | weird, \"prompt\" with lines 🤖"), 5, source="inbox")
    assert new and not new_again and again == text
    image, _ = ledger.add(Prompt.from_image(PNG, caption="mug"), 1, source="inbox", task_id="t9")
    assert ledger.prompt(text.key).text == "a | weird, \"prompt\" with lines 🤖"
    assert ledger.prompt(image.key).image == PNG
    assert ledger.get(image.key).task_id == "t9"
    assert {e.key for e in Ledger(LocalStore(tmp_path)).all()} == {text.key, image.key}
    with pytest.raises(UnknownGeneration, match="threegen add"):
        ledger.get("unknown-0123456789-s1")
    with pytest.raises(PromptError, match=r"'\.\./\.\./etc' is not a generation key"):
        ledger.get("../../etc")




def test_concurrent_registrations_of_one_prompt_make_one_entry(store) -> None:
    import threading

    ledger, results = Ledger(store), []

    def add(source: str) -> None:
        results.append(ledger.add(Prompt.from_text("a shared prompt"), 9, source=source))

    threads = [threading.Thread(target=add, args=(f"worker-{n}",)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(new for _, new in results) == 1
    assert len({entry for entry, _ in results}) == 1 and len(ledger.all()) == 1


def test_keep_marks_and_holds(store) -> None:
    ledger = Ledger(store)
    entry, _ = ledger.add(Prompt.from_text("a lamp"), 1, source="cli")
    assert ledger.set_keep(entry.key).keep and ledger.get(entry.key).keep
    assert not ledger.set_keep(entry.key, False).keep
    ledger.hold(entry.key, "submission-task-1", "pending")
    ledger.hold(entry.key, "submission-task-2")
    assert ledger.holds() == {entry.key: ["submission-task-1", "submission-task-2"]}
    ledger.release(entry.key, "submission-task-1")
    assert ledger.holds() == {entry.key: ["submission-task-2"]}
    assert [e.key for e in ledger.all()] == [entry.key]  # holds are not entries
    with pytest.raises(ValueError, match="hold name"):
        ledger.hold(entry.key, "../escape")
    with pytest.raises(UnknownGeneration, match=r"no generation 'unknown-0123456789-s1' in the ledger"):
        ledger.hold("unknown-0123456789-s1", "x")


def test_an_unreachable_store_is_not_an_unknown_generation(tmp_path) -> None:
    import boto3
    from botocore.config import Config

    from threegen_dagster.storage import S3Store

    down = boto3.client("s3", endpoint_url="http://127.0.0.1:9", aws_access_key_id="k", aws_secret_access_key="s",
                        region_name="us-east-1", config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(StorageError, match="unreachable"):
        Ledger(S3Store(down, "bucket")).find("a-lamp-0123456789-s1")
