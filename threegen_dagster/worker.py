"""The warm GPU worker: one long-lived process per GPU that loads the configured models once and
serves the model stages over HTTP (loopback unless told otherwise), and the client the pipeline uses.

    GET  /health               {"ok": true}
    GET  /load                 {"busy", "queue", "served", "device", "last_error"}: cheap, what a pool picks by
    GET  /status               loaded models, device, GPU memory in use and peak, queue, counts, last error
    POST /v1/<stage>           JSON in, JSON out; images as base64 PNG, meshes as base64 GLB:
         text_to_image         {"prompt", "seed"}      -> {"png_b64", "meta"}
         background            {"png_b64"}             -> {"png_b64", "meta"}
         image_to_mesh         {"png_b64", "seed"}     -> {"glb_b64", "meta"}
         refine                {"glb_b64"}             -> {"glb_b64", "meta"}
         score                 {"spz_b64", "text", "image_b64", "png_b64" (foreground)}
                                                       -> {"result", "ring_png_b64", "meta"}

Here: the typed request bodies, one per stage in ``BODIES`` (each also writes its request for the
client and reads the answer back; strict: a seed is an integer in [0, 2**32-1], never "3", 3.0 or
true; a prompt is non-empty printable text; no unknown fields), the stage runner (images decoded
as PNG within ``max_image_pixels``; calls run one at a time, one GPU, others wait in the queue
that /status reports; a call sent with ``X-Threegen-If-Idle: 1`` never waits: it takes the GPU at
once or is answered 409, which is how a pool of workers leases a free one, ``workers.py``) and the
client (``worker_client.py``). A call sent with ``X-Threegen-Progress: 1`` is answered as NDJSON once it holds the GPU: the
backend's progress lines (``{"progress": [done, total, unit]}``, at most one a unit per percent), then
``{"answer": ...}``, or ``{"error", "status"}`` for a failure after it started; the client passes the
progress on to its caller's ``progress_to`` block, so a run's log shows a stage's steps as the worker
computes them. The HTTP server, its limits and error answers are in ``worker_http.py``. No Dagster imports.
"""

from __future__ import annotations

import binascii
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any, ClassVar

import trimesh
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import images
from .backends.gpu import BackendError, free_gpu_memory, gpu_memory, peak_gpu_memory
from .backends.registry import STAGE_BACKENDS, engine
from .backends.stages import Progress, progress_to
from .codecs import b64, glb_bytes, glb_mesh, png_bytes, png_image, unb64
from .keys import MAX_SEED, Prompt, clean_text

DEFAULT_PORT = 8765
IF_IDLE = "X-Threegen-If-Idle"  # a call with this header set takes the GPU at once or is answered 409
PROGRESS = "X-Threegen-Progress"  # ... is answered as NDJSON: the stage's progress lines, then its answer
NDJSON = "application/x-ndjson"


class BadRequest(ValueError):
    """A request the worker cannot decode (HTTP 400)."""


class Busy(RuntimeError):
    """An if-idle call that found the GPU taken (HTTP 409)."""


class WorkerBusy(BackendError):
    """Client side: the worker answered an if-idle call with 409: another call holds its GPU."""


class WorkerDown(BackendError):
    """Client side: the worker cannot be reached (refused, reset, closed mid-answer): another may."""


class WorkerLost(WorkerDown):
    """Client side: the connection broke after the call was sent (the worker died mid-stage)."""


def _bytes(value: str, field: str) -> bytes:
    try:
        return unb64(value)
    except (binascii.Error, ValueError):
        raise BadRequest(f"cannot decode '{field}': not valid base64") from None


def _image(value: str, field: str, max_pixels: int) -> Image.Image:
    try:
        return images.open_rgb(_bytes(value, field), max_pixels, formats=("PNG",))
    except images.ImageError as exc:
        raise BadRequest(f"cannot decode '{field}': {exc}") from None


# -- requests: typed, strict (no coercion: "3", 3.0 and true are not seeds), no unknown fields
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Base64 = Annotated[str, Field(min_length=1)]


def _mesh(value: str, field: str, max_pixels: int) -> trimesh.Trimesh:
    try:
        return glb_mesh(unb64(value))
    except Exception as exc:  # noqa: BLE001 - not base64, not a GLB
        raise BadRequest(f"cannot decode '{field}' as a GLB mesh ({type(exc).__name__}: {exc})") from None


# a file field's (client: value -> text, worker: text -> value, decoded and bounded); other fields go as they are
FILE_FIELDS: dict[str, tuple[Callable[[Any], str], Callable[[str, str, int], Any]]] = {
    "png_b64": (lambda image: b64(png_bytes(image)), _image),
    "glb_b64": (lambda mesh: b64(glb_bytes(mesh)), _mesh),
}


