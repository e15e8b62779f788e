"""The warm GPU worker: one long-lived process per GPU that loads the configured models once and
serves the model stages over HTTP (loopback by default), and the client the pipeline uses.

    GET  /health               {"ok": true}
    GET  /status               loaded models, device, GPU memory in use and peak, queue, counts
    POST /v1/<stage>           JSON in, JSON out; images as base64 PNG, meshes as base64 GLB:
         text_to_image         {"prompt", "seed"}      -> {"png_b64", "meta"}
         background            {"png_b64"}             -> {"png_b64", "meta"}
         image_to_mesh         {"png_b64", "seed"}     -> {"glb_b64", "meta"}
         refine                {"glb_b64"}             -> {"glb_b64", "meta"}
         score                 {"spz_b64", "text", "image_b64", "png_b64" (foreground)}
                                                       -> {"result", "ring_png_b64", "meta"}

Calls run one at a time (one GPU); others wait in the queue that /status reports. A backend
failure is HTTP 422 with {"error": ...}, which the client raises as BackendError. No Dagster imports.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trimesh
from PIL import Image

from .backends.gpu import BackendError, free_gpu_memory, gpu_memory, peak_gpu_memory
from .backends.registry import STAGE_BACKENDS, engine

DEFAULT_PORT = 8765


class BadRequest(ValueError):
    """A request the worker cannot decode (HTTP 400)."""


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def image_from_b64(data: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
    image.load()
    return image


def glb_b64(mesh: trimesh.Trimesh) -> str:
    return base64.b64encode(mesh.export(file_type="glb")).decode()


def mesh_from_b64(data: str) -> trimesh.Trimesh:
    return trimesh.load(io.BytesIO(base64.b64decode(data, validate=True)), file_type="glb", force="mesh",
                        process=False)


class StageRunner:
    """Runs stage calls on the configured engines, one at a time, measuring time and GPU memory."""

    def __init__(self, models: dict[str, tuple[str, dict]], free_between_stages: bool = False) -> None:
        self.models = {stage: models.get(stage, (backends[0], {})) for stage, backends in STAGE_BACKENDS.items()}
        self.free_between_stages = free_between_stages
        self._gpu = threading.Lock()
        self._waiting = 0
        self._count = threading.Lock()
        self.served: dict[str, int] = {stage: 0 for stage in STAGE_BACKENDS}
        self.started = time.time()

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
        return seconds

    @staticmethod
    def decode(stage: str, request: dict[str, Any]) -> tuple:
        """The call's arguments; BadRequest when the request is malformed."""
        try:
            if stage == "text_to_image":
                return str(request["prompt"]), int(request["seed"])
            if stage == "background":
                return (image_from_b64(request["png_b64"]),)
            if stage == "image_to_mesh":
                return image_from_b64(request["png_b64"]), int(request["seed"])
            if stage == "score":
                foreground = image_from_b64(request["png_b64"]) if request.get("png_b64") else None
                image = base64.b64decode(request["image_b64"], validate=True) if request.get("image_b64") else None
                return (base64.b64decode(request["spz_b64"], validate=True), foreground,
                        str(request.get("text", "")), image)
            return (mesh_from_b64(request["glb_b64"]),)
        except KeyError as exc:
            raise BadRequest(f"{stage} needs the field {exc}") from None
        except Exception as exc:  # noqa: BLE001 - undecodable base64, image or mesh
            raise BadRequest(f"{stage}: cannot decode the request ({type(exc).__name__}: {exc})") from None

    def run(self, stage: str, request: dict[str, Any]) -> dict[str, Any]:
        args = self.decode(stage, request)
        with self._count:
            self._waiting += 1
        self._gpu.acquire()
        with self._count:
            self._waiting -= 1
        try:
            return self._run_locked(stage, args)
        finally:
            self._gpu.release()

    def _run_locked(self, stage: str, args: tuple) -> dict[str, Any]:
        started = time.perf_counter()
        eng = self.engine(stage)
        with peak_gpu_memory() as memory:
            if stage == "text_to_image":
                out = {"png_b64": png_b64(eng.generate(*args))}
            elif stage == "background":
                out = {"png_b64": png_b64(eng.remove(*args))}
            elif stage == "image_to_mesh":
                out = {"glb_b64": glb_b64(eng.mesh(*args))}
            elif stage == "score":
                result, ring = eng.score(*args)
                out = {"result": result, "ring_png_b64": base64.b64encode(ring).decode()}
            else:
                out = {"glb_b64": glb_b64(eng.refine(*args))}
        if self.free_between_stages:
            free_gpu_memory()
        self.served[stage] += 1
        out["meta"] = {**eng.describe(), "seconds": round(time.perf_counter() - started, 3),
                       "gpu_peak_mb": memory.get("gpu_peak_mb", 0.0), "where": "worker"}
        return out

    def status(self) -> dict[str, Any]:
        models = {}
        for stage, (backend, _) in self.models.items():
            eng = engine(stage, backend, self.models[stage][1], load=False)
            models[stage] = {**eng.describe(), "loaded": bool(eng.loaded)}
        device = "cpu"
        try:
            import torch

            if torch.cuda.is_available():
                device = f"cuda ({torch.cuda.get_device_name(0)})"
        except ImportError:
            pass
        return {"device": device, "models": models, **gpu_memory(), "queue": self._waiting,
                "busy": self._gpu.locked(), "served": dict(self.served),
                "uptime_s": round(time.time() - self.started, 1)}


