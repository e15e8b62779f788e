"""``threegen view``: a read-only HTTP server on loopback over the store, for people (the list of
generations, each one's viewer page) and for programs (the same as JSON and files):

- ``GET /``: the generations, newest first, each linked to its viewer; ``GET /api/generations``: as JSON,
  one page at a time, filtered as ``threegen search`` filters (``?text=&words=&status=&min_score=&max_score=
  &since=&until=&limit=&offset=``; ``search.py``), answering ``{"total", "offset", "limit", "next_offset",
  "generations"}``
- ``GET /g/{key}``: the generation's viewer page (``viewer.html``)
- ``GET /api/generations/{key}``: its ledger entry and each stage's latest version (size, sha256,
  metadata, download path); ``GET /api/generations/{key}/{asset}[?version=N]``: the bytes, hash-verified,
  with the asset's content type and file name
- ``GET /api/stats``: what ``threegen stats --json`` prints; ``GET /api/health`` (and ``/health``)

Keys and assets are checked at the edge (the key pattern, the stage list) before the store is read;
anything unknown is a 404 with a JSON ``{"error": ...}`` naming it. Only GET and HEAD; a ``Host``
that is not loopback is refused (DNS rebinding); requests must arrive within 30 s and at most 32
connections are served at once (the worker's guards, ``worker_http``). No Dagster imports."""

from __future__ import annotations

import errno
import html
import socket
from dataclasses import asdict

import uvicorn
from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..artifacts import CONTENT_TYPES, EXTENSIONS, ArtifactStore
from ..catalog import STAGES
from ..catalog_index import store_stats
from ..keys import is_generation_key
from ..ledger import Ledger, UnknownGeneration
from ..search import DEFAULT_LIMIT, MAX_LIMIT, MAX_OFFSET, MAX_TEXT_CHARS, SearchError, SearchQuery, load_rows, \
    search
from ..storage import StorageError
from ..worker_http import LOOPBACK, DeadlineH11, hostname
from .page import CONTENT_TYPE, viewer_html

HOST = "127.0.0.1"
READ_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 32
MAX_VERSION = 999_999
MAX_KEY_CHARS = 200  # the longest key keys.py makes is 121 characters; a file name holds 255 bytes
PAGE_CSP = ("default-src 'none'; script-src 'unsafe-inline' data: blob: 'wasm-unsafe-eval'; worker-src blob: data:; "
            "img-src data: blob:; style-src 'unsafe-inline'; connect-src data: blob:")
LIST_CSP = "default-src 'none'; style-src 'unsafe-inline'"
_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-store"}


