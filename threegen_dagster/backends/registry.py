"""One name per backend, one builder for all: the embedded CPU stand-ins and the model backends
behind the same four calls, so switching is configuration. No Dagster imports.

    text_to_image  generate(prompt, seed) -> PIL image      procedural | flux
    background     remove(image) -> RGBA PIL image          flood_fill | rembg
    image_to_mesh  mesh(image, seed) -> trimesh.Trimesh     inflate | hunyuan
    refine         refine(mesh) -> trimesh.Trimesh          decimate | bpt
    score          score(spz, foreground, text, image)      proxy | models | validation_server
                     -> (JSON-ready result, ring PNG)

Built engines are kept per (stage, backend, options) for the life of the process, so a
worker, or any process that runs several generations, loads each model once.
"""

from __future__ import annotations

import threading
from typing import Any

from ..splats import spz as spz_codec
from . import decimate, inflate, matting, procedural, proxy_score
from .gpu import BackendError

STAGE_BACKENDS = {
    "text_to_image": ("procedural", "flux"),
    "background": ("flood_fill", "rembg"),
    "image_to_mesh": ("inflate", "hunyuan"),
    "refine": ("decimate", "bpt"),
    "score": ("proxy", "models", "validation_server"),
}


class _Embedded:
    """Shared by the CPU stand-ins: nothing to load."""

    loaded = True
    name = ""
    model = ""

    def load(self) -> None: ...

    def unload(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "device": "cpu"}


class Procedural(_Embedded):
    name, model = "procedural", "procedural SDF renderer (not a learned model)"

    def __init__(self, size: int = 512) -> None:
        self.size = size

    def generate(self, prompt: str, seed: int):
        return procedural.render_prompt(prompt, seed, self.size)


class FloodFill(_Embedded):
    name, model = "flood_fill", "border flood fill"

    def __init__(self, tolerance: float = 28.0, min_fraction: float = 0.02) -> None:
        self.tolerance, self.min_fraction = tolerance, min_fraction

    def remove(self, image):
        return matting.remove_background(image, self.tolerance, self.min_fraction)


class Inflate(_Embedded):
    name, model = "inflate", "silhouette inflation + marching cubes"

    def __init__(self, resolution: int = 128, depth_ratio: float = 0.6) -> None:
        self.resolution, self.depth_ratio = resolution, depth_ratio

    def mesh(self, image, seed: int):
        return inflate.inflate(image, self.resolution, self.depth_ratio)


class Decimate(_Embedded):
    name, model = "decimate", "quadric decimation + Taubin smoothing"

    def __init__(self, target_faces: int = 20_000, smoothing_iterations: int = 5) -> None:
        self.target_faces, self.smoothing_iterations = target_faces, smoothing_iterations

    def refine(self, mesh):
        return decimate.refine(mesh, self.target_faces, self.smoothing_iterations)


class ProxyScorer(_Embedded):
    name, model = "proxy", "geometric proxy + the validator's zero-score checks (not a learned model)"

    def score(self, spz: bytes, foreground=None, text: str = "", image: bytes | None = None):
        if foreground is None:
            raise BackendError("the proxy scorer compares the splat with the foreground cut-out, and none was given")
        result = proxy_score.score_splat(spz_codec.decode(spz), foreground)
        out = result.to_dict()
        out["parts"] = {k: out[k] for k in proxy_score.WEIGHTS}
        return out, result.ring_png


class Bpt:
    """BPT mesh refinement: CUDA-only and not on PyPI. Reported as absent, never faked."""

    loaded = False

    def __init__(self, **_: Any) -> None: ...

    def load(self) -> None:
        raise BackendError("BPT refinement is not available: BPT is CUDA-only and not published on PyPI, "
                           "so this project cannot install it; use THREEGEN_REFINER=decimate")

    def unload(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        return {"backend": "bpt", "model": "BPT (not installed)"}

    def refine(self, mesh):
        self.load()


def _build(stage: str, backend: str, options: dict[str, Any]):
    if backend not in STAGE_BACKENDS.get(stage, ()):
        raise BackendError(f"no backend {backend!r} for {stage}: one of {', '.join(STAGE_BACKENDS.get(stage, ()))}")
    if backend == "procedural":
        return Procedural(**options)
    if backend == "flood_fill":
        return FloodFill(**options)
    if backend == "inflate":
        return Inflate(**options)
    if backend == "decimate":
        return Decimate(**options)
    if backend == "bpt":
        return Bpt(**options)
    if backend == "proxy":
        return ProxyScorer()
    if backend == "validation_server":
        from .validation_server import ValidationServerScorer

        return ValidationServerScorer(**options)
    if backend == "models":
        from .validator_models import ValidatorModels, ValidatorModelsConfig

        return ValidatorModels(ValidatorModelsConfig(**options))
    if backend == "flux":
        from .flux import FluxConfig, FluxTextToImage

        return FluxTextToImage(FluxConfig(**options))
    if backend == "rembg":
        from .rembg_backend import RembgBackground, RembgConfig

        return RembgBackground(RembgConfig(**options))
    from .hunyuan import HunyuanConfig, HunyuanShape

    return HunyuanShape(HunyuanConfig(**options))


_ENGINES: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def engine(stage: str, backend: str, options: dict[str, Any] | None = None, load: bool = True):
    """The engine for (stage, backend, options), built and loaded once per process."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    key = (stage, backend, _frozen(options))
    with _LOCK:
        found = _ENGINES.get(key)
        if found is None:
            found = _ENGINES[key] = _build(stage, backend, options)
    if load:
        found.load()
    return found


def loaded_engines() -> dict[tuple, Any]:
    return dict(_ENGINES)


def forget_engines() -> None:
    """Unload and drop every engine (tests; a worker's shutdown)."""
    with _LOCK:
        for found in _ENGINES.values():
            found.unload()
        _ENGINES.clear()
