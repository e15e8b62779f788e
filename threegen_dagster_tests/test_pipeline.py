"""The whole Dagster graph on a temporary instance: files, decoding, the blocking check,
retention and the CLI (the inbox sensor: test_inbox_sensor.py)."""

import io
import json
import os
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import trimesh
from PIL import Image

from threegen_dagster import cli
from threegen_dagster.catalog import build_catalog, to_frame
from threegen_dagster.catalog_index import CatalogIndex
from threegen_dagster.definitions import build_definitions, defs
from threegen_dagster.keys import Prompt
from threegen_dagster.settings import Settings
from threegen_dagster.splats import read_ply, spz
from threegen_dagster.defs.resources import StoreResource

QUIET = cli.QUIET_RUN


def settings_for(root: Path, **overrides) -> Settings:
    return Settings(store=str(root / "artifacts"), inbox=root / "inbox", **overrides)


def opened(settings: Settings) -> StoreResource:
    return StoreResource.from_settings(settings)


def register(instance: dg.DagsterInstance, settings: Settings, text: str, seed: int, **kwargs) -> str:
    entry, _ = cli.register(Prompt.from_text(text), seed, "test", settings, instance)
    return entry.key


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, instance):
    """Two generations materialized end to end."""
    settings = settings_for(tmp_path_factory.mktemp("pipeline"))
    definitions = build_definitions(settings)
    nasty = 'a "blue" ball | with, commas\nand an emoji 🤖'  # works end to end, not just as a key
    keys = [register(instance, settings, "a wooden chair", 42), register(instance, settings, nasty, 7)]
    results = {key: definitions.resolve_job_def("generate").execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET) for key in keys}
    return settings, definitions, results


def test_definitions_load() -> None:
    dg.Definitions.validate_loadable(defs)
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"generate", "refresh_catalog", "cleanup"}


def test_every_stage_writes_a_real_file_that_decodes(pipeline) -> None:
    settings, _, results = pipeline
    artifacts = opened(settings).artifacts()
    for key, result in results.items():
        assert result.success
        data = lambda asset: io.BytesIO(artifacts.load(key, asset)[1])  # noqa: E731
        assert Image.open(data("generated_image")).mode == "RGB"
        assert Image.open(data("foreground_image")).mode == "RGBA"
        meshes = {a: trimesh.load(data(a), file_type="glb", force="mesh") for a in ("initial_mesh", "refined_mesh")}
        for mesh in meshes.values():
            assert len(mesh.faces) > 100 and mesh.visual.vertex_colors is not None
        mesh_ply = trimesh.load(io.BytesIO(artifacts.load_extra(artifacts.latest(key, "initial_mesh"), "ply")),
                                file_type="ply", process=False)
        assert np.array_equal(mesh_ply.faces, meshes["initial_mesh"].faces)  # the PLY beside it is the same mesh
        assert len(meshes["refined_mesh"].faces) < len(meshes["initial_mesh"].faces)  # decimated
        cloud = read_ply(data("gaussian_splat").getvalue())
        decoded = spz.decode(data("compressed_splat").getvalue())
        assert len(cloud) == len(decoded) == 50_000
        assert abs(float((decoded.positions.max(0) - decoded.positions.min(0)).max()) - 1.5) < 1e-3
        score = json.loads(data("validation_score").getvalue())
        assert score["kind"] == "proxy" and score["checks"]["failures"] == []
        assert score["score"] >= 0.6 and score["passed"]
        manifest = artifacts.latest(key, "compressed_splat")
        assert manifest.bytes == len(data("compressed_splat").getvalue()) and manifest.run_id == result.run_id
        assert manifest.version == 1 and manifest.metadata["gaussians"] == 50_000
        assert artifacts.store.path(manifest.blob).is_file()  # locally, a blob is a plain file


def test_materializations_carry_metadata_and_a_preview(pipeline, instance) -> None:
    settings, _, results = pipeline
    key = next(iter(results))
    materializations = [ev.event_specific_data.materialization
                        for ev in results[key].get_asset_materialization_events()]
    events = {m.asset_key.path[-1]: m for m in materializations}
    artifacts = opened(settings).artifacts()
    for asset in ("generated_image", "gaussian_splat", "validation_score"):
        md = events[asset].metadata
        record = artifacts.latest(key, asset).metadata  # the store's record carries what the UI shows
        assert md["seconds"].value == record["seconds"] and md["prompt"].value == record["prompt"] == "a wooden chair"
        assert md["preview"].value.startswith("![preview](data:image/png;base64,")
        assert md["sha256"].value and md["bytes"].value > 0 and md["version"].value == 1
        assert md["uri"].value.endswith(md["sha256"].value) and "download" not in md  # links are for S3
    assert events["compressed_splat"].metadata["ratio"].value > 3
    assert events["gaussian_splat"].metadata["gaussians"].value == 50_000
    check = results[key].get_asset_check_evaluations()[0]
    assert check.passed and check.check_name == "score_meets_threshold" and check.partition == key


def test_blocking_check_fails_the_run_below_threshold(tmp_path, instance) -> None:
    settings = settings_for(tmp_path, score_threshold=0.999)
    key = register(instance, settings, "red cube", 1)
    result = build_definitions(settings).resolve_job_def("generate").execute_in_process(
        instance=instance, partition_key=key, run_config=QUIET, raise_on_error=False)
    assert not result.success
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed and evaluation.metadata["threshold"].value == 0.999