class _Handler(BaseHTTPRequestHandler):
    runner: StageRunner
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the worker prints its own lines
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self._send(200, {"ok": True})
        elif self.path == "/status":
            self._send(200, self.runner.status())
        else:
            self._send(404, {"error": f"no such endpoint {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        stage = self.path.removeprefix("/v1/")
        if not self.path.startswith("/v1/") or stage not in STAGE_BACKENDS:
            self._send(404, {"error": f"no such stage {self.path}: one of {', '.join(STAGE_BACKENDS)}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length))
            if not isinstance(request, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as exc:
            self._send(400, {"error": f"bad request: {exc}"})
            return
        started = time.perf_counter()
        try:
            result = self.runner.run(stage, request)
        except BadRequest as exc:
            self._send(400, {"error": str(exc)})
        except (BackendError, ValueError) as exc:  # the backend's own verdict (no surface, no object, ...)
            self._send(422, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - the worker must outlive one bad call
            self._send(500, {"error": f"{stage} failed: {type(exc).__name__}: {exc}"})
        else:
            self._send(200, result)
        finally:
            print(f"{time.strftime('%H:%M:%S')} {stage} {time.perf_counter() - started:.2f} s", flush=True)


def make_server(runner: StageRunner, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"runner": runner})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


class WorkerClient:
    """Calls a running worker; every failure is a BackendError that says what to do."""

    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def _call(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = json.loads(exc.read()).get("error", "")
            except ValueError:
                detail = exc.reason
            raise BackendError(f"GPU worker at {self.url} refused {path} (HTTP {exc.code}): {detail}") from None
        except (TimeoutError, socket.timeout):
            raise BackendError(f"GPU worker at {self.url} did not answer {path} within "
                               f"{timeout_s or self.timeout_s:g} s (THREEGEN_WORKER_TIMEOUT)") from None
        except (urllib.error.URLError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendError(f"GPU worker at {self.url} is down ({reason}): start it with "
                               f"`threegen worker`, or unset THREEGEN_WORKER_URL to run the stages here") from None

    def health(self, timeout_s: float = 5.0) -> bool:
        return bool(self._call("GET", "/health", timeout_s=timeout_s).get("ok"))

    def status(self) -> dict:
        return self._call("GET", "/status", timeout_s=10.0)

    def text_to_image(self, prompt: str, seed: int) -> tuple[Image.Image, dict]:
        out = self._call("POST", "/v1/text_to_image", {"prompt": prompt, "seed": seed})
        return image_from_b64(out["png_b64"]), out["meta"]

    def background(self, image: Image.Image) -> tuple[Image.Image, dict]:
        out = self._call("POST", "/v1/background", {"png_b64": png_b64(image)})
        return image_from_b64(out["png_b64"]), out["meta"]

    def image_to_mesh(self, image: Image.Image, seed: int) -> tuple[trimesh.Trimesh, dict]:
        out = self._call("POST", "/v1/image_to_mesh", {"png_b64": png_b64(image), "seed": seed})
        return mesh_from_b64(out["glb_b64"]), out["meta"]

    def refine(self, mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, dict]:
        out = self._call("POST", "/v1/refine", {"glb_b64": glb_b64(mesh)})
        return mesh_from_b64(out["glb_b64"]), out["meta"]

    def score(self, spz: bytes, foreground: Image.Image | None = None, text: str = "",
              image: bytes | None = None) -> tuple[tuple[dict, bytes], dict]:
        body = {"spz_b64": base64.b64encode(spz).decode(), "text": text,
                "png_b64": png_b64(foreground) if foreground is not None else "",
                "image_b64": base64.b64encode(image).decode() if image else ""}
        out = self._call("POST", "/v1/score", body)
        return (out["result"], base64.b64decode(out["ring_png_b64"])), out["meta"]
