"""The worker's HTTP server: a FastAPI app on uvicorn, with every request bounded before it costs
anything, and every error answered as JSON ``{"error": ...}`` with its status. No Dagster imports.

- body: ``THREEGEN_WORKER_MAX_BODY_MB``; a declared ``Content-Length`` over it is refused before a
  byte is read, a chunked body that grows past it is stopped by FastAPI's ``max_body_size`` (413);
- arrival: ``DeadlineH11``. uvicorn has no timeout on a request's arrival, only on idle keep-alive
  connections (https://github.com/Kludex/uvicorn/issues/157), so a client that sends half a head,
  or a ``Content-Length`` larger than its body, would hold a connection (and a slot of
  ``limit_concurrency``) forever. Here each request, head and body, must arrive within
  ``THREEGEN_WORKER_READ_TIMEOUT`` of the connection opening or of the previous response, or the
  client gets a 408 and the connection is closed. A running call is never cut: the deadline ends
  when the request has arrived;
- connections and calls: ``THREEGEN_WORKER_MAX_CONNECTIONS`` (503 beyond); heads at most 64 KiB;
- fields: the typed bodies of ``worker.py`` (400 naming the field; JSON that cannot be parsed,
  nested too deeply for instance, is 400 too); a backend's own verdict (no object, no surface) is 422;
- who: ``Guard`` refuses a request that carries an ``Origin`` header (only browsers send one, and
  no web page has any business calling the worker: this stops cross-site POSTs), a ``Host`` that
  is not one of the worker's names (DNS rebinding), and a POST whose body is not declared
  ``application/json`` (415). The worker binds loopback unless ``--host``/``THREEGEN_WORKER_HOST``
  says otherwise; listening on every address turns the Host check off (the names are unknown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .backends.gpu import BackendError
from .worker import BODIES, IF_IDLE, NDJSON, PROGRESS, StageRunner

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
log = logging.getLogger("threegen.worker")


def hostname(host_header: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1', '[::1]:8765' -> '::1', 'Example.com' -> 'example.com'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(bind: str) -> frozenset[str] | None:
    """Host names a request may address the worker by; None (any) when it listens everywhere."""
    if bind in WILDCARD_BINDS:
        return None
    return LOOPBACK | {hostname(bind)}


class Guard:
    """Pure ASGI middleware, outermost: 403 for browsers (``refuse_web_pages``) and foreign hosts, 415
    for non-JSON POSTs (``json_only``), 413 for a declared ``Content-Length`` over ``max_body_bytes``
    before a byte of it is read (a body that grows past it while streaming is stopped by FastAPI's
    ``max_body_size``)."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None, max_body_bytes: int,
                 refuse_web_pages: bool = True, json_only: bool = True, too_large: str = "") -> None:
        self.app, self.hosts, self.max_body_bytes = app, hosts, max_body_bytes
        self.refuse_web_pages, self.json_only = refuse_web_pages, json_only
        self.too_large = too_large or body_too_large(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refusal = self.refusal(scope["method"], headers)
        if refusal:
            status, message = refusal
            headers = {"connection": "close"} if status == 413 else None  # its body is never read
            return await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)
        await self.app(scope, receive, send)

    def refusal(self, method: str, headers: Headers) -> tuple[int, str] | None:
        if self.refuse_web_pages and "origin" in headers:
            return 403, (f"requests from web pages are refused (Origin: {headers['origin'][:100]}): "
                         f"the worker serves the pipeline, not browsers")
        host = hostname(headers.get("host", ""))
        if self.hosts is not None and host not in self.hosts:
            return 403, (f"Host {headers.get('host', '')[:100]!r} is not this worker's "
                         f"(one of {', '.join(sorted(self.hosts))})")
        if method == "POST" and self.json_only:
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type != "application/json":
                return 415, f"the body must be Content-Type: application/json, not {content_type[:100]!r}"
        declared = headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return 413, self.too_large
        return None


def body_too_large(limit: int, what: str = "THREEGEN_WORKER_MAX_BODY_MB") -> str:
    return f"the body is over the {limit:,}-byte limit ({what})"