class _Body(BaseModel):
    """One stage's wire. Its fields, in order, are the contract's arguments: the client writes them
    (``request``), the worker reads them back (``arguments``), file fields through ``FILE_FIELDS``;
    the answer goes both ways through ``answer`` and ``result``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @classmethod
    def request(cls, *args: Any) -> dict[str, Any]:
        """Client: the contract's arguments as this body's JSON."""
        return {name: FILE_FIELDS[name][0](arg) if name in FILE_FIELDS else arg
                for name, arg in zip(cls.model_fields, args)}

    def arguments(self, max_pixels: int) -> tuple:
        """Worker: the contract's arguments, decoded and bounded; BadRequest when they cannot be."""
        return tuple(FILE_FIELDS[name][1](value, name, max_pixels) if name in FILE_FIELDS else value
                     for name, value in ((n, getattr(self, n)) for n in type(self).model_fields))

    @staticmethod
    def answer(result: Any) -> dict[str, Any]:
        """Worker: the contract's result as JSON."""
        raise NotImplementedError

    @staticmethod
    def result(out: dict[str, Any]) -> Any:
        """Client: the answer's JSON as the contract's result."""
        raise NotImplementedError


class _FileAnswer(_Body):
    """A stage that answers with one file: base64 bytes in the field ``answer_field``."""

    answer_field: ClassVar[str]
    encode: ClassVar[Callable[[Any], bytes]]
    decode: ClassVar[Callable[[bytes], Any]]

    @classmethod
    def answer(cls, result: Any) -> dict[str, Any]:
        return {cls.answer_field: b64(cls.encode(result))}

    @classmethod
    def result(cls, out: dict[str, Any]) -> Any:
        return cls.decode(unb64(out[cls.answer_field]))


class _ImageAnswer(_FileAnswer):
    answer_field, encode, decode = "png_b64", png_bytes, png_image


class _MeshAnswer(_FileAnswer):
    answer_field, encode, decode = "glb_b64", glb_bytes, glb_mesh


class TextToImageBody(_ImageAnswer):
    prompt: str
    seed: Seed

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str) -> str:
        return Prompt.from_text(value).text  # the pipeline's own rules: non-empty, printable, bounded


class BackgroundBody(_ImageAnswer):
    png_b64: Base64


class ImageToMeshBody(_MeshAnswer):
    png_b64: Base64
    seed: Seed


class RefineBody(_MeshAnswer):
    glb_b64: Base64


class ScoreBody(_Body):
    spz_b64: Base64
    text: str = ""
    image_b64: str = ""
    png_b64: str = ""

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return clean_text(value, "text")

    @staticmethod
    def request(spz: bytes, foreground: Image.Image | None = None, text: str = "",
                image: bytes | None = None) -> dict[str, Any]:
        return {"spz_b64": b64(spz), "text": text,
                "png_b64": b64(png_bytes(foreground)) if foreground is not None else "",
                "image_b64": b64(image) if image else ""}

    def arguments(self, max_pixels: int) -> tuple[bytes, Image.Image | None, str, bytes | None]:
        foreground = _image(self.png_b64, "png_b64", max_pixels) if self.png_b64 else None
        image = _bytes(self.image_b64, "image_b64") if self.image_b64 else None
        if image is not None:
            try:
                images.decode(image, max_pixels)
            except images.ImageError as exc:
                raise BadRequest(f"cannot decode 'image_b64': {exc}") from None
        return _bytes(self.spz_b64, "spz_b64"), foreground, self.text, image

    @staticmethod
    def answer(result: tuple[dict, bytes]) -> dict[str, Any]:
        out, ring = result
        return {"result": out, "ring_png_b64": b64(ring)}

    @staticmethod
    def result(out: dict[str, Any]) -> tuple[dict, bytes]:
        return out["result"], unb64(out["ring_png_b64"])


BODIES: dict[str, type[_Body]] = {  # stage -> its wire: POST /v1/<stage>
    "text_to_image": TextToImageBody,
    "background": BackgroundBody,
    "image_to_mesh": ImageToMeshBody,
    "refine": RefineBody,
    "score": ScoreBody,
}


