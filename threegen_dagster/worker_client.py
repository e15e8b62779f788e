"""The client of a running GPU worker (``worker.py``): a stage call's contract arguments in, its result
and the worker's meta out; a streamed answer's progress passed on to the caller's ``progress_to`` block;
every failure a ``BackendError`` that says what to do (``WorkerBusy`` for an if-idle call refused,
``WorkerDown``/``WorkerLost`` for a worker that cannot be reached or broke mid-call). No Dagster imports."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from typing import Any

from .backends.gpu import BackendError
from .backends.stages import Progress, current_progress
from .worker import BODIES, IF_IDLE, NDJSON, PROGRESS, WorkerBusy, WorkerDown, WorkerLost


class WorkerClient:
    """Calls a running worker; every failure is a BackendError that says what to do."""

    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def _call(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None,
              if_idle: bool = False, progress: Progress | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", **({IF_IDLE: "1"} if if_idle else {}),
                   **({PROGRESS: "1"} if progress is not None else {})}
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s) as response:
                if response.headers.get_content_type() == NDJSON:
                    return self._streamed(path, response, progress)
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read())
                detail = answer.get("error") or answer.get("detail") or ""
            except (ValueError, AttributeError):  # not the worker's JSON: uvicorn's own 503, a proxy, ...
                detail = exc.reason + (" (more connections than THREEGEN_WORKER_MAX_CONNECTIONS: retry later)"
                                       if exc.code == 503 else "")
            error = WorkerBusy if exc.code == 409 else WorkerDown if exc.code == 503 else BackendError
            raise error(f"GPU worker at {self.url} refused {path} (HTTP {exc.code}): {detail}") from None
        except (TimeoutError, socket.timeout):
            raise BackendError(f"GPU worker at {self.url} did not answer {path} within "
                               f"{timeout_s or self.timeout_s:g} s (THREEGEN_WORKER_TIMEOUT)") from None
        except urllib.error.URLError as exc:  # never connected: nothing was sent
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise BackendError(f"GPU worker at {self.url} did not answer {path} within "
                                   f"{timeout_s or self.timeout_s:g} s (THREEGEN_WORKER_TIMEOUT)") from None
            raise WorkerDown(f"GPU worker at {self.url} is down ({exc.reason}): start it with `threegen worker`, "
                             f"or unset THREEGEN_WORKER_URL / THREEGEN_WORKERS to run the stages here") from None
        except (ConnectionError, http.client.HTTPException) as exc:  # sent, then the connection broke
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise WorkerLost(f"GPU worker at {self.url} is down: the connection broke during {path} "
                             f"({reason})") from None

    def _streamed(self, path: str, response, progress: Progress | None) -> dict:
        """A streamed answer: progress lines (passed to ``progress``), then ``{"answer"}`` or ``{"error", "status"}``
        (a failure after the call took the GPU); a stream that ends before either broke mid-call."""
        for line in response:
            item = json.loads(line)
            if "progress" in item:
                if progress is not None:
                    progress(*item["progress"])
            elif "answer" in item:
                return item["answer"]
            elif "error" in item:
                raise BackendError(f"GPU worker at {self.url} refused {path} (HTTP {item.get('status', 500)}): "
                                   f"{item['error']}")
        raise WorkerLost(f"GPU worker at {self.url} is down: the connection broke during {path} (the answer "
                         "stopped before its end)")

    def health(self, timeout_s: float = 5.0) -> bool:
        return bool(self._call("GET", "/health", timeout_s=timeout_s).get("ok"))

    def status(self, timeout_s: float = 10.0) -> dict:
        return self._call("GET", "/status", timeout_s=timeout_s)

    def load(self, timeout_s: float = 5.0) -> dict:
        return self._call("GET", "/load", timeout_s=timeout_s)

    def call(self, stage: str, *args: Any, if_idle: bool = False) -> tuple[Any, dict]:
        """One stage call on the worker: the contract's arguments in, (its result, the worker's meta) out;
        ``if_idle``: WorkerBusy at once when its GPU is taken, never waiting in its queue. Inside a ``progress_to``
        block the worker streams the backend's progress, passed on to that block's callback as it comes."""
        wire = BODIES[stage]
        out = self._call("POST", f"/v1/{stage}", wire.request(*args), if_idle=if_idle, progress=current_progress())
        return wire.result(out), out["meta"]
