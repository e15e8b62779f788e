"""Where artifacts, their manifests and the ledger live: a local directory with atomic writes.

Paths are relative, '/'-separated and free of '..'. A write goes to a temporary file in
the same directory, is flushed and fsynced, then renamed over the target, so a reader
never sees half a file and a failed write (a full disk, say) leaves nothing behind.
No Dagster imports.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath


class StorageError(OSError):
    """A store operation that failed; the message names the path and what to do."""


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, relative: str) -> Path:
        parts = PurePosixPath(relative).parts
        if not parts or relative.startswith("/") or ".." in parts or "\\" in relative:
            raise StorageError(errno.EINVAL, f"not a store path: {relative!r}")
        return self.root.joinpath(*parts)

    def uri(self, relative: str) -> str:
        return str(self.path(relative))

    def write(self, relative: str, data: bytes) -> Path:
        target = self.path(relative)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write {target}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            hint = " (the disk is full: free space or point THREEGEN_STORE elsewhere)" if exc.errno == errno.ENOSPC else ""
            raise StorageError(exc.errno, f"cannot write {target}: {exc.strerror}{hint}") from exc
        return target

    def read(self, relative: str) -> bytes:
        target = self.path(relative)
        try:
            return target.read_bytes()
        except FileNotFoundError:
            raise StorageError(errno.ENOENT, f"missing from the store: {target}") from None
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot read {target}: {exc.strerror}") from exc

    def exists(self, relative: str) -> bool:
        return self.path(relative).is_file()

    def size(self, relative: str) -> int:
        return self.path(relative).stat().st_size

    def list(self, prefix: str) -> Iterator[str]:
        """Relative paths of the files under ``prefix`` (a directory), sorted; temp files skipped."""
        base = self.path(prefix)
        if not base.is_dir():
            return iter(())
        return iter(sorted(str(p.relative_to(self.root).as_posix()) for p in base.rglob("*")
                           if p.is_file() and not p.name.endswith(".tmp")))

    def delete(self, relative: str) -> int:
        """Remove one file or a whole directory; the bytes freed."""
        target = self.path(relative)
        if target.is_dir():
            freed = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
            shutil.rmtree(target)
            return freed
        if target.is_file():
            freed = target.stat().st_size
            target.unlink()
            return freed
        return 0
