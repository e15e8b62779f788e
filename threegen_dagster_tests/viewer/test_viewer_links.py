"""The viewer linked from asset metadata: the score's materialization writes the page next to the
generation's files and links it (a local store: file:// and the `threegen view` URL; S3: a presigned
URL that opens the page), the links never stored in the record, the page rewritten only when it changed."""

from __future__ import annotations

import urllib.request
from urllib.parse import urlsplit

import dagster as dg
import pytest

from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.defs.generation import generations
from threegen_dagster.defs.io_manager import FORMATS, ArtifactIOManager
from threegen_dagster.defs.resources import StoreResource
from threegen_dagster.keys import Prompt
from threegen_dagster.ledger import Ledger
from threegen_dagster.settings import Settings
from threegen_dagster.viewer import viewer_html
from threegen_dagster.viewer.publish import publish_viewer, viewer_path

from ..s3_server import BUCKET
from ..test_io_manager import values
from .test_viewer_server import get


def latest_score_metadata(root, key: str) -> dict:
    with dg.DagsterInstance.from_config(str(root / "dagster")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("validation_score"))
        assert event.asset_materialization.partition == key
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_a_local_generation_links_its_page_as_a_file_and_on_threegen_view(red_mug, view_server) -> None:
    meta = latest_score_metadata(red_mug.root, red_mug.key)
    page = red_mug.root / "store" / "generations" / red_mug.key / "viewer.html"
    assert meta["viewer"] == page.as_uri() and meta["viewer_server"] == f"http://127.0.0.1:8770/g/{red_mug.key}"
    with urllib.request.urlopen(meta["viewer"]) as opened:  # the file:// link opens
        written = opened.read()
    assert written == viewer_html(red_mug.artifacts, red_mug.ledger, red_mug.key)
    assert b'id="score"' in written and b"validation_score v1" not in written  # the score shows, not as a file
    status, _, served = get(view_server, urlsplit(meta["viewer_server"]).path)
    assert status == 200 and served == written
    record = red_mug.artifacts.latest(red_mug.key, "validation_score")
    assert "viewer" not in record.metadata and "viewer_server" not in record.metadata
    assert red_mug.key not in {m.key for m in red_mug.artifacts.all_manifests() if m.asset == "viewer.html"}


def _stored_generation(settings: Settings) -> tuple[StoreResource, str]:
    """A generation whose first six stages are stored (real PNG, GLB, PLY and SPZ bytes)."""
    resource = StoreResource.from_settings(settings)
    entry, _ = resource.ledger().add(Prompt.from_text("a green box"), 5, "cli")
    for asset, value in values().items():
        if asset not in ("validation_score", "generation_catalog"):
            resource.artifacts().record(entry.key, asset, FORMATS[asset].dump(value), FORMATS[asset].ext, "r0")
    return resource, entry.key


def _materialize_score(resource: StoreResource, key: str) -> dict:
    manager = ArtifactIOManager(store=resource)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(generations.name, [key])
        with dg.build_output_context(asset_key=dg.AssetKey("validation_score"), partition_key=key, run_id="r1",
                                     asset_partitions_def=generations, instance=instance) as out:
            manager.handle_output(out, values()["validation_score"])
            return {k: getattr(v, "value", v) for k, v in out.get_logged_metadata().items()}


def test_an_s3_generation_links_a_presigned_page_that_opens(s3_server, s3_prefix, monkeypatch, tmp_path) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("THREEGEN_STORE", f"s3://{BUCKET}/{s3_prefix}")
    settings = Settings.from_env(cwd=tmp_path)
    resource, key = _stored_generation(settings)
    meta = _materialize_score(resource, key)
    link = urlsplit(meta["viewer"])
    assert link.path == f"/{BUCKET}/{s3_prefix}/generations/{key}/viewer.html" and "X-Amz-Signature=" in link.query
    assert f"X-Amz-Expires={settings.presign_seconds}" in link.query
    with urllib.request.urlopen(meta["viewer"], timeout=60) as opened:
        page = opened.read()
        assert opened.headers["content-type"] == "text/html; charset=utf-8"
        assert "attachment" not in (opened.headers["content-disposition"] or "")  # shown, not downloaded
    artifacts = ArtifactStore(resource.store())
    assert page == viewer_html(artifacts, Ledger(resource.store()), key) and b"a green box" in page
    assert "viewer" not in artifacts.latest(key, "validation_score").metadata  # a presigned URL is never stored
    assert publish_viewer(artifacts, Ledger(resource.store()), key) is False  # unchanged: not written again


def test_a_page_that_cannot_be_written_is_a_warning_not_a_failed_step(tmp_path) -> None:
    resource = StoreResource.from_settings(Settings(store=str(tmp_path / "store"), inbox=tmp_path))
    key = "a-cup-0123456789-s1"  # stored without a ledger entry: the page cannot be built
    meta = _materialize_score(resource, key)
    assert meta["viewer"].startswith("not written: UnknownGeneration: no generation 'a-cup-0123456789-s1' in the ledger")
    assert resource.artifacts().latest(key, "validation_score").version == 1  # the score itself is stored
    assert not (tmp_path / "store" / viewer_path(key)).exists()


@pytest.mark.parametrize("change", ["score", "nothing"])
def test_the_page_is_rewritten_only_when_it_changed(tmp_path, change) -> None:
    resource, key = _stored_generation(Settings(store=str(tmp_path / "store"), inbox=tmp_path))
    _materialize_score(resource, key)
    page = tmp_path / "store" / viewer_path(key)
    before = page.stat().st_mtime_ns
    if change == "score":
        resource.artifacts().record(key, "validation_score", b'{"score": 0.1}', "json", "r2")
    wrote = publish_viewer(resource.artifacts(), resource.ledger(), key)
    assert wrote is (change == "score") and (page.stat().st_mtime_ns != before) is wrote
    assert (b"0.1" in page.read_bytes()) is (change == "score")
