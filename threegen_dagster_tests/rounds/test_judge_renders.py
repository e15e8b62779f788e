"""``render_round`` without a browser page: renders kept for the same output bytes are skipped (no Chromium
needed), changed bytes are drawn again, a missing Chromium is a clear note, comp 0 is not drawn. The drawing
itself (one batch for a whole round) is in test_round_e2e.py."""

import io
import json

from PIL import Image

from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.rounds.judge_renders import FILES, render_prefix, render_round
from threegen_dagster.rounds.report import StemOutput
from threegen_dagster.storage import LocalStore

KEY = "round53-0123456789ab-s7"


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def setup(tmp_path, module: bytes):
    store = LocalStore(tmp_path / "store")
    artifacts = ArtifactStore(store)
    manifest = artifacts.record(KEY, "comp2_module", module, "js", run_id="r1", metadata={"passed": True})
    return store, artifacts, manifest, {"stem1": StemOutput("stem1", KEY, manifest.written_at, True, "")}


def keep_renders(store, sha256: str) -> None:
    for name in FILES:
        store.write(f"{render_prefix(KEY)}/{name}", png())
    store.write(f"{render_prefix(KEY)}/renders.json", json.dumps({"sha256": sha256, "three": "183"}).encode())


def test_renders_kept_for_the_same_bytes_are_skipped_without_a_browser(tmp_path):
    store, artifacts, manifest, outputs = setup(tmp_path, b"export default function generate(THREE) {}\n")
    keep_renders(store, manifest.sha256)
    result = render_round(store, artifacts, outputs, 2, chromium=str(tmp_path / "no-chromium"))
    assert (result.rendered, result.skipped, result.failed, result.note) == ([], ["stem1"], {}, "")
    (row,) = result.rows
    assert f"| {KEY} |" in row and "![grid](data:image/png;base64," in row
    assert f"[13 PNGs]({store.uri(render_prefix(KEY) + '/grid.png')})" in row
    # thumbnails are bounded: past `thumbs` rows, the row has no image
    assert "(thumbnail left out)" in render_round(store, artifacts, outputs, 2, chromium="/x", thumbs=0).rows[0]


def test_changed_bytes_or_a_missing_file_are_drawn_again_and_no_chromium_says_so(tmp_path):
    store, artifacts, manifest, outputs = setup(tmp_path, b"export default function generate(THREE) {}\n")
    keep_renders(store, "0" * 64)  # drawn from other bytes
    missing = str(tmp_path / "no-chromium")
    result = render_round(store, artifacts, outputs, 2, chromium=missing)
    assert result.skipped == [] and result.rendered == [] and result.failed == {}
    assert result.note == (f"not rendered: no Chromium at {missing} "
                           "(run scripts/install_browser.sh or set THREEGEN_CHROMIUM)")
    assert result.table() == result.note
    keep_renders(store, manifest.sha256)
    store.delete(f"{render_prefix(KEY)}/gray/front_left.png")  # incomplete: not trusted
    assert render_round(store, artifacts, outputs, 2, chromium=missing).skipped == []


def test_comp0_and_failed_outputs_are_not_drawn(tmp_path):
    store, artifacts, manifest, outputs = setup(tmp_path, b"ply\n")
    assert render_round(store, artifacts, outputs, 0).note == "comp 0 outputs are not drawn by the judge page"
    failed = {"stem1": StemOutput("stem1", KEY, manifest.written_at, False, "S_IMPORT")}
    assert render_round(store, artifacts, failed, 2).note == "no passed output"


def test_an_unreadable_output_is_named_and_the_others_go_on(tmp_path):
    store, artifacts, manifest, outputs = setup(tmp_path, b"export default function generate(THREE) {}\n")
    keep_renders(store, manifest.sha256)
    other = "round53-abcdef012345-s1"
    store.write(f"generations/{other}/comp2_module/v000001.json", b"{not json")
    outputs["stem2"] = StemOutput("stem2", other, manifest.written_at, True, "")
    result = render_round(store, artifacts, outputs, 2, chromium="/x")
    assert result.skipped == ["stem1"] and list(result.failed) == ["stem2"]
    assert result.failed["stem2"].startswith("CorruptRecord: bad record") and other in result.failed["stem2"]
