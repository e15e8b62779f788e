"""The rembg backend through rembg's real sessions and onnxruntime, on a tiny generated model
(no download, no mocks). Every test runs with the network cut and rembg's default model folder
pointed at an empty temporary one, so nothing reaches ~/.u2net or the internet."""

import os
import socket

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("rembg")
pytest.importorskip("onnx")

from threegen_dagster.backends.gpu import BackendError
from threegen_dagster.backends.rembg_backend import RembgBackground, RembgConfig
from threegen_dagster_tests.tiny_segmenter import build_blank_segmenter, build_tiny_segmenter

W, H = 96, 128
CPU = ("CPUExecutionProvider",)


@pytest.fixture(scope="module")
def model_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("model-home")
    build_tiny_segmenter(home / "u2netp.onnx")
    return home


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No sockets, and rembg's default homes are an empty temporary folder."""
    def refuse(*_, **__):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    default_home = tmp_path / "default-home"
    for var in ("U2NET_HOME", "REMBG_HOME"):
        monkeypatch.setenv(var, str(default_home))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return default_home


def scene() -> Image.Image:
    """A red disc and a blue block on a near-white background."""
    image = Image.new("RGB", (W, H), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 30, 76, 100), fill=(200, 40, 40))
    draw.rectangle((40, 10, 60, 30), fill=(40, 40, 200))
    return image


def alpha(image: Image.Image) -> np.ndarray:
    return np.asarray(image)[..., 3]


def check_cutout(out: Image.Image) -> None:
    assert out.mode == "RGBA" and out.size == (W, H)
    a = alpha(out)
    assert a[65, 48] > 200 and a[20, 50] > 200  # inside the disc, inside the block
    assert max(a[0].max(), a[-1].max(), a[:, 0].max(), a[:, -1].max()) < 32  # the border is background
    assert (a > 200).mean() > 0.2 and (a < 16).mean() > 0.3


def test_named_model_from_model_home(model_home):
    backend = RembgBackground(RembgConfig(model="u2netp", model_home=str(model_home), providers=CPU))
    first = backend(scene())
    check_cutout(first)
    assert np.array_equal(np.asarray(first), np.asarray(backend(scene())))
    again = RembgBackground(RembgConfig(model="u2netp", model_home=str(model_home)))(scene())
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not (model_home / "models").exists()  # rembg wrote nothing
    assert os.environ["U2NET_HOME"].endswith("default-home")  # restored after load


def test_rembg_default_home(model_home, monkeypatch):
    monkeypatch.setenv("U2NET_HOME", str(model_home))
    backend = RembgBackground(RembgConfig())
    check_cutout(backend(scene()))
    assert backend.describe()["model_file"] == str(model_home / "u2netp.onnx")


def test_custom_model_path(tmp_path):
    path = build_tiny_segmenter(tmp_path / "elsewhere" / "my-segmenter.onnx", seed=3)
    backend = RembgBackground(RembgConfig(model_path=str(path), providers=CPU))
    check_cutout(backend(scene()))
    info = backend.describe()
    assert info["model"] == "u2net_custom" and info["model_file"] == str(path)


def test_describe(model_home):
    import onnxruntime

    backend = RembgBackground(RembgConfig(model="u2netp", model_home=str(model_home)))
    assert backend.describe()["providers"] == [] and not backend.loaded
    backend.load()
    info = backend.describe()
    assert info["backend"] == "rembg" and info["model"] == "u2netp"
    assert info["model_file"] == str(model_home / "u2netp.onnx")
    assert info["providers"] and set(info["providers"]) <= set(onnxruntime.get_available_providers())
    assert info["device"] == ("cuda" if "CUDAExecutionProvider" in info["providers"] else "cpu")
    pinned = RembgBackground(RembgConfig(model="u2netp", model_home=str(model_home), providers=CPU))
    pinned.load()
    assert pinned.describe()["providers"] == ["CPUExecutionProvider"]


def test_load_is_idempotent(model_home):
    backend = RembgBackground(RembgConfig(model="u2netp", model_home=str(model_home), providers=CPU))
    backend.load()
    session = backend._session
    backend.load()
    backend(scene())
    assert backend._session is session and backend.loaded
    backend.unload()
    assert not backend.loaded
    backend.load()
    assert backend.loaded and backend._session is not session


def test_missing_weights_fail_before_any_download(model_home, offline):
    with pytest.raises(BackendError, match=r"rembg model 'u2net' not found at .*u2net\.onnx") as err:  # only u2netp.onnx is in the home
        RembgBackground(RembgConfig(model="u2net", model_home=str(model_home))).load()
    message = str(err.value)
    assert str(model_home / "u2net.onnx") in message and "not found" in message
    assert "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx" in message
    assert "rembg d u2net" in message
    assert not (model_home / "models").exists()

    with pytest.raises(BackendError, match="not found") as err:  # rembg's default home, empty
        RembgBackground(RembgConfig(model="isnet-general-use")).load()
    assert str(offline / "isnet-general-use.onnx") in str(err.value)
    assert not offline.exists()


def test_missing_model_path(tmp_path):
    with pytest.raises(BackendError, match="does not exist") as err:
        RembgBackground(RembgConfig(model_path=str(tmp_path / "nope.onnx"))).load()
    assert str(tmp_path / "nope.onnx") in str(err.value)


@pytest.mark.parametrize("model, why", [("u2netq", "no model 'u2netq'.*u2netp"),
                                        ("withoutbg", "remote service"),
                                        ("sam", "prompt"),
                                        ("u2net_cloth_seg", "garment"),
                                        ("u2net_custom", "needs model_path")])
def test_unusable_model_names(model_home, model, why):
    with pytest.raises(BackendError, match=why):
        RembgBackground(RembgConfig(model=model, model_home=str(model_home))).load()


def test_unavailable_provider(model_home):
    with pytest.raises(BackendError, match="NopeExecutionProvider"):
        RembgBackground(RembgConfig(model_home=str(model_home), providers=("NopeExecutionProvider",))).load()


def test_already_transparent_passes_through_without_a_model():
    image = scene().convert("RGBA")
    image.putalpha(0)
    ImageDraw.Draw(image).ellipse((20, 30, 76, 100), fill=(200, 40, 40, 255))
    backend = RembgBackground(RembgConfig(model="u2net"))  # whose weights are missing
    out = backend(image)
    assert np.array_equal(np.asarray(out), np.asarray(image)) and out is not image
    assert not backend.loaded


def test_no_foreground_is_an_error(tmp_path):
    path = build_blank_segmenter(tmp_path / "blank.onnx")
    backend = RembgBackground(RembgConfig(model_path=str(path), providers=CPU))
    with pytest.raises(BackendError, match="no foreground"):
        backend(scene())


def test_alpha_matting(model_home):
    backend = RembgBackground(RembgConfig(model_home=str(model_home), alpha_matting=True, providers=CPU))
    check_cutout(backend(scene()))
