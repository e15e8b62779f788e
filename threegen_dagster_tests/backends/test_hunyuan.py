"""The Hunyuan3D-2 shape backend, through the real hy3dgen pipeline on a tiny random checkpoint.

The tiny model's shapes are noise: these tests check types, determinism, post-processing and
errors, not geometry.
"""

import importlib.util
import sys

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

torch = pytest.importorskip("torch")
pytest.importorskip("hy3dgen", reason="hy3dgen not installed (the README's GPU section)")

from threegen_dagster.backends import _torchvision_compat as T  # noqa: E402
from threegen_dagster.backends.gpu import BackendError  # noqa: E402
from threegen_dagster.backends.hunyuan import HunyuanConfig, HunyuanShape  # noqa: E402

from ..tiny_hunyuan import build_tiny_hunyuan  # noqa: E402

FAST = dict(steps=3, octree_resolution=16, num_chunks=2000, dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        root = tmp_path_factory.mktemp("hunyuan")
        yield {"random": build_tiny_hunyuan(root / "random"),
               "flat": build_tiny_hunyuan(root / "flat", surface=False)}


@pytest.fixture(scope="module")
def shape(models):
    backend = HunyuanShape(HunyuanConfig(model=str(models["random"]), **FAST))
    backend.load()
    return backend


@pytest.fixture(scope="module")
def cutout() -> Image.Image:
    image = Image.new("RGBA", (128, 128), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((30, 20, 100, 110), fill=(200, 60, 40, 255))
    return image


def test_mesh_is_a_trimesh_with_faces(shape, cutout):
    mesh = shape(cutout, seed=1)
    assert isinstance(mesh, trimesh.Trimesh)
    assert len(mesh.faces) > 0 and mesh.vertices.shape[1] == 3
    assert np.abs(mesh.vertices).max() <= 1.01 + 1e-4  # inside hy3dgen's decoding box


def test_same_seed_same_mesh_other_seed_other_mesh(shape, cutout):
    a, b, c = shape(cutout, seed=5), shape(cutout, seed=5), shape(cutout, seed=2)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    assert a.vertices.shape != c.vertices.shape or not np.array_equal(a.vertices, c.vertices)


def test_face_reducer_caps_the_face_count(models, cutout):
    config = dict(FAST, remove_floaters=False, remove_degenerate=False)
    raw = HunyuanShape(HunyuanConfig(model=str(models["random"]), max_faces=0, **config))(cutout, 1)
    reduced = HunyuanShape(HunyuanConfig(model=str(models["random"]), max_faces=300, **config))(cutout, 1)
    assert len(raw.faces) > 600
    # quadric decimation that preserves topology lands near the target, not exactly on it
    assert 0 < len(reduced.faces) <= 1.25 * 300 < len(raw.faces) / 2


def test_describe(shape):
    info = shape.describe()
    assert info["backend"] == "hunyuan3d-2"
    assert {k: info[k] for k in ("subfolder", "steps", "guidance", "octree_resolution", "dtype", "device")} == {
        "subfolder": "hunyuan3d-dit-v2-0", "steps": 3, "guidance": 5.0, "octree_resolution": 16,
        "dtype": "float32", "device": "cpu"}
    assert info["model"].endswith("random")
    if importlib.util.find_spec("torchvision") is None:
        assert info["torchvision"] == "compat shim"
    else:
        assert info["torchvision"][0].isdigit()  # the real one's version


def test_load_is_idempotent_and_unload_reloads(models, cutout):
    backend = HunyuanShape(HunyuanConfig(model=str(models["random"]), **FAST))
    assert not backend.loaded
    backend.load()
    pipeline = backend._pipeline
    backend.load()
    assert backend._pipeline is pipeline
    backend.unload()
    assert not backend.loaded
    assert len(backend(cutout, seed=1).faces) > 0  # loads again on demand
    assert backend.loaded


def test_no_surface_is_a_clear_error(models, cutout):
    flat = HunyuanShape(HunyuanConfig(model=str(models["flat"]), **FAST))
    with pytest.raises(BackendError, match="found no surface.*try another seed"):
        flat(cutout, seed=0)


def test_transparent_image_is_a_clear_error(shape):
    with pytest.raises(BackendError, match="fully transparent"):
        shape(Image.new("RGBA", (64, 64), (0, 0, 0, 0)), seed=0)


def test_missing_folder_names_the_path_and_files(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(BackendError, match=r"no-such-model/hunyuan3d-dit-v2-0.*config\.yaml"):
        HunyuanShape(HunyuanConfig(model=str(missing), **FAST)).load()


def test_folder_without_weights_names_the_weight_files(models, tmp_path):
    folder = tmp_path / "hunyuan3d-dit-v2-0"
    folder.mkdir()
    (folder / "config.yaml").write_text((models["random"] / "hunyuan3d-dit-v2-0" / "config.yaml").read_text())
    with pytest.raises(BackendError, match=r"no weights: expected model\.fp16\.safetensors or model\.fp16\.ckpt"):
        HunyuanShape(HunyuanConfig(model=str(tmp_path), **FAST)).load()


def test_shim_is_gone_after_import(shape):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("a real torchvision is installed")
    assert "torchvision" not in sys.modules and "torchvision.transforms" not in sys.modules
    from transformers.utils.import_utils import is_torchvision_available

    assert not is_torchvision_available()


# The shim's transforms, against torchvision's semantics: PIL's bilinear filter is what torchvision's
# antialiased tensor resize reproduces; crop offsets and the shorter-edge rule are torchvision's.

@pytest.mark.parametrize("hw,size,expected", [((512, 512), 518, (518, 518)), ((512, 512), 28, (28, 28)),
                                              ((300, 200), 224, (336, 224)), ((200, 301), 97, (97, 145))])
def test_shim_resize_matches_pil_bilinear(hw, size, expected):
    image = np.random.default_rng(0).random(hw, dtype=np.float32)
    out = T.Resize(size, T.InterpolationMode.BILINEAR, antialias=True)(torch.from_numpy(image)[None, None])
    assert out.shape[-2:] == expected
    pil = Image.fromarray(image, mode="F").resize(expected[::-1], Image.BILINEAR)
    np.testing.assert_allclose(out[0, 0].numpy(), np.asarray(pil), atol=1e-4)


def test_shim_center_crop_and_normalize():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).view(2, 3, 5, 7)
    crop = T.CenterCrop(3)(x)
    assert crop.shape == (2, 3, 3, 3)
    assert torch.equal(crop, x[..., 1:4, 2:5])
    assert torch.equal(T.CenterCrop(4)(x), x[..., 0:4, 2:6])  # round(0.5) = 0, round(1.5) = 2
    padded = T.CenterCrop(9)(x)
    assert padded.shape == (2, 3, 9, 9) and torch.equal(padded[..., 2:7, 1:8], x)
    out = T.Compose([T.Normalize([0.5, 0.4, 0.3], [0.2, 0.3, 0.4])])(x)
    assert torch.allclose(out[:, 1], (x[:, 1] - 0.4) / 0.3)
    assert torch.equal(x[0, 0, 0], torch.arange(7, dtype=torch.float32))  # not in place


def test_a_hub_id_at_a_pinned_revision_loads_that_snapshot_and_names_its_commit(models, cutout, tmp_path, monkeypatch):
    """THREEGEN_HUNYUAN_REVISION: the hub id's snapshot at that tag from the Hugging Face cache (laid out as the
    hub's client writes it; HF_HUB_OFFLINE and HF_HUB_CACHE as the environment sets them at start-up)."""
    import shutil

    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-hunyuan"
    shutil.copytree(models["random"] / "hunyuan3d-dit-v2-0", repo / "snapshots" / commit / "hunyuan3d-dit-v2-0")
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HY3DGEN_MODELS", str(tmp_path / "nothing-here"))

    pinned = HunyuanShape(HunyuanConfig(model="acme/tiny-hunyuan", revision="v1", **FAST))
    assert len(pinned(cutout, seed=1).faces) > 0
    assert pinned.describe()["revision"] == commit and pinned.describe()["model"] == "acme/tiny-hunyuan"
    with pytest.raises(BackendError, match=r"cannot fetch Hunyuan3D-2 'acme/tiny-hunyuan' at revision 'v2'.*hf download"):
        HunyuanShape(HunyuanConfig(model="acme/tiny-hunyuan", revision="v2", **FAST)).load()