class DeadlineH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's arrival (see the module's notes) and, if
    asked, a bound on the connections one address holds open: past it a connection is answered 503 at once,
    so one client's idle connections cannot fill uvicorn's ``limit_concurrency`` for everyone."""

    read_timeout_s: float = 30.0
    max_per_client: int | None = None
    _open: Counter  # open connections by client address, one counter per server (``with_timeout``)
    _deadline: asyncio.TimerHandle | None = None
    _waiting_for: Any = None  # the cycle that was current when the deadline was armed
    _address: str | None = None

    @classmethod
    def with_timeout(cls, seconds: float, max_per_client: int | None = None) -> type[DeadlineH11]:
        return type("DeadlineH11", (cls,), {"read_timeout_s": seconds, "max_per_client": max_per_client,
                                            "_open": Counter()})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_per_client is not None:
            self._address = str((transport.get_extra_info("peername") or ("?",))[0])
            self._open[self._address] += 1
            if self._open[self._address] > self.max_per_client:
                body = json.dumps({"error": f"more than {self.max_per_client} open connections from "
                                            f"{self._address}: close some and retry"}).encode()
                transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                transport.close()
                return
        self._arm()

    def on_response_complete(self) -> None:
        self._arm()  # before the parent's pipelined events, which may bring the next request whole
        super().on_response_complete()

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and cycle is not self._waiting_for and not cycle.more_body:
            self._disarm()  # a new request has fully arrived

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._address is not None:
            self._open[self._address] -= 1
            if self._open[self._address] <= 0:
                del self._open[self._address]
            self._address = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_for = self.cycle
        self._deadline = self.loop.call_later(self.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        # answered already: a response (a 413, say) went out while the body was still coming
        answered = self.cycle is not None and self.cycle.response_started and self.conn.their_state is not h11.IDLE
        if not answered:
            body = json.dumps({"error": f"the request did not arrive within {self.read_timeout_s:g} s "
                                        f"(THREEGEN_WORKER_READ_TIMEOUT)"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        client = "%s:%d" % self.client if self.client else "a client"
        log.warning("closed the connection from %s: its request did not arrive within %g s", client,
                    self.read_timeout_s)
        self.transport.close()


@dataclass(frozen=True)
class Limits:
    """How much one request may cost the worker (from Settings: THREEGEN_WORKER_*)."""

    max_body_bytes: int
    read_timeout_s: float
    max_connections: int
    hosts: frozenset[str] | None  # Host names accepted; None: any (the worker listens everywhere)

    @classmethod
    def from_settings(cls, settings, bind: str) -> Limits:
        return cls(max_body_bytes=settings.worker_max_body_mb * 2**20, read_timeout_s=settings.worker_read_timeout_s,
                   max_connections=settings.worker_max_connections, hosts=allowed_hosts(bind))


def _validation_message(stage: str, exc: RequestValidationError, at_most: int = 10) -> str:
    """The first ``at_most`` errors, one clause each (a body of many bad items has as many errors)."""
    errors, parts = exc.errors(), []
    for error in errors[:at_most]:
        field = ".".join(str(p) for p in error.get("loc", ())[1:]) or "body"
        if error.get("type") == "json_invalid":
            where = "" if field == "body" else f" at character {field}"
            parts.append(f"{stage}: the body is not JSON ({error.get('ctx', {}).get('error', 'invalid')}{where})")
        elif error.get("type") == "missing":
            parts.append(f"{stage} needs the field '{field}'")
        else:
            parts.append(f"{stage}: '{field}': {str(error.get('msg', 'invalid')).removeprefix('Value error, ')}")
    more = f" (and {len(errors) - at_most} more)" if len(errors) > at_most else ""
    return "; ".join(parts) + more if parts else f"{stage}: invalid request"


def json_errors(app: FastAPI, name: Callable[[str], str], not_found: Callable[[str], str], too_large: str,
                unparsable: str = "") -> None:
    """Every error of ``app`` as JSON ``{"error": ...}`` in one line: a body that does not validate (400,
    field by field, under the endpoint's ``name(path)``), one FastAPI cannot parse at all (400, with the
    ``unparsable`` hint), an unknown path (404, ``not_found(path)``), a body over the limit (413), and a
    failure no handler expected (500; its traceback still goes to the log)."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(name(request.url.path), exc)}, status_code=400)

    @app.exception_handler(Exception)  # a failure no handler expected: still JSON, still one line (and logged)
    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        message = " ".join(f"{name(request.url.path)}: the server failed: {type(exc).__name__}: {exc}".split())
        return JSONResponse({"error": message[:1000]}, status_code=500)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        path, detail = request.url.path, exc.detail
        if exc.status_code == 404:
            detail = not_found(path)
        elif exc.status_code == 413:
            detail = too_large
        elif exc.status_code == 400:  # FastAPI could not parse the JSON at all (nested too deeply, ...)
            detail = f"{name(path)}: the body cannot be parsed as JSON" + (f" {unparsable}" if unparsable else "")
        return JSONResponse({"error": str(detail)}, status_code=exc.status_code, headers=exc.headers)


