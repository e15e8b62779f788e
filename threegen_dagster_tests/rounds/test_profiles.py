"""The competition profiles on real files from the embedded pipeline: each profile's job makes its output
from the pipeline's splat or mesh, and its blocking check passes them; broken files fail each rule by its
code; a failed check blocks (the run fails, the check is recorded failed)."""

import io
import json

import dagster as dg
import numpy as np
import pytest
import trimesh

from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.resources import StoreResource
from threegen_dagster.keys import Prompt
from threegen_dagster.rounds.outputs01 import check_comp0, check_comp1
from threegen_dagster.settings import Settings

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _materialize(tmp_path_factory, frame="y_up"):
    root = tmp_path_factory.mktemp(f"profiles-{frame}")
    settings = Settings(store=str(root / "store"), inbox=root / "inbox", frame=frame, gaussians=5000)
    definitions = build_definitions(settings)
    store = StoreResource.from_settings(settings)
    entry, _ = store.ledger().add(Prompt.from_text("a red mug"), 7, source="test")
    return settings, definitions, store, entry.key


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    settings, definitions, store, key = _materialize(tmp_path_factory)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("generations", [key])
        tags = {"threegen/round": "53", "threegen/stem": "abc", "threegen/round_deadline": "2026-10-01T12:00:00+00:00",
                "threegen/round_deadline_unix": "1790000000", "threegen/round_deadline_block": "9252586"}
        comp0 = definitions.resolve_job_def("sn17_comp0").execute_in_process(
            instance=instance, partition_key=key, run_config=QUIET, tags=tags)
        later = {n: definitions.resolve_job_def(f"sn17_comp{n}").execute_in_process(
            instance=instance, partition_key=key, run_config=QUIET, tags=tags,
            asset_selection=[dg.AssetKey(name)], raise_on_error=False)
            for n, name in ((1, "comp1_mesh"), (2, "comp2_module"))}
        tight = {**QUIET, "resources": {"round_state": {"config": {"comp2_rules": {"vertices": 100}}}}}
        later["comp2_tight"] = definitions.resolve_job_def("sn17_comp2").execute_in_process(
            instance=instance, partition_key=key, run_config=tight, asset_selection=[dg.AssetKey("comp2_module")],
            raise_on_error=False)
        yield store, key, {0: comp0, **later}


def _verdict(result, name):
    (evaluation,) = [e.event_specific_data for e in result.all_events
                     if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == name]
    return evaluation


def test_comp0_job_makes_a_ply_that_passes(pipeline):
    store, key, results = pipeline
    assert results[0].success
    assert _verdict(results[0], "comp0_rules").passed
    data = store.artifacts().load(key, "comp0_splat")[1]
    assert data.startswith(b"ply") and check_comp0(data, "y_up").ok
    meta = store.artifacts().latest(key, "comp0_splat").metadata
    assert meta["round"] == "53" and meta["deadline"] == "2026-10-01T12:00:00+00:00"  # the run's deadline, shown


def test_comp1_job_makes_one_mesh_inside_the_bounds(pipeline):
    store, key, results = pipeline
    assert results[1].success and _verdict(results[1], "comp1_rules").passed
    data = store.artifacts().load(key, "comp1_mesh")[1]
    mesh = trimesh.load(io.BytesIO(data), file_type="glb", force="mesh")
    assert np.abs(mesh.bounds).max() == pytest.approx(0.5, abs=1e-4)


def test_comp2_job_makes_a_module_that_passes_the_node_check(pipeline):
    store, key, results = pipeline
    assert results[2].success and _verdict(results[2], "comp2_rules").passed
    data = store.artifacts().load(key, "comp2_module")[1]
    assert b"export default function generate(THREE)" in data


def test_a_failed_check_blocks(tmp_path_factory):
    settings, definitions, store, key = _materialize(tmp_path_factory, frame="y_down")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("generations", [key])
        result = definitions.resolve_job_def("sn17_comp0").execute_in_process(
            instance=instance, partition_key=key, run_config=QUIET, raise_on_error=False)
    verdict = _verdict(result, "comp0_rules")
    assert not verdict.passed and "NOT_Y_UP" in verdict.metadata["rules_failed"].value
    assert not result.success  # blocking: the run fails on it


# broken files, one rule each

def _ply(pipeline) -> bytes:
    store, key, _ = pipeline
    return store.artifacts().load(key, "comp0_splat")[1]


def test_comp0_rules(pipeline):
    good = _ply(pipeline)
    header_end = good.index(b"end_header\n") + len(b"end_header\n")
    header, body = good[:header_end], bytearray(good[header_end:])
    assert check_comp0(header.replace(b"f_dc_1", b"f_dc_9") + body, "y_up").rules == ["PLY_FIELDS_MISSING"]
    body[0:4] = np.float32(np.nan).tobytes()
    assert check_comp0(header + bytes(body), "y_up").rules == ["PLY_NOT_FINITE"]
    assert check_comp0(good, "y_down").rules == ["NOT_Y_UP"]
    assert check_comp0(good, "y_up", max_bytes=len(good) - 1).rules == ["PLY_SIZE_EXCEEDED"]
    assert check_comp0(good[: header_end + 100], "y_up").rules == ["PLY_UNREADABLE"]
    assert check_comp0(b"GIF89a", "y_up").rules == ["PLY_UNREADABLE"]


def test_comp1_rules(pipeline):
    store, key, _ = pipeline
    good = store.artifacts().load(key, "comp1_mesh")[1]
    mesh = trimesh.load(io.BytesIO(good), file_type="glb", force="mesh")
    assert check_comp1(good).ok
    two = trimesh.Scene([mesh, mesh.copy().apply_translation([0.05, 0, 0])]).export(file_type="glb")
    assert check_comp1(two).rules == ["NOT_ONE_MESH"]
    assert check_comp1(mesh.copy().apply_scale(1.3).export(file_type="glb")).rules == ["BOUNDS_EXCEEDED"]
    turned = trimesh.Scene()
    turned.add_geometry(mesh.copy().apply_scale(0.5), transform=trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    assert check_comp1(turned.export(file_type="glb")).rules == ["NOT_Y_UP"]
    assert check_comp1(good, max_bytes=len(good) - 1).rules == ["GLB_SIZE_EXCEEDED"]
    assert check_comp1(good[:200]).rules == ["GLB_UNREADABLE"]
    assert check_comp1(json.dumps({"asset": 1}).encode()).rules == ["GLB_UNREADABLE"]


def test_the_comp2_limits_are_configurable_and_block(pipeline):
    """The same module against a vertex limit of 100 (the resource's comp2_rules, set in the run config)."""
    _, _, results = pipeline
    verdict = _verdict(results["comp2_tight"], "comp2_rules")
    assert not verdict.passed and verdict.metadata["rules_failed"].value == "VERTEX_LIMIT_EXCEEDED"
    assert "(limit 100)" in verdict.metadata["failures"].value
    assert not results["comp2_tight"].success
