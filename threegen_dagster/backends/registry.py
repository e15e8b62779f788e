"""The backend registry, as data: stage -> backend name -> class (the first is the stage's default),
and the process's engines. No Dagster imports. The stages and their contracts are in ``stages.py``.

Adding a backend: one file with a subclass of its stage's contract, and one row here. Built engines
are kept per (stage, backend, options) for the life of the process, so a worker, or any process
that runs several generations, loads each model once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from .bpt import Bpt
from .decimate import Decimate
from .flux import FluxTextToImage
from .gpu import BackendError
from .hunyuan import HunyuanShape
from .inflate import Inflate
from .matting import FloodFill
from .procedural import Procedural
from .proxy_score import ProxyScorer
from .rembg_backend import RembgBackground
from .stages import Engine
from .validation_server import ValidationServerScorer
from .validator_models import ValidatorModels

BACKENDS: dict[str, dict[str, type[Engine]]] = {
    "text_to_image": {"procedural": Procedural, "flux": FluxTextToImage},
    "background": {"flood_fill": FloodFill, "rembg": RembgBackground},
    "image_to_mesh": {"inflate": Inflate, "hunyuan": HunyuanShape},
    "refine": {"decimate": Decimate, "bpt": Bpt},
    "score": {"proxy": ProxyScorer, "models": ValidatorModels, "validation_server": ValidationServerScorer},
}
STAGE_BACKENDS: dict[str, tuple[str, ...]] = {stage: tuple(table) for stage, table in BACKENDS.items()}


def backend_class(stage: str, backend: str) -> type[Engine]:
    """The class registered for (stage, backend); BackendError naming the choices when there is none."""
    table = BACKENDS.get(stage)
    if table is None:
        raise BackendError(f"no stage {stage!r}: one of {', '.join(BACKENDS)}")
    if backend not in table:
        raise BackendError(f"no backend {backend!r} for {stage}: one of {', '.join(table)}")
    return table[backend]


_ENGINES: dict[tuple, Engine] = {}
_LOCK = threading.Lock()


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def engine(stage: str, backend: str, options: Mapping[str, Any] | None = None, load: bool = True) -> Engine:
    """The engine for (stage, backend, options), built and loaded once per process."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    key = (stage, backend, _frozen(options))
    with _LOCK:
        found = _ENGINES.get(key)
        if found is None:
            found = _ENGINES[key] = backend_class(stage, backend).from_options(options)
    if load:
        found.load()
    return found


def loaded_engines() -> dict[tuple, Engine]:
    return dict(_ENGINES)


def forget_engines() -> None:
    """Unload and drop every engine (tests; a worker's shutdown)."""
    with _LOCK:
        for found in _ENGINES.values():
            found.unload()
        _ENGINES.clear()
