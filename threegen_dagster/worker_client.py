"""The client of a running GPU worker (``worker.py``): a stage call's contract arguments in, its result
and the worker's meta out; a streamed answer's progress passed on to the caller's ``progress_to`` block;
every failure a ``BackendError`` that says what to do (``WorkerBusy`` for an if-idle call refused,
``WorkerDown``/``WorkerLost`` for a worker that cannot be reached or broke mid-call). No Dagster imports."""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from .backends.gpu import BackendError
from .backends.stages import Progress, current_progress
from .settings import Settings
from .worker import BODIES, IF_IDLE, NDJSON, PROGRESS, WorkerBusy, WorkerDown, WorkerLost

MAX_ANSWER_BYTES = Settings.worker_max_body_mb * 2**20
"""The largest answer (or streamed line) read from a worker: what the worker itself accepts as a body."""


class WorkerClient:
    """Calls a running worker; every failure is a BackendError that says what to do. ``timeout_s`` bounds a
    whole call, streamed or not; an answer over ``max_answer_bytes`` is refused unread."""

    def __init__(self, url: str, timeout_s: float = 600.0, max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.url, self.timeout_s, self.max_answer_bytes = url.rstrip("/"), timeout_s, max_answer_bytes

    def _call(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None,
              if_idle: bool = False, progress: Progress | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", **({IF_IDLE: "1"} if if_idle else {}),
                   **({PROGRESS: "1"} if progress is not None else {})}
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        timeout_s = timeout_s or self.timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                if response.headers.get_content_type() == NDJSON:
                    return self._streamed(path, response, progress, deadline)
                return self._json(path, self._body(path, response, deadline))
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read(64 * 1024))
                detail = _one_line(answer.get("error") or answer.get("detail") or "")
            except (ValueError, AttributeError):  # not the worker's JSON: uvicorn's own 503, a proxy, ...
                detail = exc.reason + (" (more connections than THREEGEN_WORKER_MAX_CONNECTIONS: retry later)"
                                       if exc.code == 503 else "")
            error = WorkerBusy if exc.code == 409 else WorkerDown if exc.code == 503 else BackendError
            raise error(f"GPU worker at {self.url} refused {path} (HTTP {exc.code}): {detail}") from None
        except (TimeoutError, socket.timeout):
            raise BackendError(f"GPU worker at {self.url} did not answer {path} within "
                               f"{timeout_s:g} s (THREEGEN_WORKER_TIMEOUT)") from None
        except urllib.error.URLError as exc:  # never connected: nothing was sent
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise BackendError(f"GPU worker at {self.url} did not answer {path} within "
                                   f"{timeout_s:g} s (THREEGEN_WORKER_TIMEOUT)") from None
            raise WorkerDown(f"GPU worker at {self.url} is down ({exc.reason}): start it with `threegen worker`, "
                             f"or unset THREEGEN_WORKER_URL / THREEGEN_WORKERS to run the stages here") from None
        except (ConnectionError, http.client.HTTPException) as exc:  # sent, then the connection broke
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise WorkerLost(f"GPU worker at {self.url} is down: the connection broke during {path} "
                             f"({reason})") from None

    def _streamed(self, path: str, response, progress: Progress | None, deadline: float) -> dict:
        """A streamed answer: progress lines (passed to ``progress``), then ``{"answer"}`` or ``{"error", "status"}``
        (a failure after the call took the GPU); a stream that ends before either broke mid-call. Each line is
        read within what is left of the call's time, so a worker that reports forever still times out."""
        while True:
            _time_left(response, deadline)
            line = response.readline(self.max_answer_bytes + 1)
            self._bounded(path, len(line))
            if not line.endswith(b"\n"):  # the stream ended, between lines or inside one
                raise WorkerLost(f"GPU worker at {self.url} is down: the connection broke during {path} (the "
                                 "answer stopped before its end)")
            item = self._json(path, line)
            if "progress" in item:
                done, total, unit = self._progress(path, line, item["progress"])
                if progress is not None:
                    progress(done, total, unit)
            elif isinstance(item.get("answer"), dict):
                return item["answer"]
            elif "error" in item:
                raise BackendError(f"GPU worker at {self.url} refused {path} (HTTP {item.get('status', 500)}): "
                                   f"{_one_line(item['error'])}")
            else:
                raise self._garbled(path, line)

    def _body(self, path: str, response, deadline: float) -> bytes:
        """A plain answer, read a MiB at a time within what is left of the call's time."""
        chunks, size = [], 0
        while True:
            _time_left(response, deadline)
            chunk = response.read(min(2**20, self.max_answer_bytes + 1 - size))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            self._bounded(path, size)

    def _bounded(self, path: str, size: int) -> None:
        if size > self.max_answer_bytes:
            raise BackendError(f"GPU worker at {self.url} answered {path} with more than {self.max_answer_bytes:,} "
                               "bytes (THREEGEN_WORKER_MAX_BODY_MB)")

    def _json(self, path: str, data: bytes) -> dict:
        try:
            item = json.loads(data)
        except ValueError:
            item = None
        if not isinstance(item, dict):
            raise self._garbled(path, data)
        return item

    def _garbled(self, path: str, data: bytes) -> WorkerLost:
        return WorkerLost(f"GPU worker at {self.url} is down: its answer to {path} is not the worker's JSON "
                          f"({data[:100]!r})")

    def _progress(self, path: str, line: bytes, value: Any) -> tuple[int, int, str]:
        """A progress line's ``[done, total, unit]``, checked."""
        if not (isinstance(value, list) and len(value) == 3 and all(type(v) is int for v in value[:2])
                and isinstance(value[2], str)):
            raise self._garbled(path, line)
        return value[0], value[1], value[2][:100]

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


def _time_left(response, deadline: float) -> None:
    """The socket's timeout for the next read of ``response``: what is left of the call's time (TimeoutError
    when none is). http.client keeps its socket in ``fp.raw._sock``; without it a read keeps the whole timeout."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(left)


def _one_line(text: Any) -> str:
    """A worker's error text as one line of at most 1000 characters (a traceback or CUDA's message has several)."""
    return " ".join(str(text).split())[:1000]