def make_app(runner: StageRunner, limits: Limits) -> Guard:
    """The worker's ASGI app: FastAPI routes inside the Guard."""
    app = FastAPI(title="threegen worker", docs_url=None, redoc_url=None, openapi_url=None,
                  max_body_size=limits.max_body_bytes)

    json_errors(app, lambda path: path.removeprefix("/v1/"),
                not_found=lambda path: f"no such endpoint {path}: GET /health, /load, /status; "
                                       f"POST /v1/{{{', '.join(BODIES)}}}",
                too_large=body_too_large(limits.max_body_bytes), unparsable="(nested too deeply?)")

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/load")
    def load() -> dict:
        return runner.load()

    @app.get("/status")
    def status() -> dict:
        return runner.status()

    for stage, body_type in BODIES.items():  # POST /v1/<stage>, its body typed by the stage's wire
        app.post(f"/v1/{stage}", name=stage)(_endpoint(runner, stage, body_type))

    return Guard(app, limits.hosts, limits.max_body_bytes)


def _endpoint(runner: StageRunner, stage: str, body_type: type) -> Any:
    def endpoint(body, request) -> Response:
        if_idle = request.headers.get(IF_IDLE) == "1"
        if request.headers.get(PROGRESS) == "1":
            return _streamed(runner, stage, body, if_idle)
        status, answer = runner.call(stage, body, if_idle=if_idle)
        return JSONResponse(answer, status_code=status)

    # FastAPI reads the body's type here (and hands over the request, for the if-idle and progress headers)
    endpoint.__annotations__ = {"body": body_type, "request": Request, "return": Response}
    return endpoint


class _Reports:
    """A call's progress for the stream: what the backend reports, at most one line a unit per percent (and
    every end), then the call's outcome; read by the response as they come."""

    def __init__(self) -> None:
        self.items: queue.Queue = queue.Queue()
        self._last: dict[str, float] = {}

    def __call__(self, done: int, total: int, unit: str = "steps") -> None:
        fraction = done / total if total > 0 else 0.0
        if done < total and 0 <= fraction - self._last.get(unit, -1.0) < 0.01:  # behind: a new pass of the unit
            return
        self._last[unit] = fraction
        self.items.put(("progress", [int(done), int(total), str(unit)[:100]]))


def _streamed(runner: StageRunner, stage: str, body, if_idle: bool) -> Response:
    """The call in a thread of its own, answered as NDJSON once it holds the GPU: its progress lines, then
    ``{"answer": ...}`` or ``{"error", "status"}``. Refused before it starts (400, 409): a plain JSON answer."""
    reports = _Reports()

    def work() -> None:  # whatever happens, the stream gets its end
        outcome = 500, {"error": "the call ended without an answer"}
        try:
            outcome = runner.call(stage, body, if_idle, reports, lambda: reports.items.put(("start", None)))
        except Exception as exc:  # noqa: BLE001 - answered as the plain call's 500 would be
            outcome = 500, {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            reports.items.put(("end", outcome))

    threading.Thread(target=work, name=f"worker-{stage}", daemon=True).start()
    kind, first = reports.items.get()
    if kind == "end":  # refused or failed before it held the GPU
        return JSONResponse(first[1], status_code=first[0])

    def lines():
        while True:
            kind, item = reports.items.get()
            if kind == "progress":
                yield json.dumps({"progress": item}).encode() + b"\n"
            elif kind == "end":
                status, answer = item
                try:
                    line = json.dumps({"answer": answer} if status == 200 else {**answer, "status": status})
                except (TypeError, ValueError) as exc:  # the plain call's 500, not a broken stream
                    line = json.dumps({"error": f"the answer cannot be sent as JSON: {exc}", "status": 500})
                yield line.encode() + b"\n"
                return

    return StreamingResponse(lines(), media_type=NDJSON)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); OSError (in use, no such address) as BackendError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        raise BackendError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def serve(runner: StageRunner, limits: Limits, sock: socket.socket) -> None:
    """Serve until SIGINT/SIGTERM on uvicorn, with the limits set (h11 heads at most 64 KiB)."""
    config = uvicorn.Config(
        make_app(runner, limits), http=DeadlineH11.with_timeout(limits.read_timeout_s), ws="none", lifespan="off",
        log_level="warning", access_log=False, server_header=False, proxy_headers=False,
        limit_concurrency=limits.max_connections, timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024,
        timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