class StageRunner:
    """Runs stage calls on the configured engines, one at a time, measuring time and GPU memory."""

    def __init__(self, models: dict[str, tuple[str, dict]], free_between_stages: bool = False,
                 max_image_pixels: int = images.MAX_IMAGE_PIXELS) -> None:
        self.models = {stage: models.get(stage, (backends[0], {})) for stage, backends in STAGE_BACKENDS.items()}
        self.free_between_stages = free_between_stages
        self.max_image_pixels = max_image_pixels
        self._gpu = threading.Lock()
        self._waiting = 0
        self._count = threading.Lock()
        self.served: dict[str, int] = {stage: 0 for stage in STAGE_BACKENDS}
        self.started = time.time()
        self.last_error = ""  # the last call that failed: when, which stage, why
        self._device = ""

    def engine(self, stage: str):
        backend, options = self.models[stage]
        return engine(stage, backend, options)

    def load_all(self) -> dict[str, float]:
        """Load every configured engine now (a warm worker); seconds per stage."""
        seconds = {}
        for stage in self.models:
            t = time.perf_counter()
            self.engine(stage)
            seconds[stage] = round(time.perf_counter() - t, 3)
        self.device()  # found now, so GET /load stays cheap from the first call
        return seconds

    def run(self, stage: str, args: tuple, if_idle: bool = False, progress: Progress | None = None,
            on_start: Callable[[], None] | None = None) -> dict[str, Any]:
        if if_idle:  # the lease: the GPU now, or a 409 for the pool to try another worker
            if not self._gpu.acquire(blocking=False):
                raise Busy(f"{stage}: busy (another call holds the GPU)")
        else:
            with self._count:
                self._waiting += 1
            self._gpu.acquire()
            with self._count:
                self._waiting -= 1
        try:
            if on_start is not None:
                on_start()
            return self._run_locked(stage, args, progress)
        finally:
            self._gpu.release()

    def _run_locked(self, stage: str, args: tuple, progress: Progress | None = None) -> dict[str, Any]:
        started, locked_at = time.perf_counter(), time.time()
        print(f"{time.strftime('%H:%M:%S')} {stage} started", flush=True)
        eng = self.engine(stage)
        with peak_gpu_memory() as memory, progress_to(progress):
            out = BODIES[stage].answer(eng(*args))
        if self.free_between_stages:
            free_gpu_memory()
        self.served[stage] += 1
        out["meta"] = {**eng.describe(), "seconds": round(time.perf_counter() - started, 3),
                       "gpu_peak_mb": memory.get("gpu_peak_mb", 0.0), "where": "worker",
                       "gpu_lock_start": round(locked_at, 3), "gpu_lock_end": round(time.time(), 3)}  # the card's own interval
        return out

    def call(self, stage: str, body: _Body, if_idle: bool = False, progress: Progress | None = None,
             on_start: Callable[[], None] | None = None) -> tuple[int, dict[str, Any]]:
        """One stage call as (HTTP status, JSON body): 200, or 400/409/422/500 with {"error": ...}; ``progress``
        hears the backend's reports, ``on_start`` when the call holds the GPU."""
        started = time.perf_counter()
        try:
            return 200, self.run(stage, body.arguments(self.max_image_pixels), if_idle, progress, on_start)
        except Busy as exc:
            return 409, {"error": str(exc), "busy": True}
        except BadRequest as exc:
            return 400, self._failed(f"{stage}: {exc}")
        except (BackendError, ValueError) as exc:  # the backend's own verdict (no surface, no object, ...)
            return 422, self._failed(str(exc))
        except Exception as exc:  # noqa: BLE001 - the worker must outlive one bad call
            return 500, self._failed(f"{stage} failed: {type(exc).__name__}: {exc}")
        finally:
            print(f"{time.strftime('%H:%M:%S')} {stage} {time.perf_counter() - started:.2f} s", flush=True)

    def _failed(self, error: str) -> dict[str, str]:
        self.last_error = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {error[:300]}"
        return {"error": error}

    def device(self) -> str:
        """The card the worker computes on ("cpu" without one), found once."""
        if not self._device:
            self._device = "cpu"
            try:
                import torch

                if torch.cuda.is_available():
                    self._device = f"cuda ({torch.cuda.get_device_name(0)})"
            except ImportError:
                pass
        return self._device

    def load(self) -> dict[str, Any]:
        """What a pool chooses by, cheaply: busy or not, the queue, calls served, the card, the last error."""
        return {"busy": self._gpu.locked(), "queue": self._waiting, "served": sum(self.served.values()),
                "device": self.device(), "last_error": self.last_error}

    def status(self) -> dict[str, Any]:
        models = {}
        for stage, (backend, _) in self.models.items():
            eng = engine(stage, backend, self.models[stage][1], load=False)
            models[stage] = {**eng.describe(), "loaded": bool(eng.loaded)}
        return {"device": self.device(), "models": models, **gpu_memory(), "queue": self._waiting,
                "busy": self._gpu.locked(), "served": dict(self.served), "last_error": self.last_error,
                "uptime_s": round(time.time() - self.started, 1)}