def test_catalog_lists_generations_from_the_store(pipeline, instance) -> None:
    settings, definitions, results = pipeline
    result = definitions.resolve_job_def("refresh_catalog").execute_in_process(instance=instance, run_config=QUIET)
    store = opened(settings)
    frame = to_frame(CatalogIndex(store.artifacts(), store.ledger()).rows())  # what the refresh kept
    assert set(frame["key"]) == set(results)
    assert (frame["status"] == "complete").all() and (frame["gaussians"] == 50_000).all()
    assert (frame["total_seconds"] > 0).all() and frame["score"].between(0.6, 1).all()
    assert result.get_asset_materialization_events()[0].materialization.metadata["refreshed"].value == 2
    key = next(iter(results))
    store.store().delete(store.artifacts().latest(key, "compressed_splat").blob)  # the store is the truth
    row = build_catalog(store.artifacts(), store.ledger()).set_index("key").loc[key]
    assert row["status"] == "partial (6/7)"


def test_cleanup_job_applies_the_policy_and_dry_run_changes_nothing(tmp_path, instance) -> None:
    settings = settings_for(tmp_path)
    store = opened(settings)
    ledger, artifacts = store.ledger(), store.artifacts()
    now = time.time()
    old, _ = ledger.add(Prompt.from_text("old thing"), 0, "test", now=now - 10 * 86400)
    kept, _ = ledger.add(Prompt.from_text("kept thing"), 0, "test", now=now - 10 * 86400)
    young, _ = ledger.add(Prompt.from_text("young thing"), 0, "test", now=now)
    ledger.set_keep(kept.key)
    for n, entry in enumerate((old, kept, young)):
        artifacts.record(entry.key, "compressed_splat", bytes([n]) * 1000, "spz", "r", now=now - 10 * 86400)
    instance.add_dynamic_partitions("generations", [old.key, kept.key, young.key])
    job = build_definitions(settings).resolve_job_def("cleanup")

    def run(dry_run: bool) -> dict:
        config = {"ops": {"apply_retention": {"config": {"max_age_hours": 24, "gc_grace_hours": 0,
                                                          "dry_run": dry_run}}}, **QUIET}
        return job.execute_in_process(instance=instance, run_config=config).output_for_node("apply_retention")

    blob = artifacts.latest(old.key, "compressed_splat").blob
    dry = run(True)
    assert dry["generations_removed"] == 1 and dry["blob_bytes_freed"] == 1000 and dry["removed"] == [old.key]
    assert ledger.find(old.key) and store.store().exists(blob)
    assert instance.has_dynamic_partition("generations", old.key)

    real = run(False)
    assert {k: real[k] for k in dry if k != "dry_run"} == {k: dry[k] for k in dry if k != "dry_run"}
    assert real["protected"] == 1 and real["untouched"] >= 1
    assert ledger.find(old.key) is None and not store.store().exists(blob)
    assert artifacts.latest(old.key, "compressed_splat") is None
    assert not instance.has_dynamic_partition("generations", old.key)
    assert ledger.find(kept.key) and ledger.find(young.key)
    assert instance.has_dynamic_partition("generations", kept.key)


def test_cli_generate_add_and_errors(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("THREEGEN_GAUSSIANS", "20000")
    assert cli.main(["add", "a tall lamp", "--seed", "4", "--json"]) == 0
    added = json.loads(capsys.readouterr().out)
    assert added["new"] and added["key"].startswith("a-tall-lamp-")
    assert (tmp_path / ".dagster" / "dagster.yaml").exists()

    assert cli.main(["generate", "a tall lamp", "--seed", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["success"] and out["key"] == added["key"] and out["score"]["score"] >= 0.6
    assert set(out["stages"]) >= {"generated_image", "compressed_splat", "validation_score"}
    assert Path(out["stages"]["compressed_splat"]["file"]).is_file()
    assert Path(os.environ["DAGSTER_HOME"]) == tmp_path / ".dagster"
    with dg.DagsterInstance.get() as inst:
        runs = inst.get_runs()
        assert {r.job_name for r in runs} == {"generate"}  # the catalog is refreshed inline, no second run
        assert inst.get_latest_materialization_event(dg.AssetKey("generation_catalog")) is not None
        assert inst.has_dynamic_partition("generations", out["key"])

    assert cli.main(["generate", "a tall lamp", "--seed", "4", "--out", "exported"]) == 0
    assert "exported 7 files" in capsys.readouterr().out
    spz_file = tmp_path / "exported" / "compressed_splat.spz"
    assert spz.decode(spz_file.read_bytes()).positions.shape == (20_000, 3)

    assert cli.main(["versions", out["key"], "compressed_splat"]) == 0
    listing = capsys.readouterr().out
    assert listing.splitlines()[1].split()[:2] == ["compressed_splat", "1"] and "deduplicated" in listing.splitlines()[2]
    assert cli.main(["get", out["key"], "compressed_splat", "--version", "1", "-o", "v1.spz"]) == 0
    assert "verified" in capsys.readouterr().out and (tmp_path / "v1.spz").read_bytes() == spz_file.read_bytes()
    assert cli.main(["get", out["key"], "compressed_splat", "--version", "9"]) == 2
    assert "no version 9" in capsys.readouterr().err
    assert cli.main(["stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["generations"] == 1 and stats["dedup_ratio"] > 1.8  # twice the same bytes, stored once
    assert stats["by_status"]["complete"]["generations"] == 1

    assert cli.main(["generate", "   "]) == 2
    assert "empty" in capsys.readouterr().err
    assert cli.main(["generate", "x", "--image", str(tmp_path / "missing.png")]) == 2
    assert cli.main(["keep", "no-such-key-0123456789-s1"]) == 2
