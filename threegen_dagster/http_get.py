"""One HTTP GET whose every byte arrives within one deadline and one size bound: the connection, the status
line and headers, the body, however slowly a server sends them. A socket timeout bounds a single read, so a
server dripping a byte a second never trips it; here a timer shuts the connection's socket down when the
time is up, which ends a read blocked on it at once. http(s) only, redirects (when followed) to http(s)
only, no proxies from the environment, no compressed encoding asked for. No Dagster imports."""

from __future__ import annotations

import http.client
import socket
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

CHUNK = 64 * 1024


class TooLarge(ValueError):
    """The body is (or says it is) over the bound; the message says how much."""


class Deadline:
    """Shuts down every socket it watches once ``seconds`` have passed since it was entered."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.expired = seconds, False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed already
        pass


def _watched(base: type[http.client.HTTPConnection], deadline: Deadline) -> type[http.client.HTTPConnection]:
    class Watched(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)

    return Watched


class _Http(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req):
        return self.do_open(_watched(http.client.HTTPConnection, self.deadline), req)


class _Https(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req):
        return self.do_open(_watched(http.client.HTTPSConnection, self.deadline), req, context=self._context)


class _Redirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urlsplit(newurl).scheme
        if scheme not in ("http", "https"):
            raise urllib.error.HTTPError(req.full_url, code, f"a redirect to {scheme}:// is not followed", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def get(url: str, *, max_bytes: int, timeout_s: float, headers: dict[str, str] | None = None,
        redirects: bool = True) -> bytes:
    """The body of ``url``, at most ``max_bytes``, all of it within ``timeout_s``. TooLarge past the bound;
    ``urllib.error.HTTPError`` for an answer that is not a success (a 3xx too, when ``redirects`` is off);
    TimeoutError when the time ran out; another OSError (``URLError`` among them) when no answer came."""
    if urlsplit(url).scheme not in ("http", "https"):
        raise urllib.error.URLError(f"not an http(s) URL: {url[:100]!r}")
    request = urllib.request.Request(url, headers={"Accept-Encoding": "identity", **(headers or {})})
    with Deadline(timeout_s) as deadline:
        opener = urllib.request.OpenerDirector()
        for handler in (_Http(deadline), _Https(deadline), *((_Redirects(),) if redirects else ()),
                        urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):
            opener.add_handler(handler)
        try:
            with opener.open(request, timeout=timeout_s) as answer:
                declared = answer.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise TooLarge(f"{int(declared):,} bytes; the limit is {max_bytes:,}")
                body = bytearray()
                while chunk := answer.read1(min(CHUNK, max_bytes + 1 - len(body))):  # one socket read at most
                    body += chunk
                    if len(body) > max_bytes:
                        raise TooLarge(f"over {max_bytes:,} bytes; the limit is {max_bytes:,}")
                if answer.length and not deadline.expired:  # the connection closed before the length it declared
                    raise ConnectionError(f"the body stopped after {len(body):,} of {declared} bytes")
        except (OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise TimeoutError(f"timed out: no whole answer within {timeout_s:g} s") from None
            if isinstance(exc, http.client.HTTPException):  # a broken status line or headers
                raise ConnectionError(f"{type(exc).__name__}: {exc}") from None
            raise
        if deadline.expired:  # the socket shut down mid-body reads as its end
            raise TimeoutError(f"timed out: no whole answer within {timeout_s:g} s")
        return bytes(body)