class ReadOnlyGuard:
    """Pure ASGI middleware, outermost: 405 for anything but GET and HEAD, 403 for a ``Host`` that
    is not a loopback name (a page on another site that rebinds its DNS name to 127.0.0.1)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host", "")
            if scope["method"] not in ("GET", "HEAD"):
                answer = JSONResponse({"error": f"{scope['method'][:20]} is not served: this server is read-only "
                                                f"(GET and HEAD)"}, status_code=405, headers={"allow": "GET, HEAD"})
                return await answer(scope, receive, send)
            if hostname(host) not in LOOPBACK:
                answer = JSONResponse({"error": f"Host {host[:100]!r} is not this server's (one of "
                                                f"{', '.join(sorted(LOOPBACK))})"}, status_code=403)
                return await answer(scope, receive, send)
        await self.app(scope, receive, send)


def _checked(key: str, asset: str | None = None) -> None:
    if len(key) > MAX_KEY_CHARS:
        raise HTTPException(404, f"{key[:120]!r}... is not a generation key: at most {MAX_KEY_CHARS} characters")
    if not is_generation_key(key):
        raise HTTPException(404, f"{key[:120]!r} is not a generation key (like 'a-wooden-chair-3f2a9c1b0d-s42')")
    if asset is not None and asset not in STAGES:
        raise HTTPException(404, f"no asset {asset[:60]!r}: one of {', '.join(STAGES)}")


def _row_link(row: dict) -> str:
    key = html.escape(str(row["key"]))
    cells = "".join(f"<td>{html.escape(str(row.get(c)) if row.get(c) is not None else '')}</td>"
                    for c in ("prompt", "seed", "status", "score", "created"))
    if row.get("status") == "unreadable":
        return f"<tr><td>{key}</td>{cells}</tr>"
    return f'<tr><td><a href="/g/{key}">{key}</a></td>{cells}</tr>'


def _list_page(rows: list[dict], location: str) -> str:
    body = "".join(_row_link(r) for r in rows) or '<tr><td colspan="6">no generations yet</td></tr>'
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>threegen generations</title>"
            "<style>body{font:14px system-ui,sans-serif;margin:16px}td,th{padding:3px 8px;text-align:left;"
            "border-bottom:1px solid #ddd}</style></head><body>"
            f"<h1>Generations</h1><p>store {html.escape(location)} · JSON: <a href=/api/generations>/api/generations</a>, "
            "<a href=/api/stats>/api/stats</a></p><table><tr><th>key</th><th>prompt</th><th>seed</th><th>status</th>"
            f"<th>score</th><th>created</th></tr>{body}</table></body></html>")


def make_app(artifacts: ArtifactStore, ledger: Ledger) -> ReadOnlyGuard:
    app = FastAPI(title="threegen view", docs_url=None, redoc_url=None, openapi_url=None)

    def get(path: str):  # every page answers HEAD too (uvicorn sends its headers without the body)
        return app.api_route(path, methods=["GET", "HEAD"])

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else \
            f"no such page {request.url.path[:120]}: /, /g/KEY, /api/generations[/KEY[/ASSET]], /api/stats, /api/health"
        return JSONResponse({"error": str(detail)}, status_code=exc.status_code, headers=_HEADERS)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        said = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors())
        return JSONResponse({"error": said}, status_code=400, headers=_HEADERS)

    @app.exception_handler(UnknownGeneration)
    async def _unknown(request: Request, exc: UnknownGeneration) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=404, headers=_HEADERS)

    @app.exception_handler(StorageError)
    async def _storage(request: Request, exc: StorageError) -> JSONResponse:
        status = 404 if exc.errno == errno.ENOENT else 500  # no such version, pruned: else a damaged store
        return JSONResponse({"error": str(exc)}, status_code=status, headers=_HEADERS)

    def catalog() -> list[dict]:
        return load_rows(artifacts, ledger)

    @app.exception_handler(SearchError)
    async def _bad_search(request: Request, exc: SearchError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=400, headers=_HEADERS)

    @get("/health")
    @get("/api/health")
    def health() -> JSONResponse:
        return JSONResponse({"ok": True, "store": artifacts.store.location}, headers=_HEADERS)

    @get("/")
    def index() -> HTMLResponse:
        return HTMLResponse(_list_page(catalog(), artifacts.store.location),
                            headers={**_HEADERS, "content-security-policy": LIST_CSP})

    @get("/api/generations")
    def generations(text: str = Query("", max_length=MAX_TEXT_CHARS), words: bool = False,
                    status: str = Query("", max_length=40), min_score: float | None = Query(None, ge=0, le=1),
                    max_score: float | None = Query(None, ge=0, le=1), since: str | None = Query(None, max_length=40),
                    until: str | None = Query(None, max_length=40),
                    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
                    offset: int = Query(0, ge=0, le=MAX_OFFSET)) -> JSONResponse:
        query = SearchQuery(text=text, whole_words=words, status=status, min_score=min_score, max_score=max_score,
                            since=since, until=until, limit=limit, offset=offset)  # SearchError: a 400 naming it
        return JSONResponse(search(catalog(), query).to_dict(), headers=_HEADERS)

    @get("/api/stats")
    def stats() -> JSONResponse:
        totals = store_stats(artifacts, ledger)  # the catalog index, as `threegen stats --json`
        return JSONResponse(totals, headers=_HEADERS)

    @get("/g/{key}")
    def page(key: str) -> Response:
        _checked(key)
        return Response(viewer_html(artifacts, ledger, key), media_type=CONTENT_TYPE,
                        headers={**_HEADERS, "content-security-policy": PAGE_CSP})

    @get("/api/generations/{key}")
    def generation(key: str) -> JSONResponse:
        _checked(key)
        entry = ledger.get(key)
        stages, unreadable = {}, {}
        for stage in STAGES:
            try:
                m = artifacts.latest(key, stage)
            except StorageError as exc:
                unreadable[stage] = str(exc)
                continue
            if m is not None:
                stages[stage] = {"version": m.version, "bytes": m.bytes, "sha256": m.sha256, "format": m.format,
                                 "written_at": m.written_at, "run_id": m.run_id, "pruned": m.pruned_at is not None,
                                 "metadata": m.metadata, "download": f"/api/generations/{key}/{stage}"}
        return JSONResponse({"generation": asdict(entry), "viewer": f"/g/{key}", "stages": stages,
                             "unreadable": unreadable}, headers=_HEADERS)

    @get("/api/generations/{key}/{asset}")
    def download(key: str, asset: str, version: int | None = Query(None, ge=1, le=MAX_VERSION)) -> Response:
        _checked(key, asset)
        ledger.get(key)
        manifest, data = artifacts.load(key, asset, version)
        ext = EXTENSIONS[asset]  # the file name from the checked arguments, never from the record
        return Response(data, media_type=CONTENT_TYPES[ext], headers={
            **_HEADERS, "content-disposition": f'attachment; filename="{key}-{asset}.{ext}"',
            "x-threegen-version": str(manifest.version), "x-threegen-sha256": manifest.sha256})

    return ReadOnlyGuard(app)


def serve(artifacts: ArtifactStore, ledger: Ledger, sock: socket.socket) -> None:
    """Serve on ``sock`` (from ``worker_http.bind``, on loopback) until SIGINT/SIGTERM."""
    config = uvicorn.Config(
        make_app(artifacts, ledger), http=DeadlineH11.with_timeout(READ_TIMEOUT_S), ws="none", lifespan="off",
        log_level="warning", access_log=False, server_header=False, proxy_headers=False,
        limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024,
        timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
