"""The batch API's HTTP server: FastAPI on uvicorn with the worker's edge (``worker_http``: ``Guard``
refuses a declared body over the limit before it is read and, when bound to one address (a workstation's
loopback), browsers and foreign Host names; ``DeadlineH11`` bounds each request's arrival; FastAPI's
``max_body_size`` stops a chunked body that grows past it). Every error is JSON ``{"error": ...}``.

The validators' orchestrator is a program, not a browser, and any answer but 200 to its POST costs the
miner a pod: so the body of ``POST /generate`` is read as JSON whatever its ``Content-Type`` says (or
without one), and bound to every address (in the validators' pod) an ``Origin`` header is no reason to
refuse. No Dagster imports.

    GET  /health                                  200 {"ok": true} as soon as the server listens
    GET  /status?replacements_remaining=k         {"status", "progress", "total", "payload"}
    POST /generate {"prompts": [{"stem", "image_url"}], "seed"}   200 {"accepted": n}; 400, 409, 503
    GET  /results                                 409 unless complete; a streamed ZIP (results.py)

A ``Authorization: Bearer ...`` header is accepted and never required (nor read, nor logged).
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.requests import Request

from ..worker_http import DeadlineH11, Guard, body_too_large, json_errors
from .batch import BatchBook, GenerateRequest, Refused
from .results import plan, stream

ENDPOINTS = "GET /health, GET /status, POST /generate, GET /results"


def make_app(book: BatchBook, read: Callable[[str, str, int], bytes], ext: str, hosts: frozenset[str] | None) -> Guard:
    """The ASGI app: ``read(stem, key, version)`` gives a done stem's output; ``ext`` names the files."""
    limits = book.limits
    app = FastAPI(title="threegen serve", docs_url=None, redoc_url=None, openapi_url=None,
                  max_body_size=limits.body_bytes)

    too_large = body_too_large(limits.body_bytes, "threegen serve")
    json_errors(app, lambda path: path.strip("/"), not_found=lambda path: f"no such endpoint {path[:100]}: {ENDPOINTS}",
                too_large=too_large)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/status")
    def status(replacements_remaining: str | None = None) -> dict:
        # only echoed back: a value that is not a count is left out, never a refused poll (18 cost the pod)
        count = replacements_remaining.strip() if replacements_remaining else ""
        return book.status(int(count) if count.isdecimal() and len(count) <= 6 else None)

    @app.post("/generate")
    async def generate(request: Request) -> dict:
        body = await request.body()  # the body as JSON whatever its Content-Type (bounded while it arrives)
        return {"accepted": await run_in_threadpool(submit, body)}

    def submit(body: bytes) -> int:  # in a thread: validating a body is work the event loop must not wait on
        try:
            request = GenerateRequest.model_validate_json(body)
        except ValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]) from None
        return book.submit(request)

    @app.get("/results")
    def results() -> StreamingResponse:
        batch = book.completed()
        zip_plan = plan(batch, read, ext, limits)  # every read and limit before the first byte goes out
        return StreamingResponse(stream(zip_plan), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="{batch.id}.zip"', "X-Batch": batch.id,
            "X-Failed": str(len(zip_plan.failed))})

    return Guard(app, hosts, limits.body_bytes, refuse_web_pages=hosts is not None, json_only=False,
                 too_large=too_large)


MAX_CONNECTIONS, MAX_PER_CLIENT = 512, 8
"""Open connections in all, and from one address: idle ones cost little, and one client holding many
(half-sent heads, each allowed THREEGEN_WORKER_READ_TIMEOUT to arrive) must not shut the orchestrator out."""


def serve(app: Guard, sock: socket.socket, read_timeout_s: float = 30.0) -> None:
    """Serve until SIGINT/SIGTERM on uvicorn, on the worker's protocol (heads at most 64 KiB)."""
    server(app, read_timeout_s).run(sockets=[sock])


def server(app: Guard, read_timeout_s: float = 30.0) -> uvicorn.Server:
    config = uvicorn.Config(
        app, http=DeadlineH11.with_timeout(read_timeout_s, MAX_PER_CLIENT), ws="none", lifespan="off",
        log_level="warning", access_log=False, server_header=False, proxy_headers=False,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024, timeout_graceful_shutdown=5)
    return uvicorn.Server(config)
