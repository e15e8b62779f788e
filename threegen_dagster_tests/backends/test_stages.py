"""One name per stage across resource key, registry, worker endpoint and settings; every backend
honours its stage's contract; the registry is data (adding a backend is a class and a row)."""

import inspect

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from threegen_dagster.backends import registry
from threegen_dagster.backends.gpu import BackendError
from threegen_dagster.backends.registry import BACKENDS, STAGE_BACKENDS, backend_class, engine
from threegen_dagster.backends.stages import STAGES, Engine, TextToImage
from threegen_dagster.definitions import build_definitions
from threegen_dagster.settings import Settings, SettingsError, models_from_env
from threegen_dagster.worker import BODIES


def test_every_layer_names_the_same_stages() -> None:
    assert list(STAGES) == list(BACKENDS) == list(BODIES) == list(STAGE_BACKENDS)


@pytest.mark.parametrize("stage, backend", [(s, b) for s, table in BACKENDS.items() for b in table])
def test_each_backend_is_its_stages_contract_under_its_own_name(stage, backend) -> None:
    cls = backend_class(stage, backend)
    assert issubclass(cls, STAGES[stage].contract) and cls.stage == stage and cls.name == backend
    assert not inspect.isabstract(cls), f"{cls.__name__} leaves part of the {stage} contract out"
    assert set(cls.env) <= set(cls.option_names()), "every variable it reads is one of its options"


def test_the_definitions_wire_each_stage_under_its_name_to_its_asset(tmp_path) -> None:
    defs = build_definitions(Settings(store=str(tmp_path / "a"), inbox=tmp_path / "i"))
    graph = defs.resolve_asset_graph()
    for stage in STAGES.values():
        resource = defs.resources[stage.name]
        assert resource.stage == stage.name and resource.backend == next(iter(BACKENDS[stage.name]))
        node = graph.get(dg.AssetKey(stage.asset))
        assert stage.name in node.assets_def.required_resource_keys


def test_each_contract_is_one_typed_call() -> None:
    procedural = engine("text_to_image", "procedural", {"size": 64})
    image = procedural("a red mug", 3)
    assert image.size == (64, 64) and image.mode == "RGB"
    cut = engine("background", "flood_fill")(procedural("a red mug", 3))
    assert cut.mode == "RGBA" and np.asarray(cut)[..., 3].min() == 0


def test_unknown_backends_and_options_are_refused_by_name() -> None:
    with pytest.raises(BackendError, match=r"no backend 'dall-e' for text_to_image: one of procedural, flux"):
        engine("text_to_image", "dall-e")
    with pytest.raises(BackendError, match=r"no stage 'paint': one of text_to_image, background"):
        engine("paint", "procedural")
    with pytest.raises(BackendError, match=r"refine backend 'decimate' has no option 'faces' \(its options: "
                                           r"target_faces, smoothing_iterations\)"):
        engine("refine", "decimate", {"faces": 10})
    with pytest.raises(BackendError, match=r"procedural size 32: use 64 to 2048 pixels"):
        engine("text_to_image", "procedural", {"size": 32})


def test_a_stage_resource_checks_its_stage_backend_and_option_names() -> None:
    from threegen_dagster.defs.resources import StageResource

    with pytest.raises(ValueError, match=r"text_to_image backend 'flux' has no option flux_model \(its options: model,"):
        StageResource(stage="text_to_image", backend="flux", options={"flux_model": "x"})
    with pytest.raises(ValueError, match=r"no backend 'bpt2' for refine: one of decimate, bpt"):
        StageResource(stage="refine", backend="bpt2")
    with pytest.raises(ValueError, match=r"no stage 'paint': one of text_to_image, background"):
        StageResource(stage="paint", backend="procedural")
    for stage, contract in ((s.name, s.contract) for s in STAGES.values()):  # each signature is its contract's
        assert list(inspect.signature(contract.__call__).parameters)[0] == "self"
        assert inspect.isabstract(contract) and contract.__call__ is not Engine.__call__


def test_settings_read_each_backends_declared_variables() -> None:
    env = {"THREEGEN_SCORER": "validation_server", "THREEGEN_VALIDATION_URL": "http://10.0.0.2:8094",
           "THREEGEN_VALIDATION_TIMEOUT": "30", "THREEGEN_TEXT_TO_IMAGE": "flux", "THREEGEN_FLUX_OFFLOAD": "yes",
           "THREEGEN_FLUX_STEPS": "2"}
    models = models_from_env(env)
    assert models["score"] == ("validation_server", {"url": "http://10.0.0.2:8094", "timeout_s": 30.0})
    assert models["text_to_image"] == ("flux", {"steps": 2, "cpu_offload": True})
    assert models["refine"] == ("decimate", {})
    built = engine("score", *models["score"], load=False)  # the options are the backend's own names
    assert built.describe()["model"] == "SN17 validation server at http://10.0.0.2:8094"
    with pytest.raises(SettingsError, match=r"THREEGEN_REFINER='bpt3': one of decimate, bpt"):
        models_from_env({"THREEGEN_REFINER": "bpt3"})
    with pytest.raises(SettingsError, match=r"THREEGEN_FLUX_STEPS='two' is not a int"):
        models_from_env({"THREEGEN_TEXT_TO_IMAGE": "flux", "THREEGEN_FLUX_STEPS": "two"})


class Sepia(TextToImage):
    """A backend added the documented way: a subclass of the contract, then one registry row."""

    name, model = "sepia", "a flat sepia square"
    env = {"size": ("THREEGEN_SEPIA_SIZE", int)}

    def __init__(self, size: int = 16) -> None:
        self.size = size

    def __call__(self, prompt: str, seed: int) -> Image.Image:
        return Image.new("RGB", (self.size, self.size), (112, 66, 20))


def test_a_new_backend_is_a_class_and_one_row(monkeypatch) -> None:
    monkeypatch.setitem(BACKENDS["text_to_image"], "sepia", Sepia)
    models = models_from_env({"THREEGEN_TEXT_TO_IMAGE": "sepia", "THREEGEN_SEPIA_SIZE": "8"})
    assert models["text_to_image"] == ("sepia", {"size": 8})
    made = engine("text_to_image", *models["text_to_image"])
    assert isinstance(made, Engine) and made("a mug", 1).size == (8, 8)
    assert made.describe() == {"backend": "sepia", "model": "a flat sepia square", "device": "cpu"}
    registry.forget_engines()
