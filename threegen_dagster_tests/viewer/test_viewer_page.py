"""The viewer page's bytes, without a browser: vendored modules intact and self-resolving, the
generation's files embedded exactly, hostile text escaped, fallbacks and bounds named on the page."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil

import pytest
import zstandard

from threegen_dagster.artifacts import ArtifactStore
from threegen_dagster.ledger import Ledger, UnknownGeneration
from threegen_dagster.retention import RetentionPolicy, apply_retention
from threegen_dagster.storage import LocalStore
from threegen_dagster.viewer import ViewerData, load_generation, render_page, viewer_html
from threegen_dagster.viewer.source import Shown
from threegen_dagster.viewer.vendor_modules import MODULES, VendorError, bare_imports, check_sums, import_map


def embedded(page: str, element_id: str) -> bytes:
    match = re.search(rf'<script type="application/octet-stream" id="{element_id}"[^>]*>([^<]*)</script>', page)
    return base64.b64decode(match[1])


def test_vendored_files_match_their_sums_and_every_import_resolves_to_a_vendored_module() -> None:
    assert set(MODULES.values()) <= set(check_sums())
    modules = json.loads(import_map())["imports"]
    assert set(modules) == set(MODULES)
    for spec, url in modules.items():
        source = base64.b64decode(url.removeprefix("data:text/javascript;base64,")).decode()
        imported = re.findall(r"""(?:\bfrom\s*|\bimport\s*)["']([^"'\s]+)["']""", source)
        # what a data: module imports: only bare specifiers the map holds (comments show examples too)
        assert not [s for s in imported if s.startswith(".")], spec
    three = base64.b64decode(modules["three"].split(",", 1)[1]).decode()
    assert 'from"three/build/three.core.min.js"' in three and "./three.core.min.js" not in three


def test_a_relative_import_of_something_not_vendored_is_refused() -> None:
    source = 'import { x } from "../utils/Missing.js";\nexport const y = x;'
    with pytest.raises(VendorError, match=r"imports '../utils/Missing.js' \(three/examples/jsm/utils/Missing.js\), "
                                          r"which is not vendored"):
        bare_imports("three/examples/jsm/loaders/Other.js", source)
    assert bare_imports("three/examples/jsm/loaders/GLTFLoader.js", "import{a}from'../utils/BufferGeometryUtils.js'") \
        == "import{a}from'three/addons/utils/BufferGeometryUtils.js'"


def test_the_page_embeds_the_latest_files_exactly(red_mug) -> None:
    page = viewer_html(red_mug.artifacts, red_mug.ledger, red_mug.key).decode()
    glb = red_mug.artifacts.load(red_mug.key, "refined_mesh")[1]
    sn17 = red_mug.artifacts.load(red_mug.key, "compressed_splat")[1]
    png = red_mug.artifacts.load(red_mug.key, "generated_image")[1]
    assert embedded(page, "mesh-data") == glb
    # the submitted splat, its payload unchanged, as the Niantic SPZ Spark reads
    assert gzip.decompress(embedded(page, "splat-data")) == zstandard.ZstdDecompressor().decompress(sn17)
    assert 'id="splat-data" data-type="spz"' in page
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert "generated_image v1, refined_mesh v1, compressed_splat v1, SN17 SPZ as Niantic SPZ" in page
    assert '<body data-frame="y_up"' in page
    # nothing the page could fetch: every src/href is a data: URL, and the CSP forbids the rest
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []
    assert "default-src 'none'" in page


def test_hostile_prompt_text_is_escaped_and_never_filled_in_again(tmp_path) -> None:
    hostile = 'a mug</script><script>alert(1)</script> @@SCRIPT@@ "quoted" & <b>bold</b>'
    data = ViewerData(key="a-mug-0123456789-s1", prompt=hostile, seed=1,
                      score={"score": 0.5, "passed": False, "kind": "<img src=x>", "parts": {"<i>": 1.0}})
    page = render_page(data).decode()
    assert page.count("<script") == 5  # import map, two data elements, the module, and no other
    assert "@@" not in page.replace("@@SCRIPT@@ &quot;quoted&quot;", "")
    assert "a mug&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; @@SCRIPT@@ &quot;quoted&quot; &amp; " \
           "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<img src=x>" not in page and "&lt;img src=x&gt;" in page and "&lt;i&gt;" in page
    assert '<td class="fail">False</td>' in page
    assert embedded(page, "mesh-data") == b"" and "no score stored" not in page


def test_a_slimmed_generation_still_shows_its_splat(red_mug, tmp_path) -> None:
    shutil.copytree(red_mug.root / "store", tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    artifacts, ledger = ArtifactStore(store), Ledger(store)
    apply_retention(artifacts, ledger, RetentionPolicy(), now=ledger.get(red_mug.key).created_at + 49 * 3600)
    data = load_generation(artifacts, ledger, red_mug.key)
    assert (data.image, data.mesh) == (None, None)
    assert data.splat.label == "compressed_splat v1, SN17 SPZ as Niantic SPZ" and data.splat.file_type == "spz"
    assert data.problems == [f"{asset} v1 was pruned by retention" for asset in
                             ("generated_image", "foreground_image", "refined_mesh", "initial_mesh")]
    assert data.score["score"] == json.loads(red_mug.artifacts.load(red_mug.key, "validation_score")[1])["score"]
    assert data.frame == "y_up"  # from the pruned PLY's record


def test_files_over_the_embedding_bound_are_named_and_never_read(red_mug, tmp_path) -> None:
    shutil.copytree(red_mug.root / "store", tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    artifacts = ArtifactStore(store)
    ply = artifacts.latest(red_mug.key, "gaussian_splat")
    (tmp_path / "store" / ply.blob).unlink()  # never read: a missing blob would be an error if it were
    payload = 16 + 20_000 * 19  # what the SPZ unwraps to: header, 19 bytes a gaussian (SH degree 0)
    data = load_generation(artifacts, Ledger(store), red_mug.key, max_embed_bytes=payload - 1)
    meshes = [artifacts.latest(red_mug.key, asset) for asset in ("refined_mesh", "initial_mesh")]
    assert data.splat is None and data.mesh is None and data.image.asset == "generated_image"
    assert data.problems == [
        *[f"{m.asset} v1 is {m.bytes:,} bytes, over the {payload - 1:,} a page embeds: "
          f"`threegen get {red_mug.key} {m.asset}`" for m in meshes],
        f"compressed_splat v1 cannot be shown: its payload is {payload:,} bytes, over the {payload - 1:,} a page "
        f"embeds",
        f"gaussian_splat v1 is {ply.bytes:,} bytes, over the {payload - 1:,} a page embeds: "
        f"`threegen get {red_mug.key} gaussian_splat`"]
    data = load_generation(artifacts, Ledger(store), red_mug.key, max_embed_bytes=payload)
    assert len(gzip.decompress(data.splat.data)) == payload and len(data.problems) == 2  # the meshes


def test_a_damaged_piece_is_named_and_the_rest_is_shown(red_mug, tmp_path) -> None:
    shutil.copytree(red_mug.root / "store", tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    artifacts = ArtifactStore(store)
    blob = tmp_path / "store" / artifacts.latest(red_mug.key, "compressed_splat").blob
    size = blob.write_bytes(b"\x00\x00\x00\x00" + blob.read_bytes()[4:])  # same size, other bytes
    data = load_generation(artifacts, Ledger(store), red_mug.key)
    assert data.splat.label == "gaussian_splat v1" and data.splat.file_type == "ply"
    assert data.splat.data == red_mug.artifacts.load(red_mug.key, "gaussian_splat")[1]
    assert data.mesh.asset == "refined_mesh" and len(data.problems) == 1
    assert data.problems[0].startswith(f"compressed_splat: compressed_splat v1 of {red_mug.key}: blob ")
    assert f"is corrupt: its {size:,} bytes hash to" in data.problems[0]


def test_an_unknown_generation_is_refused(red_mug) -> None:
    with pytest.raises(UnknownGeneration, match="no generation 'a-cup-0123456789-s1' in the ledger"):
        viewer_html(red_mug.artifacts, red_mug.ledger, "a-cup-0123456789-s1")


def test_the_page_names_what_it_shows_and_the_splat_frame() -> None:
    image = Shown(b"\x89PNG not decoded here", "foreground_image", 2)
    splat = Shown(b"ply", "compressed_splat", 3, "SN17 SPZ decoded to PLY")
    page = render_page(ViewerData(key="a-cup-0123456789-s1", prompt="[image 0123abcd] a cup", seed=1, image=image,
                                  splat=splat, frame="y_down", problems=["refined_mesh v1 was pruned by retention"]))
    page = page.decode()
    assert '<body data-frame="y_down"' in page and 'alt="foreground_image v2"' in page
    assert "<h2>splat (compressed_splat v3, SN17 SPZ decoded to PLY)</h2>" in page
    assert '<p class="note problem">refined_mesh v1 was pruned by retention</p>' in page
    assert embedded(page, "splat-data") == b"ply" and "<h1>[image 0123abcd] a cup</h1>" in page


def test_the_same_page_from_a_local_or_an_s3_store(red_mug, store) -> None:
    """The page reads the store through its interface: the red mug's objects copied into a fresh
    local folder or an S3 prefix (the test S3 server) give the same page, byte for byte."""
    copied = [info.path for top in ("blobs", "generations", "ledger") for info in red_mug.store.list(top)]
    for path in copied:
        store.write(path, red_mug.store.read(path))
    assert len(copied) > 10
    assert viewer_html(ArtifactStore(store), Ledger(store), red_mug.key) == \
        viewer_html(red_mug.artifacts, red_mug.ledger, red_mug.key)
