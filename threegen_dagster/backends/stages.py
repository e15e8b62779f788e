"""The model stages: one name each, one typed contract each. No Dagster imports.

A stage's name is its resource key in ``definitions.py``, its key in the backend registry
(``registry.BACKENDS``), its worker endpoint (``POST /v1/<name>``) and its request body there
(``worker.BODIES``). The asset it materializes keeps its own name (assets name what is stored,
stages what is done; asset names are the store's paths, so they never change):

    stage           asset             contract       engine(...)                                backends
    text_to_image   generated_image   TextToImage    (prompt, seed) -> RGB image                procedural | flux
    background      foreground_image  Background     (image) -> RGBA image                      flood_fill | rembg
    image_to_mesh   initial_mesh      ImageToMesh    (cut-out, seed) -> trimesh.Trimesh         inflate | hunyuan
    refine          refined_mesh      Refine         (mesh) -> trimesh.Trimesh                  decimate | bpt
    score           validation_score  Score          (spz, foreground, text, image)             proxy | models |
                                                       -> (JSON-ready result, ring PNG)         validation_server

Every backend is a subclass of its stage's contract, and honours one contract, as diffusers'
pipelines do: built from its options (``from_options``: cheap, nothing is loaded), loaded once
(``load``), described for metadata (``describe``), and called (``engine(*args)``, typed by the contract).

Progress: inside its call a backend may say how far it is with ``report_progress(done, total, unit)``
(FLUX's denoising steps, Hunyuan3D-2's steps, the embedded renderer's tracing steps). Whoever calls
the engine decides where that goes: ``with progress_to(callback): engine(...)`` (the Dagster wiring
logs it through ``ProgressLog``, every tenth of the way); with no callback it costs one lookup.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .gpu import BackendError

if TYPE_CHECKING:
    import trimesh
    from PIL import Image


Progress = Callable[[int, int, str], None]
"""(done, total, unit): ``done`` of ``total`` units (``"denoising steps"``, ``"chunks"``) finished."""
_PROGRESS: ContextVar[Progress | None] = ContextVar("threegen_progress", default=None)


def report_progress(done: int, total: int, unit: str = "steps") -> None:
    """Called by a backend inside its call; goes to the callback of the innermost ``progress_to``."""
    callback = _PROGRESS.get()
    if callback is not None:
        callback(done, total, unit)


def current_progress() -> Progress | None:
    """The callback of the innermost ``progress_to`` on this thread (a client passing progress on, e.g. a
    GPU worker's)."""
    return _PROGRESS.get()


@contextmanager
def progress_to(callback: Progress | None) -> Iterator[None]:
    """Progress reported by engines called inside this block (on this thread) goes to ``callback``."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


class ProgressLog:
    """A ``Progress`` callback that says ``"<what>: 12/28 denoising steps (43%)"`` through ``say`` at
    most once per ``every`` of the way for each unit (and at the end), so a 1,000-step loop is ten lines."""

    def __init__(self, say: Callable[[str], None], what: str, every: float = 0.1) -> None:
        self.say, self.what, self.every = say, what, every
        self._last: dict[str, int] = {}

    def __call__(self, done: int, total: int, unit: str = "steps") -> None:
        if total <= 0:
            return
        fraction = min(max(done / total, 0.0), 1.0)
        last = self._last.get(unit, 0)
        if done >= total:
            if last == _ENDED:  # the end is said once
                return
            self._last[unit] = _ENDED
        else:
            bucket = int(fraction / self.every + 1e-9)
            if bucket <= (0 if last == _ENDED else last):  # after an end: a new pass of the same unit
                return
            self._last[unit] = bucket
        self.say(f"{self.what}: {done}/{total} {unit} ({fraction:.0%})")


_ENDED = -1


class Engine(ABC):
    """What every backend of every stage honours."""

    stage: ClassVar[str] = ""
    """The stage it serves (set by the contract)."""
    name: ClassVar[str] = ""
    """Its name in the registry and in the stage's environment variable (``THREEGEN_TEXT_TO_IMAGE=flux``)."""
    model: ClassVar[str] = ""
    """What it runs, for metadata (the embedded stand-ins say they are not learned models)."""
    options_type: ClassVar[type | None] = None
    """A dataclass of its options, or None: its options are ``__init__``'s keywords."""
    env: ClassVar[Mapping[str, tuple[str, type]]] = {}
    """option -> (environment variable, type): what ``settings.models_from_env`` reads for it."""
    on_worker: ClassVar[bool] = True
    """Sent to the GPU worker when one is configured; False: always called from the run itself."""
    loaded: bool = True

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Engine:
        """Built from options (nothing loaded yet); unknown options are an error naming them."""
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise BackendError(f"{cls.stage} backend {cls.name!r} has no option {', '.join(map(repr, unknown))} "
                            f"(its options: {', '.join(cls.option_names()) or 'none'})")
        return cls(cls.options_type(**options)) if cls.options_type else cls(**options)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        parameters = inspect.signature(cls.options_type or cls).parameters.values()
        return tuple(p.name for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD or p.kind is p.KEYWORD_ONLY)

    def load(self) -> None:
        """Load weights; the embedded stand-ins have none."""

    def unload(self) -> None:
        """Drop weights and return their memory."""

    def describe(self) -> dict[str, Any]:
        """What runs the calls (backend, model, device, ...), for metadata and ``GET /status``."""
        return {"backend": self.name, "model": self.model, "device": "cpu"}

    @abstractmethod
    def __call__(self, *args: Any) -> Any:
        """The stage's call: each contract below types it."""


class TextToImage(Engine):
    stage = "text_to_image"

    @abstractmethod
    def __call__(self, prompt: str, seed: int) -> Image.Image:
        """An RGB image of the prompt; the same prompt and seed give the same image."""


class Background(Engine):
    stage = "background"

    @abstractmethod
    def __call__(self, image: Image.Image) -> Image.Image:
        """An RGBA copy of ``image`` whose alpha is the foreground: the background transparent, the
        object opaque (an image that is already a cut-out comes back as it is)."""


class ImageToMesh(Engine):
    stage = "image_to_mesh"

    @abstractmethod
    def __call__(self, image: Image.Image, seed: int) -> trimesh.Trimesh:
        """A mesh of the object in the RGBA cut-out ``image``: +Y up, seen from +Z (the validator's
        azimuth-0 camera), vertex colours when the backend makes them."""


class Refine(Engine):
    stage = "refine"

    @abstractmethod
    def __call__(self, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        """The mesh made lighter and smoother, colours kept."""


class Score(Engine):
    stage = "score"

    @abstractmethod
    def __call__(self, spz: bytes, foreground: Image.Image | None = None, text: str = "",
                 image: bytes | None = None) -> tuple[dict[str, Any], bytes]:
        """The SPZ scored as a validator would, against the prompt's ``text`` or ``image`` (the proxy:
        against the ``foreground`` cut-out): a JSON-ready result (``score``, ``parts``, ``kind``,
        ``checks``) and a PNG of the view ring it was scored on."""


@dataclass(frozen=True)
class Stage:
    name: str
    """The resource key, registry key and worker endpoint."""
    asset: str
    """The asset it materializes."""
    contract: type[Engine]
    variable: str
    """The environment variable that picks its backend."""


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("text_to_image", "generated_image", TextToImage, "THREEGEN_TEXT_TO_IMAGE"),
    Stage("background", "foreground_image", Background, "THREEGEN_BACKGROUND"),
    Stage("image_to_mesh", "initial_mesh", ImageToMesh, "THREEGEN_IMAGE_TO_MESH"),
    Stage("refine", "refined_mesh", Refine, "THREEGEN_REFINER"),
    Stage("score", "validation_score", Score, "THREEGEN_SCORER"),
)}
