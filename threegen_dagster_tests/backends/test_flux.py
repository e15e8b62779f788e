"""The FLUX backend, run for real on a tiny randomly initialised FLUX pipeline built locally.

The pipeline is loaded through ``FluxTextToImage`` (the real ``FluxPipeline.from_pretrained``) on CPU
in float32; the hub is switched off, so nothing here touches the network.
"""

import numpy as np
import pytest

from threegen_dagster.backends.flux import FluxConfig, FluxTextToImage, round_size
from threegen_dagster.backends.gpu import BackendError

SIZE = 70  # rounds down to 64
STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        hub = pytest.importorskip("huggingface_hub.constants")
        mp.setattr(hub, "HF_HUB_OFFLINE", True)  # read once at import, so the env alone is too late
        yield


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from threegen_dagster_tests.tiny_flux import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("tiny-flux"))


def config(folder, **kw) -> FluxConfig:
    return FluxConfig(**{"model": str(folder), "steps": STEPS, "size": SIZE, "dtype": "float32",
                         "device": "cpu", "max_sequence_length": 32, **kw})


@pytest.fixture(scope="module")
def flux(tiny_flux):
    backend = FluxTextToImage(config(tiny_flux))
    backend.load()
    yield backend
    backend.unload()


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("n, side", [(64, 64), (70, 64), (79, 64), (80, 80), (1024, 1024), (1039, 1024),
                                     (2048, 2048), (2063, 2048)])
def test_round_size(n, side):
    assert round_size(n) == side


@pytest.mark.parametrize("n", [0, 48, 63, 2064, 4096])
def test_round_size_refuses_out_of_range(n):
    with pytest.raises(BackendError, match=f"size {n}"):
        round_size(n)


@pytest.mark.parametrize("kw, words", [({"variant": "pro"}, "variant"), ({"dtype": "int8"}, "dtype"),
                                       ({"size": 32}, "size"), ({"steps": 0}, "steps"),
                                       ({"prompt_template": "a 3D render"}, "prompt")])
def test_bad_config_is_refused(kw, words):
    with pytest.raises(BackendError, match=words):
        FluxConfig(**kw)


def test_variant_defaults_and_overrides():
    schnell, dev = FluxTextToImage(FluxConfig()), FluxTextToImage(FluxConfig(variant="dev", size=1000))
    assert (schnell.steps, schnell.guidance, schnell.max_sequence_length, schnell.size) == (4, 0.0, 256, 1024)
    assert (dev.steps, dev.guidance, dev.max_sequence_length, dev.size) == (28, 3.5, 512, 992)
    custom = FluxTextToImage(FluxConfig(variant="dev", steps=10, guidance=2.0))
    assert (custom.steps, custom.guidance) == (10, 2.0)
    assert not schnell.loaded  # nothing is loaded until asked


def test_generates_an_rgb_square(flux):
    image = flux("a red ceramic mug", seed=1)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert pixels(image).std() > 1  # a real decoded image, not a flat fill
    assert flux.last_stats["seconds"] > 0


def test_same_seed_same_pixels_other_seed_differs(flux):
    a, b = flux("a red ceramic mug", seed=7), flux("a red ceramic mug", seed=7)
    c = flux("a red ceramic mug", seed=8)
    assert np.array_equal(pixels(a), pixels(b))
    assert np.abs(pixels(a) - pixels(c)).mean() > 1


def test_the_prompt_reaches_the_model(flux):
    a, b = flux("a red ceramic mug", seed=3), flux("a wooden chair", seed=3)
    assert not np.array_equal(pixels(a), pixels(b))


def test_template_is_applied_and_braces_in_prompts_are_literal(tiny_flux, flux):
    assert flux.prompt_text("a {weird} cup") == (
        "a {weird} cup, 3D render, single object, centred, plain white background")
    assert flux("a {weird} cup {0} {}", seed=2).size == (64, 64)
    bare = FluxTextToImage(config(tiny_flux, prompt_template="{prompt}"))
    assert bare.prompt_text("a {weird} cup") == "a {weird} cup"
    # the default template changes what the model sees, so the image too
    assert not np.array_equal(pixels(bare("a mug", seed=4)), pixels(flux("a mug", seed=4)))


def test_describe(tiny_flux, flux):
    assert flux.describe() == {
        "backend": "flux", "model": str(tiny_flux), "revision": "local", "variant": "schnell",
        "steps": STEPS, "guidance": 0.0, "max_sequence_length": 32, "size": 64, "dtype": "float32",
        "device": "cpu", "cpu_offload": False}


def test_load_is_idempotent(flux):
    pipe = flux._pipe
    flux.load()
    assert flux.loaded and flux._pipe is pipe


def test_unload_then_generate_loads_again_with_the_same_result(tiny_flux):
    backend = FluxTextToImage(config(tiny_flux))
    before = pixels(backend("a lamp", seed=5))  # the call loads on demand
    assert backend.loaded
    backend.unload()
    assert not backend.loaded and backend._pipe is None
    assert np.array_equal(pixels(backend("a lamp", seed=5)), before)
    assert backend.loaded


def test_missing_model_folder_names_it(tiny_flux, tmp_path):
    missing = tmp_path / "no-flux-here"
    with pytest.raises(BackendError, match=f"FLUX model folder {missing} not found"):
        FluxTextToImage(config(missing)).load()


def test_folder_that_is_not_a_diffusers_folder(tiny_flux, tmp_path):
    with pytest.raises(BackendError, match="model_index.json"):
        FluxTextToImage(config(tmp_path)).load()


def test_unreachable_hub_id_says_how_to_fix_it(tiny_flux):
    backend = FluxTextToImage(config("threegen-tests/no-such-flux-model"))
    with pytest.raises(BackendError, match="HF_HOME") as err:
        backend.load()
    assert "threegen-tests/no-such-flux-model" in str(err.value)
    assert not backend.loaded
