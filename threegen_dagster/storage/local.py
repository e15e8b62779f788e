"""The local store: a directory, atomic writes by rename, conditional writes under a file lock. No Dagster."""

from __future__ import annotations

from collections.abc import Iterator

import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from .base import Conflict, ObjectInfo, StorageError, Store, _tag, check_path, too_large


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.location = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, relative: str) -> Path:
        return self.root.joinpath(*PurePosixPath(check_path(relative)).parts)

    def uri(self, relative: str) -> str:
        return str(self.path(relative))

    def write(self, relative: str, data: bytes, *, if_absent: bool = False, if_match: str | None = None,
              sha256: str | None = None, content_type: str | None = None) -> str:
        target = self.path(relative)
        tag = _tag(data)
        if sha256 is not None and tag != sha256:
            raise StorageError(errno.EIO, f"refusing to write {target}: the bytes do not hash to {sha256}")
        for attempt in range(20):
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
                break
            except (FileNotFoundError, FileExistsError) as exc:
                # a delete pruned the emptied folder (or one above it) while we made it: make it again
                if attempt == 19:
                    raise StorageError(exc.errno, f"cannot write {target}: {exc.strerror}") from exc
            except OSError as exc:
                raise StorageError(exc.errno, f"cannot write {target}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if if_absent:
                os.link(tmp, target)  # atomic create-only: fails if the target exists
                os.unlink(tmp)
            elif if_match is not None:
                with self._lock(target):
                    if not target.is_file() or _tag(target.read_bytes()) != if_match:
                        raise Conflict(errno.EAGAIN, f"{target} changed since it was read")
                    os.replace(tmp, target)
            else:
                os.replace(tmp, target)
        except FileExistsError:
            Path(tmp).unlink(missing_ok=True)
            raise Conflict(errno.EEXIST, f"{target} exists already") from None
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, Conflict):
                raise
            hint = " (the disk is full: free space or point THREEGEN_STORE elsewhere)" if exc.errno == errno.ENOSPC else ""
            raise StorageError(exc.errno, f"cannot write {target}: {exc.strerror}{hint}") from exc
        return tag

    def _lock(self, target: Path):
        """An exclusive advisory lock beside ``target`` (compare-and-swap for local writers)."""
        lock_path = target.with_name(f".{target.name}.lock")

        class _Held:
            def __enter__(self_inner):
                self_inner.fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
                fcntl.flock(self_inner.fd, fcntl.LOCK_EX)

            def __exit__(self_inner, *exc):
                fcntl.flock(self_inner.fd, fcntl.LOCK_UN)
                os.close(self_inner.fd)

        return _Held()

    def read_tagged(self, relative: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        data = self.read(relative, max_bytes=max_bytes)
        return data, _tag(data)

    def read(self, relative: str, max_bytes: int | None = None) -> bytes:
        target = self.path(relative)
        try:
            with target.open("rb") as f:
                if max_bytes is None:
                    return f.read()
                size = os.fstat(f.fileno()).st_size
                data = f.read(max_bytes + 1) if size <= max_bytes else b""
        except FileNotFoundError:
            raise StorageError(errno.ENOENT, f"missing from the store: {target}") from None
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot read {target}: {exc.strerror}") from exc
        if size > max_bytes or len(data) > max_bytes:  # too large, or grew past the bound since the fstat
            raise too_large(str(target), max(size, len(data)), max_bytes)
        return data

    def stat(self, relative: str) -> ObjectInfo | None:
        try:
            st = self.path(relative).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(relative, st.st_size, st.st_mtime)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.path(prefix)
        if not base.is_dir():
            return iter(())
        infos = []
        for dirpath, _, names in os.walk(base):
            for name in names:
                if name.startswith("."):  # temp files and locks
                    continue
                full = Path(dirpath, name)
                try:
                    st = full.stat()
                except FileNotFoundError:
                    continue
                infos.append(ObjectInfo(full.relative_to(self.root).as_posix(), st.st_size, st.st_mtime))
        return iter(sorted(infos, key=lambda i: i.path))

    def delete(self, relative: str) -> int:
        target = self.path(relative)
        try:
            freed = target.stat().st_size
            target.unlink()
        except FileNotFoundError:
            return 0
        target.with_name(f".{target.name}.lock").unlink(missing_ok=True)
        self._prune(target.parent)
        return freed

    def delete_prefix(self, prefix: str) -> int:
        base = self.path(prefix)
        if not base.is_dir():
            return 0
        freed = sum(info.size for info in self.list(prefix))
        shutil.rmtree(base)
        self._prune(base.parent)
        return freed

    def _prune(self, folder: Path) -> None:
        """Remove ``folder`` and then its parents while they are empty, up to the root, so a released
        hold or a dropped version leaves no empty folder behind (a writer racing it retries, see write)."""
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone already): the folders above are not empty either
                return
            folder = folder.parent
