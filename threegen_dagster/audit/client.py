"""A client of the miner batch API (SN17-NOW.md section 4) as the validators' orchestrator uses it:
``GET /status?replacements_remaining=k``, ``POST /generate``, ``GET /results``. Every answer is bounded
before it is read whole: JSON answers at most 64 KiB, the results ZIP at most ``zip_bytes`` (never read
past it), at most ``zip_entries`` entries and ``file_bytes`` a file (each entry's declared size checked, and
never more than that read). A ZIP over a limit is refused whole, as the validators refuse it. No Dagster."""

from __future__ import annotations

import io
import json
import re
import time
import zipfile
from dataclasses import dataclass, field

import httpx

MAX_JSON_BYTES = 64 * 1024
FAILED_NAME = "_failed.json"
_ENTRY = re.compile(r"^([A-Za-z0-9_-]{1,128})\.([a-z0-9]{1,8})$")


class ApiError(RuntimeError):
    """The server could not be reached or answered something unusable; one line saying which."""


class ZipRefused(ValueError):
    """A results ZIP the validators would refuse (over a limit, not a ZIP); the message names the limit."""


@dataclass(frozen=True)
class ZipLimits:
    zip_bytes: int = 64 * 2**20
    zip_entries: int = 100
    file_bytes: int = 2**20


@dataclass
class Results:
    files: dict[str, bytes] = field(default_factory=dict)  # stem -> output bytes
    failed: dict[str, str] = field(default_factory=dict)  # stem -> reason, from _failed.json


def parse_zip(data: bytes, limits: ZipLimits) -> Results:
    """The outputs and failures in a results ZIP; ZipRefused when it breaks a limit or is no ZIP."""
    if len(data) > limits.zip_bytes:
        raise ZipRefused(f"the ZIP is {len(data):,} bytes, over the {limits.zip_bytes:,}-byte limit")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ZipRefused(f"not a ZIP: {exc}") from None
    if len(entries) > limits.zip_entries:
        raise ZipRefused(f"the ZIP holds {len(entries)} entries, over the {limits.zip_entries}-entry limit")
    out = Results()
    for info in entries:
        if info.file_size > limits.file_bytes:
            raise ZipRefused(f"{info.filename[:140]} is {info.file_size:,} bytes, over the "
                             f"{limits.file_bytes:,}-byte file limit")
        try:
            with archive.open(info) as handle:
                body = handle.read(limits.file_bytes + 1)  # a lying header never costs more than the limit
        except (zipfile.BadZipFile, ValueError, OSError, NotImplementedError, RuntimeError) as exc:  # encrypted
            raise ZipRefused(f"{info.filename[:140]} cannot be read: {exc}") from None
        if len(body) > limits.file_bytes:
            raise ZipRefused(f"{info.filename[:140]} holds over {limits.file_bytes:,} bytes (its header says "
                             f"{info.file_size:,}): over the file limit")
        if info.filename == FAILED_NAME:
            out.failed.update(_failed(body))
        elif match := _ENTRY.match(info.filename):
            out.files[match.group(1)] = body
    return out


def _failed(body: bytes) -> dict[str, str]:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ZipRefused(f"{FAILED_NAME} is not JSON: {type(exc).__name__}: {exc}") from None
    if not isinstance(document, dict):
        raise ZipRefused(f"{FAILED_NAME} is not a {{stem: reason}} object")
    return {str(k)[:140]: str(v)[:500] for k, v in document.items()}


class BatchClient:
    """One server at ``base_url``; ``token``, when given, goes as a Bearer header (servers never need it)."""

    def __init__(self, base_url: str, timeout_s: float = 30.0, token: str = "") -> None:
        self.base_url, self.timeout_s = base_url.rstrip("/"), timeout_s
        headers = {"Accept-Encoding": "identity", **({"Authorization": f"Bearer {token}"} if token else {})}
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, follow_redirects=False,
                                  trust_env=False, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, limit: int, **kwargs) -> tuple[int, bytes]:
        """(status, at most ``limit`` + 1 bytes of the body as sent), all of it within the timeout: no encoding
        undone (none is asked for: a gzip bomb never inflates here), a server dripping bytes cut off."""
        deadline = time.monotonic() + self.timeout_s
        try:
            with self._http.stream(method, path, **kwargs) as answer:
                encoding = answer.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise ApiError(f"{method} {path} answered in Content-Encoding {encoding[:40]!r}, not asked for")
                body = bytearray()
                for chunk in answer.iter_raw():
                    body += chunk
                    if len(body) > limit:
                        return answer.status_code, bytes(body)  # over the limit: the caller refuses it
                    if time.monotonic() > deadline:
                        raise ApiError(f"{method} {path}: no whole answer within {self.timeout_s:g} s")
                return answer.status_code, bytes(body)
        except httpx.HTTPError as exc:
            raise ApiError(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    def _get(self, path: str, limit: int, params: dict | None = None) -> tuple[int, bytes]:
        return self._request("GET", path, limit, params=params)

    def status(self, replacements_remaining: int | None = None) -> dict:
        params = {} if replacements_remaining is None else {"replacements_remaining": replacements_remaining}
        code, body = self._get("/status", MAX_JSON_BYTES, params)
        if code != 200:
            raise ApiError(f"GET /status answered HTTP {code}")
        if len(body) > MAX_JSON_BYTES:
            raise ApiError(f"GET /status answered more than {MAX_JSON_BYTES:,} bytes")
        try:
            document = json.loads(body)
            if not isinstance(document, dict) or not isinstance(document.get("status"), str):
                raise ValueError("no status field")
        except (ValueError, RecursionError) as exc:
            raise ApiError(f"GET /status answered no status JSON ({exc})") from None
        return document

    def generate(self, prompts: list[dict], seed: int) -> tuple[int, str]:
        """(HTTP status, the answer's first 300 characters); ApiError when no answer came."""
        code, body = self._request("POST", "/generate", 300, json={"prompts": prompts, "seed": seed})
        return code, body[:300].decode("utf-8", "replace")

    def results(self, limits: ZipLimits) -> Results:
        """The complete batch's outputs; ApiError when not 200, ZipRefused when the ZIP breaks a limit."""
        code, body = self._get("/results", limits.zip_bytes)
        if code != 200:
            raise ApiError(f"GET /results answered HTTP {code}: {body[:200].decode('utf-8', 'replace')!r}")
        return parse_zip(body, limits)
