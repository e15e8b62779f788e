"""Where artifacts, manifests and the ledger live: a local directory or an S3 bucket, one interface.

Paths are relative, '/'-separated and free of '..'. Both stores write atomically: locally a
temporary file in the same directory is flushed, fsynced and renamed over the target; on S3 an
object appears whole or not at all, and every PUT carries a SHA-256 the server verifies. Both
offer conditional writes (create-only, or replace only the version read), which is what lets
several workers share one ledger without losing updates. No Dagster imports.
"""

from __future__ import annotations

import errno
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath


HASH_CHUNK = 1 << 20
MULTIPART_THRESHOLD = 64 * 2**20
"""Objects larger than this go up to S3 as multipart uploads."""


class StorageError(OSError):
    """A store operation that failed; the message names the object and what to do."""


class Conflict(StorageError):
    """A conditional write lost: the object exists (create-only) or changed since it was read."""


class TooLarge(StorageError):
    """A read bounded by ``max_bytes`` met a larger object (``size`` bytes); none of it was kept."""

    size: int = 0


def too_large(where: str, size: int, max_bytes: int) -> TooLarge:
    error = TooLarge(errno.EFBIG, f"not read: {where} is {size:,} bytes, over the {max_bytes:,} this read allows")
    error.size = size
    return error


@dataclass(frozen=True)
class ObjectInfo:
    path: str
    size: int
    modified: float  # unix seconds


def check_path(relative: str) -> str:
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts or "\\" in relative or relative.endswith("/"):
        raise StorageError(errno.EINVAL, f"not a store path: {relative!r}")
    return relative


def _tag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Store:
    """The interface both stores implement; ``update_json`` is built on it."""

    def write(self, relative: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None,
              sha256: str | None = None, content_type: str | None = None) -> str:
        """Write ``data``; return its version tag. ``if_absent``: fail with Conflict if the object
        exists. ``if_match``: fail with Conflict unless the object is still at that tag."""
        raise NotImplementedError

    def read_tagged(self, relative: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """The bytes and their version tag. ``max_bytes``: a larger object is TooLarge, and never more
        than that is read, so a damaged or hostile object cannot fill memory."""
        raise NotImplementedError

    def read(self, relative: str, max_bytes: int | None = None) -> bytes:
        return self.read_tagged(relative, max_bytes=max_bytes)[0]

    def read_hashed(self, relative: str) -> tuple[bytes, str]:
        """The bytes and their SHA-256 (hex)."""
        data = self.read(relative)
        return data, hashlib.sha256(data).hexdigest()

    def stat(self, relative: str) -> ObjectInfo | None:
        raise NotImplementedError

    def holds(self, relative: str, data: bytes, sha256: str) -> bool | None:
        """Whether the object holds exactly ``data`` (whose SHA-256 is ``sha256``): None when it
        is absent, False when it holds other bytes or cannot be verified cheaply."""
        info = self.stat(relative)
        if info is None:
            return None
        if info.size != len(data):
            return False
        try:
            return self.read_hashed(relative)[1] == sha256
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def clock(self) -> float:
        """Now on the store's own clock, the one its objects' ``modified`` times are on."""
        return time.time()

    def exists(self, relative: str) -> bool:
        return self.stat(relative) is not None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under the folder ``prefix``, sorted by path."""
        raise NotImplementedError

    def delete(self, relative: str) -> int:
        """Remove one object; the bytes freed (0 if it was not there)."""
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        return sum(self.delete(info.path) for info in list(self.list(prefix)))

    location = ""  # the root as a person would write it: a directory, or s3://bucket/prefix
    cheap_stat = True  # False where asking "is it there?" costs a network round trip

    def uri(self, relative: str) -> str:
        raise NotImplementedError

    def url(self, relative: str, expires_s: int, filename: str | None = None) -> str | None:
        """A link a person can open (presigned on S3); None where there is none to give."""
        return None

    def update_json(self, relative: str, change: Callable[[dict | None], dict], attempts: int = 50) -> dict:
        """Read-modify-write one JSON object without losing a concurrent writer's update:
        ``change`` gets the current value (None if absent) and returns the new one; if another
        writer got in between, the read and ``change`` are repeated."""
        for attempt in range(attempts):
            try:
                data, tag = self.read_tagged(relative)
                current = json.loads(data)
            except StorageError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                current, tag = None, None
            new = change(current)
            body = json.dumps(new, indent=1, sort_keys=True).encode()
            try:
                self.write(relative, body, if_absent=tag is None, if_match=tag,
                           content_type="application/json")
                return new
            except Conflict:
                time.sleep(min(0.002 * 2 ** attempt, 0.1))
        raise Conflict(errno.EAGAIN, f"{self.uri(relative)}: still contended after {attempts} attempts")
