"""The I/O manager, driven through Dagster's own contexts: each asset's value stored as its file
format and loaded back equal; a second write is a new version (the catalog sensors: test_catalog_incremental.py)."""

import json

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import trimesh
from PIL import Image

from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.defs.generation import generations
from threegen_dagster.defs.io_manager import FORMATS, ArtifactIOManager
from threegen_dagster.defs.resources import StoreResource
from threegen_dagster.settings import Settings
from threegen_dagster.splats import GaussianCloud
from threegen_dagster.splats import spz as spz_codec
from threegen_dagster.storage import LocalStore

KEY = "a-red-mug-0123456789-s1"


def values() -> dict:
    rng = np.random.default_rng(0)
    cut = np.zeros((24, 32, 4), np.uint8)
    cut[4:20, 6:26] = (200, 40, 40, 255)
    mesh = trimesh.creation.box()
    mesh.visual.vertex_colors = np.tile([10, 200, 30, 255], (len(mesh.vertices), 1)).astype(np.uint8)
    cloud = GaussianCloud(positions=rng.normal(size=(50, 3)).astype(np.float32),
                          log_scales=np.full((50, 3), -3.0, np.float32),
                          rotations=np.tile(np.float32([1, 0, 0, 0]), (50, 1)),
                          opacity_logits=np.zeros(50, np.float32), sh_dc=rng.normal(size=(50, 3)).astype(np.float32))
    return {
        "generated_image": Image.fromarray(np.full((24, 32, 3), 180, np.uint8), "RGB"),
        "foreground_image": Image.fromarray(cut, "RGBA"),
        "initial_mesh": mesh, "refined_mesh": mesh, "gaussian_splat": cloud,
        "compressed_splat": spz_codec.encode(cloud),
        "validation_score": {"score": 0.7, "parts": {"a": 1.0}, "checks": {"failures": []}},
        "generation_catalog": pd.DataFrame({"key": [KEY], "score": [0.7]}),
    }


def same(asset: str, a, b) -> bool:
    if isinstance(a, Image.Image):
        return a.mode == b.mode and a.tobytes() == b.tobytes()
    if isinstance(a, trimesh.Trimesh):
        return np.allclose(a.vertices, b.vertices) and (a.visual.vertex_colors == b.visual.vertex_colors).all()
    if isinstance(a, GaussianCloud):
        return np.array_equal(a.positions, b.positions) and np.array_equal(a.sh_dc, b.sh_dc)
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    return a == b


@pytest.mark.parametrize("asset", list(values()))
def test_each_asset_round_trips_through_its_file_format(tmp_path, asset) -> None:
    manager = ArtifactIOManager(store=StoreResource.from_settings(Settings(store=str(tmp_path), inbox=tmp_path)))
    value = values()[asset]
    partitioned = asset != "generation_catalog"
    where = {"asset_key": dg.AssetKey(asset), **({"partition_key": KEY} if partitioned else {})}
    with dg.instance_for_test() as instance:
        if partitioned:
            instance.add_dynamic_partitions(generations.name, [KEY])
        parts = {"asset_partitions_def": generations, "instance": instance} if partitioned else {}
        # contexts closed as they are made to be (each holds resources, on an instance of its own)
        with dg.build_output_context(**where, run_id="r1", **parts) as out:
            manager.handle_output(out, value)
        with dg.build_output_context(**where, run_id="r2", **parts) as again:
            manager.handle_output(again, value)
        with dg.build_input_context(**where, upstream_output=out, **parts) as into:
            loaded = manager.load_input(into)
    assert same(asset, value, loaded)
    artifacts = ArtifactStore(LocalStore(tmp_path))
    versions = artifacts.versions(KEY if partitioned else None, asset)
    assert [(v.version, v.run_id) for v in versions] == [(1, "r1"), (2, "r2")] and versions[0].sha256 == versions[1].sha256  # de-duplicated
    assert versions[1].deduplicated and versions[0].format == FORMATS[asset].ext
    if asset == "initial_mesh":  # the PLY beside the GLB
        assert "ply" in versions[0].extras
    if asset == "validation_score":
        assert json.loads(artifacts.load(KEY, asset)[1]) == value


def test_an_asset_without_a_format_is_refused(tmp_path) -> None:
    manager = ArtifactIOManager(store=StoreResource.from_settings(Settings(store=str(tmp_path), inbox=tmp_path)))
    with dg.build_output_context(asset_key=dg.AssetKey("paint")) as out:
        with pytest.raises(dg.DagsterInvariantViolationError, match=r"no file format for asset 'paint'"):
            manager.handle_output(out, b"x")

