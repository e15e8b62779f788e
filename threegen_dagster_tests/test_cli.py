"""The `threegen` commands a person runs on a store, on one real generation from an image prompt:
generate --image, catalog (text and JSON), keep and --off, versions --json, get of one asset to
stdout and of a whole generation to a folder, stats as text. Run in process through ``cli.main``."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from threegen_dagster import cli
from threegen_dagster.artifacts import EXTENSIONS
from threegen_dagster.catalog import STAGES
from threegen_dagster.ledger import Ledger
from threegen_dagster.storage import LocalStore


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A folder with a store holding one complete generation of an image prompt, and its report."""
    root = tmp_path_factory.mktemp("cli")
    pixels = np.full((96, 120, 3), 245, np.uint8)
    pixels[20:76, 30:90] = (190, 30, 40)  # a red block on white
    Image.fromarray(pixels, "RGB").save(root / "mug.png")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("DAGSTER_HOME", raising=False)
        patch.setenv("THREEGEN_GAUSSIANS", "8000")
        code, report = run(["generate", "--image", "mug.png", "--seed", "1", "a red mug", "--json"])
    assert code == 0, report
    return root, json.loads(report), pixels


def run(argv: list[str]) -> tuple[int, str]:
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()


@pytest.fixture
def here(generated, monkeypatch):
    root, report, pixels = generated
    monkeypatch.chdir(root)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return root, report, pixels


def test_generate_from_an_image_prompt(here) -> None:
    root, report, pixels = here
    key = report["key"]
    assert report["success"] and key.startswith("img-a-red-mug-") and key.endswith("-s1")
    stored = Image.open(Path(report["stages"]["generated_image"]["file"]))
    assert np.array_equal(np.asarray(stored.convert("RGB")), pixels)  # the prompt image is the first stage
    assert set(report["stages"]) == set(STAGES)


def test_catalog_as_a_table_and_as_json(here) -> None:
    root, report, _ = here
    code, text = run(["catalog"])
    assert code == 0 and text.splitlines()[0].startswith("|") and report["key"] in text and "complete" in text
    code, text = run(["catalog", "--json"])
    rows = json.loads(text)
    assert code == 0 and [r["key"] for r in rows] == [report["key"]] and rows[0]["status"] == "complete"
    assert rows[0]["gaussians"] == 8000 and rows[0]["score"] == report["score"]["score"]


def test_keep_and_keep_off(here) -> None:
    root, report, _ = here
    ledger = Ledger(LocalStore(root / "artifacts"))
    assert run(["keep", report["key"]]) == (0, f"{report['key']}: kept by retention\n")
    assert ledger.get(report["key"]).keep
    assert run(["keep", report["key"], "--off"]) == (0, f"{report['key']}: no longer kept by retention\n")
    assert not ledger.get(report["key"]).keep


def test_versions_as_json(here) -> None:
    root, report, _ = here
    code, text = run(["versions", report["key"], "--json"])
    versions = json.loads(text)
    assert code == 0 and sorted(v["asset"] for v in versions) == sorted(STAGES)
    for v in versions:
        blob = Path(v["blob"])
        assert v["version"] == 1 and v["key"] == report["key"] and v["format"] == EXTENSIONS[v["asset"]]
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == v["sha256"] and blob.stat().st_size == v["bytes"]


def test_get_one_asset_to_stdout(here, capsysbinary) -> None:
    root, report, _ = here
    assert cli.main(["get", report["key"], "validation_score", "-o", "-"]) == 0
    score = json.loads(capsysbinary.readouterr().out)
    assert score["score"] == report["score"]["score"] and score["kind"] == "proxy"


def test_get_a_whole_generation_into_a_folder(here) -> None:
    root, report, _ = here
    code, text = run(["get", report["key"], "-o", "all"])
    files = {p.name: p.read_bytes() for p in (root / "all").iterdir()}
    assert code == 0 and sorted(text.split()) == sorted(str(Path("all") / name) for name in files)
    assert sorted(files) == sorted([f"{asset}.{EXTENSIONS[asset]}" for asset in STAGES] + ["viewer.html"])
    for asset, stage in report["stages"].items():
        assert files[f"{asset}.{EXTENSIONS[asset]}"] == Path(stage["file"]).read_bytes()


def test_stats_as_text(here) -> None:
    root, report, _ = here
    code, text = run(["stats"])
    lines = text.splitlines()
    # the seven stages (the initial mesh with its PLY: 8 blobs), from the catalog index; the catalog is refreshed
    # in place (no table versions); only a full scan (--full) sees blobs that no version refers to
    assert code == 0 and lines[0] == f"store {root / 'artifacts'}: 1 generations, 7 versions, 8 blobs"
    assert "unreferenced blobs: see --full" in lines[1] and "MISSING" not in text
    code, full = run(["stats", "--full"])
    assert code == 0 and full.splitlines()[0] == lines[0] and "0 unreferenced blobs" in full.splitlines()[1]
    by_asset = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in STAGES}
    assert set(by_asset) == set(STAGES) and all(row[1] == "1" for row in by_asset.values())
    assert any(line.split()[:3] == ["complete", "1", "7"] for line in lines)
