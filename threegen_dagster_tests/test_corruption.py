"""One bad record never blocks the store: truncated or tampered version records, ledger entries
and task records, corrupt blobs, swapped ledger images, colliding keys, and a tampered record
that tries to choose a local file name. Each is made the way it happens: bytes changed in the
real store (a local folder, or the real S3 server), then the real code paths run over it."""

import io
import json
import re

import dagster as dg
import pytest
from PIL import Image

from threegen_dagster import cli
from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.definitions import build_definitions
from threegen_dagster.keys import Prompt, generation_key, is_generation_key
from threegen_dagster.ledger import Ledger
from threegen_dagster.records import CorruptRecord
from threegen_dagster.retention import apply_retention
from threegen_dagster.settings import Settings
from threegen_dagster.storage import LocalStore

from .test_artifacts import NOW, POLICY, _generation

KEY, OTHER = "a-chair-0123456789-s1", "a-lamp-0123456789-s2"
# a real 40-bit collision: the same slug, and sha256 of both starts 328c5d97bc (found by brute force)
COLLIDING = ("a wooden chair with four legs, variant 395168", "a wooden chair with four legs, variant 1077208")


def png(rgb: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buf, format="PNG")
    return buf.getvalue()


def truncate(store, path: str, keep: int | None = None) -> bytes:
    data = store.read(path)
    store.write(path, data[: len(data) // 2 if keep is None else keep])
    return data


# -- bad records -------------------------------------------------------------------------------
def test_a_truncated_version_is_named_and_skipped_and_the_rest_reads(store) -> None:
    artifacts = ArtifactStore(store)
    v1 = artifacts.record(KEY, "compressed_splat", b"spz one", "spz", "r1")
    v2 = artifacts.record(KEY, "compressed_splat", b"spz two", "spz", "r2")
    other = artifacts.record(OTHER, "validation_score", b'{"score": 1}', "json", "r3")
    truncate(store, v1.path)
    where = re.escape(store.uri(v1.path))

    snapshot = artifacts.snapshot()
    assert sorted(m.path for m in snapshot.manifests) == sorted([v2.path, other.path])
    assert [e.path for e in snapshot.unreadable] == [v1.path] and "Invalid JSON" in snapshot.unreadable[0].reason
    stats = artifacts.stats(snapshot=snapshot)
    assert stats["versions"] == 2 and stats["generations"] == 2
    assert len(stats["unreadable_records"]) == 1 and store.uri(v1.path) in stats["unreadable_records"][0]
    with pytest.raises(CorruptRecord, match=f"^bad record {where}: Invalid JSON: EOF while parsing"):
        artifacts.load(KEY, "compressed_splat", version=1)
    with pytest.raises(CorruptRecord, match=f"bad record {where}"):
        artifacts.versions(KEY, "compressed_splat")  # a plain listing raises; views collect
    bad: list = []
    assert [m.version for m in artifacts.versions(KEY, "compressed_splat", bad)] == [2] and bad[0].path == v1.path
    assert artifacts.load(KEY, "compressed_splat")[1] == b"spz two"
    assert artifacts.load(OTHER, "validation_score")[1] == b'{"score": 1}'

    store.write(v2.path, b"{}")  # now the newest one is off its schema: an error, never silently v1
    with pytest.raises(CorruptRecord, match=r"v000002.json: asset: Field required \(and \d+ more\)"):
        artifacts.load(KEY, "compressed_splat")
    store.write(v2.path, other.to_json())  # a valid record, but another version's
    with pytest.raises(CorruptRecord, match="describes generations/a-lamp-0123456789-s2/validation_score/v000001"):
        artifacts.load(KEY, "compressed_splat", version=2)


def test_a_damaged_ledger_entry_is_named_and_the_ledger_still_lists(store) -> None:
    ledger = Ledger(store)
    good, _ = ledger.add(Prompt.from_text("a good chair"), 1, "test")
    broken, _ = ledger.add(Prompt.from_text("a broken chair"), 1, "test")
    truncate(store, f"ledger/{broken.key}.json")
    with pytest.raises(CorruptRecord, match=f"bad record .*ledger/{broken.key}.json: Invalid JSON"):
        ledger.get(broken.key)
    with pytest.raises(CorruptRecord, match=f"ledger/{broken.key}.json"):
        ledger.add(Prompt.from_text("a broken chair"), 1, "test")  # never overwritten blindly
    bad: list = []
    assert [e.key for e in ledger.all(bad)] == [good.key] and [e.path for e in bad] == [f"ledger/{broken.key}.json"]
    assert ledger.prompt(good.key).text == "a good chair"

    path = f"ledger/{good.key}.json"
    edited = json.loads(store.read(path)) | {"prompt": "a good table"}  # valid JSON, prompt swapped by hand
    store.write(path, json.dumps(edited).encode())
    with pytest.raises(CorruptRecord, match=f"its prompt and seed do not hash to its key {good.key}: the store was"):
        ledger.get(good.key)
    store.write(path, json.dumps(edited | {"prompt": "a good chair", "seed": "1"}).encode())
    with pytest.raises(CorruptRecord, match="seed: Input should be a valid integer"):
        ledger.get(good.key)


GARBAGE = {"empty": b"", "binary": b"\xff\xfe\x00 not text", "a list": b"[1]", "null": b"null",
           "nested": b"[" * 100_000, "duplicate keys": b'{"key": 1, "key": 2}'}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_any_garbage_in_a_record_is_a_bad_record(store, garbage: bytes) -> None:
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    entry, _ = ledger.add(Prompt.from_text("a chair"), 1, "test")
    m = artifacts.record(entry.key, "compressed_splat", b"spz", "spz", "r")
    for path in (m.path, f"ledger/{entry.key}.json"):
        store.write(path, garbage)
    with pytest.raises(CorruptRecord, match=f"^bad record {re.escape(store.uri(m.path))}: "):
        artifacts.load(entry.key, "compressed_splat")
    with pytest.raises(CorruptRecord, match=f"^bad record {re.escape(store.uri(f'ledger/{entry.key}.json'))}: "):
        ledger.get(entry.key)
    snapshot, bad = artifacts.snapshot(), []
    assert snapshot.manifests == [] and len(snapshot.unreadable) == 1 and ledger.all(bad) == [] and len(bad) == 1


def test_an_object_too_large_to_be_a_record_is_not_read(store, monkeypatch) -> None:
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    entry, _ = ledger.add(Prompt.from_text("a chair"), 1, "test")
    m = artifacts.record(entry.key, "compressed_splat", b"spz", "spz", "r")
    big = b" " * (2**20) + m.to_json()  # valid JSON, but a blob's size: listings skip it unread
    store.write(m.path, big)
    store.write(f"ledger/{entry.key}.json", b" " * (2**20) + store.read(f"ledger/{entry.key}.json"))
    reads, read = [], store.read
    monkeypatch.setattr(store, "read", lambda relative: reads.append(relative) or read(relative))
    snapshot, bad = artifacts.snapshot(), []
    assert ledger.all(bad) == [] and "bytes, not a record (at most 1,048,576); not read" in str(bad[0])
    assert snapshot.manifests == [] and f"it is {len(big):,} bytes, not a record" in str(snapshot.unreadable[0])
    with pytest.raises(CorruptRecord, match="not a record"):
        artifacts.load(entry.key, "compressed_splat")
    assert reads == []


def test_a_record_read_by_its_name_is_bounded_too(store) -> None:
    """``manifest(version=N)`` and a ledger look-up read one record by its path, with no listing to give
    its size first: the read itself stops at the bound, and the object is a bad record, not read whole."""
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    entry, _ = ledger.add(Prompt.from_text("a chair"), 1, "test")
    m = artifacts.record(entry.key, "compressed_splat", b"spz", "spz", "r")
    big = b" " * (2**20) + m.to_json()  # valid JSON, but a blob's size
    store.write(m.path, big)
    store.write(f"ledger/{entry.key}.json", b" " * (2**20) + store.read(f"ledger/{entry.key}.json"))
    where = re.escape(store.uri(m.path))
    with pytest.raises(CorruptRecord, match=f"^bad record {where}: it is {len(big):,} bytes, not a record "
                                            f"\\(at most 1,048,576\\); not read"):
        artifacts.manifest(entry.key, "compressed_splat", version=1)
    with pytest.raises(CorruptRecord, match="not a record"):
        artifacts.load(entry.key, "compressed_splat", version=1)
    with pytest.raises(CorruptRecord, match=f"ledger/{entry.key}.json: it is .* bytes, not a record"):
        ledger.find(entry.key)


def test_cleanup_carries_on_past_bad_records_and_reports_each(store) -> None:
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    old = _generation(ledger, artifacts, "old thing", 100, passed=False)  # due for removal
    damaged = _generation(ledger, artifacts, "damaged thing", 100, passed=False)  # due too, keep mark unreadable
    young = _generation(ledger, artifacts, "young thing", 1)
    truncate(store, f"ledger/{damaged}.json")
    splat = artifacts.latest(young, "compressed_splat")
    cut = truncate(store, splat.path, keep=-30)  # lost its tail, still names its blob
    assert splat.sha256.encode() in cut[:-30]
    store.write("sn17/tasks/t-bad.json", b'{"task_id": "t-bad", "sta')

    report = apply_retention(artifacts, ledger, POLICY, now=NOW)
    assert report.removed == [old] and damaged in report.protected
    assert len(report.unreadable) == 3 and report.summary()["unreadable_records"] == 3
    for path in (f"ledger/{damaged}.json", splat.path, "sn17/tasks/t-bad.json"):
        assert sum(store.uri(path) in line for line in report.unreadable) == 1
    assert store.exists(splat.blob)  # a blob a bad version still names is kept
    assert artifacts.load(damaged, "compressed_splat")  # the damaged generation is untouched
    assert artifacts.load(young, "generated_image") and ledger.find(old) is None


def test_cli_lists_around_bad_records_and_names_them(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("THREEGEN_STORE", str(tmp_path / "store"))
    store = LocalStore(tmp_path / "store")
    ledger, artifacts = Ledger(store), ArtifactStore(store)
    good, _ = ledger.add(Prompt.from_text("a good chair"), 1, "test")
    broken, _ = ledger.add(Prompt.from_text("a broken chair"), 1, "test")
    for entry in (good, broken):
        artifacts.record(entry.key, "compressed_splat", entry.key.encode(), "spz", "r")
    v2 = artifacts.record(good.key, "compressed_splat", b"second", "spz", "r")
    (tmp_path / "store" / "ledger" / f"{broken.key}.json").write_bytes(b'{"key": "a-bro')
    (tmp_path / "store" / v2.path).write_bytes(b'{"asset": "compressed_splat", "byt')

    assert cli.main(["catalog", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {row["key"]: row for row in json.loads(out)}
    assert rows[good.key]["status"] == "partial (1/7)" and rows[broken.key]["status"] == "unreadable"
    assert rows[broken.key]["prompt"].startswith(f"bad record {tmp_path / 'store' / 'ledger' / broken.key}.json: ")
    assert v2.path in err and f"ledger/{broken.key}.json: Invalid JSON" in err
    assert cli.main(["stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["versions"] == 2 and v2.path in stats["unreadable_records"][0]
    assert cli.main(["versions", good.key]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].split()[:2] == ["compressed_splat", "1"] and len(out.splitlines()) == 2
    assert err.count("\n") == 1 and f"bad record {tmp_path / 'store' / v2.path}: Invalid JSON" in err
    assert cli.main(["get", good.key, "compressed_splat"]) == 2
    assert capsys.readouterr().err.startswith(f"threegen: bad record {tmp_path / 'store' / v2.path}")
    assert cli.main(["get", good.key, "compressed_splat", "--version", "1", "-o", "-"]) == 0
    assert capsys.readouterr().out == good.key
    assert cli.main(["versions", broken.key]) == 2
    assert f"ledger/{broken.key}.json: Invalid JSON" in capsys.readouterr().err


def test_the_cleanup_job_succeeds_and_warns_about_a_bad_record(tmp_path) -> None:
    settings = Settings(store=str(tmp_path / "artifacts"), inbox=tmp_path / "inbox")
    artifacts = ArtifactStore(LocalStore(tmp_path / "artifacts"))
    m = artifacts.record(KEY, "compressed_splat", b"spz", "spz", "r", now=NOW - 10**6)
    truncate(artifacts.store, m.path)
    config = {"ops": {"apply_retention": {"config": {"max_age_hours": 1, "gc_grace_hours": 0}}}, **cli.QUIET_RUN}
    with dg.instance_for_test() as instance:
        result = build_definitions(settings).resolve_job_def("cleanup").execute_in_process(
            instance=instance, run_config=config)
        assert result.success
        report = result.output_for_node("apply_retention")
        assert report["unreadable_records"] == 1 and m.path in report["warnings"][0]
        logged = [e.message for e in instance.all_logs(result.run_id) if e.level >= 30]  # WARNING and up
        assert any(m.path in message and "bad record" in message for message in logged)
        assert artifacts.store.exists(m.path)  # not cleaned away: left for a person, still reported

        from threegen_dagster.defs.catalog import generation_catalog

        catalog = dg.materialize([generation_catalog], instance=instance,
                                 resources=build_definitions(settings).resources)
        metadata = catalog.asset_materializations_for_node("generation_catalog")[0].metadata
        assert catalog.success and m.path in metadata["unreadable_records"].value


# -- corrupt blobs heal in one run -------------------------------------------------------------
@pytest.mark.parametrize("size", [24_000, 12 * 2**20])  # one PUT; a multipart upload on S3 (5 MiB parts)
def test_a_write_over_a_corrupt_blob_replaces_it(store, size: int) -> None:
    artifacts = ArtifactStore(store)
    data = bytes(range(256)) * (size // 256)
    first = artifacts.record(KEY, "gaussian_splat", data, "ply", "r1")
    assert artifacts.record(KEY, "gaussian_splat", data, "ply", "r2").deduplicated  # a good copy is re-used
    store.write(first.blob, b"X" + data[1:])  # same size, one byte changed behind the store's back
    healed = artifacts.record(KEY, "gaussian_splat", data, "ply", "r3")
    assert not healed.deduplicated and healed.blob == first.blob
    for version in (1, 2, 3):
        assert artifacts.load(KEY, "gaussian_splat", version=version)[1] == data


def test_s3_a_blob_replaced_without_a_checksum_is_not_trusted(s3_server, s3_prefix) -> None:
    from threegen_dagster.storage import S3Store

    from .s3_server import BUCKET

    artifacts = ArtifactStore(S3Store(s3_server.client(), BUCKET, s3_prefix))
    data = b"foreground png bytes" * 100
    first = artifacts.record(KEY, "foreground_image", data, "png", "r1")
    s3_server.client().put_object(Bucket=BUCKET, Key=f"{s3_prefix}/{first.blob}", Body=b"y" + data[1:])
    assert not artifacts.record(KEY, "foreground_image", data, "png", "r2").deduplicated
    assert artifacts.load(KEY, "foreground_image", version=1)[1] == data


# -- ledger images and collisions --------------------------------------------------------------
def test_a_swapped_ledger_image_is_refused_not_generated_from(store) -> None:
    ledger = Ledger(store)
    entry, _ = ledger.add(Prompt.from_image(png((10, 20, 30)), caption="a mug"), 1, "test")
    assert ledger.prompt(entry.key).image == png((10, 20, 30))
    store.write(f"ledger/{entry.key}.image", png((200, 0, 0)))  # another valid PNG
    with pytest.raises(CorruptRecord, match=f"the ledger image for {entry.key} does not match its recorded sha256 "
                                            r"\(these bytes hash to [0-9a-f]{16}…\): the store was altered"):
        ledger.prompt(entry.key)


def test_the_pipeline_refuses_a_swapped_ledger_image(tmp_path) -> None:
    from threegen_dagster.defs.generation import PIPELINE, generated_image

    settings = Settings(store=str(tmp_path / "artifacts"), inbox=tmp_path / "inbox")
    ledger = Ledger(LocalStore(tmp_path / "artifacts"))
    entry, _ = ledger.add(Prompt.from_image(png((10, 20, 30))), 3, "test")
    (tmp_path / "artifacts" / "ledger" / f"{entry.key}.image").write_bytes(png((0, 0, 255)))
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("generations", [entry.key])
        result = dg.materialize([*PIPELINE], selection=[generated_image], partition_key=entry.key, instance=instance,
                                resources=build_definitions(settings).resources, raise_on_error=False)
    assert not result.success
    error = str(next(e for e in result.all_events if e.is_step_failure).event_specific_data.error)
    assert f"the ledger image for {entry.key} does not match its recorded sha256" in error
    assert ArtifactStore(ledger.store).latest(entry.key, "generated_image") is None


def test_colliding_prompts_get_distinct_generations(store) -> None:
    a, b = (Prompt.from_text(text) for text in COLLIDING)
    assert generation_key(a, 7) == generation_key(b, 7)  # the collision is real: 40 bits, same slug
    ledger = Ledger(store)
    first, new_first = ledger.add(a, 7, "test")
    second, new_second = ledger.add(b, 7, "test")
    assert new_first and new_second and first.key == generation_key(a, 7)
    assert second.key == generation_key(b, 7, hash_chars=16) and is_generation_key(second.key)
    assert re.fullmatch(r"[a-z0-9-]+", second.key)  # still safe in the UI, shells, paths and S3
    assert ledger.prompt(first.key).text == COLLIDING[0] and ledger.prompt(second.key).text == COLLIDING[1]
    assert ledger.add(b, 7, "again") == (second, False) and ledger.add(a, 7, "again") == (first, False)
    assert sorted(e.key for e in ledger.all()) == sorted([first.key, second.key])


def test_a_ledger_entry_that_does_not_fit_its_key_is_not_taken_for_a_collision(store) -> None:
    ledger = Ledger(store)
    chair = Prompt.from_text("a chair")
    lamp, _ = ledger.add(Prompt.from_text("a lamp"), 1, "test")
    key = generation_key(chair, 1)  # the lamp's entry, copied to the chair's key
    store.write(f"ledger/{key}.json", json.dumps(json.loads(store.read(f"ledger/{lamp.key}.json")) | {"key": key})
                .encode())
    with pytest.raises(CorruptRecord, match=f"do not hash to its key {key}"):
        ledger.add(chair, 1, "test")


# -- local file names never come from the store ------------------------------------------------
def test_get_names_local_files_from_its_arguments_never_from_the_record(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("THREEGEN_STORE", str(tmp_path / "store"))
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    store = LocalStore(tmp_path / "store")
    entry, _ = Ledger(store).add(Prompt.from_text("a chair"), 1, "test")
    m = ArtifactStore(store).record(entry.key, "compressed_splat", b"spz", "spz", "r")
    record = tmp_path / "store" / m.path
    raw = json.loads(record.read_bytes())

    record.write_text(json.dumps(raw | {"format": "glb"}))  # valid, but not what this asset is
    assert cli.main(["get", entry.key, "compressed_splat"]) == 0
    assert cli.main(["get", entry.key, "-o", "all"]) == 0
    assert sorted(p.name for p in work.iterdir()) == sorted(["all", f"{entry.key}-compressed_splat.spz"])
    assert sorted(p.name for p in (work / "all").iterdir()) == ["compressed_splat.spz", "viewer.html"]
    capsys.readouterr()

    for field, value in (("key", "../../escaped"), ("format", "../../../escaped"), ("asset", "../escaped")):
        record.write_text(json.dumps(raw | {field: value}))
        assert cli.main(["get", entry.key, "compressed_splat"]) == 2
        assert re.match(f"threegen: bad record {re.escape(str(record))}: {field}: ", capsys.readouterr().err)
    assert not [p for p in tmp_path.rglob("*escaped*")]
