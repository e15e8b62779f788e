"""The task inbox on disk: listing it at bounded cost, reading one entry at bounded cost without
following links or blocking, and setting entries aside (``accepted/``, ``rejected/``,
``duplicate/``) without following links. No Dagster imports.

Everything goes through file descriptors of the inbox and its sub-folders (``dir_fd``), so a
link planted in the inbox, or in place of a sub-folder or an error file, is never followed:

- an entry is read only if ``lstat`` says it is a regular file, and is opened with
  ``O_NOFOLLOW | O_NONBLOCK`` (a link swapped in meanwhile fails to open, a FIFO never blocks) and
  checked again with ``fstat``; at most ``max_bytes + 1`` bytes are ever read;
- folders, links, FIFOs, sockets and devices are never opened: they are renamed aside as they
  are (``rename`` moves a link, not its target);
- a sub-folder is opened with ``O_DIRECTORY | O_NOFOLLOW``: a link in its place is refused;
- error files are created with ``O_CREAT | O_EXCL | O_NOFOLLOW``: never written through a link,
  never over an existing file.
"""

from __future__ import annotations

import errno
import hashlib
import heapq
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from .tasks import MAX_TASK_BYTES

ACCEPTED, REJECTED, DUPLICATE = "accepted", "rejected", "duplicate"
SUFFIX = ".json"
MAX_REASON_CHARS = 2000
NAME_MAX = 255  # bytes in a file name (Linux)
# what may follow a name set aside: the error file's suffix, with the time of a collision before it
_ROOM = len(".1234567890123456789.error.txt")
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_ERROR_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class EntryError(ValueError):
    """An inbox entry that is not a readable task file; the message says why."""


class InboxError(OSError):
    """An entry that cannot be set aside (the message says why); it stays where it is."""


@dataclass(frozen=True)
class Entry:
    name: str
    data: bytes
    file_id: str  # "<inode>-<sha256 of the bytes>": tells this file from another with the same task id


def kind_of(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    return ("a folder" if stat.S_ISDIR(mode) else "a symbolic link (links are never followed)"
            if stat.S_ISLNK(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")


class Inbox:
    """One tick's view of the inbox folder: ``with Inbox(path) as box: ...``."""

    def __init__(self, folder: Path, max_bytes: int = MAX_TASK_BYTES) -> None:
        self.folder, self.max_bytes = Path(folder), max_bytes
        self.fd = -1
        self._subfolders: dict[str, int] = {}

    def __enter__(self) -> Inbox:
        self.folder.mkdir(parents=True, exist_ok=True)  # the inbox itself is the operator's: it may be a link
        self.fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self

    def __exit__(self, *exc) -> None:
        for fd in [*self._subfolders.values(), self.fd]:
            os.close(fd)
        self._subfolders.clear()
        self.fd = -1

    def names(self, limit: int) -> list[str]:
        """The first ``limit`` task-file names in name order. One pass over the folder, names only
        (no stat, no read), keeping at most ``limit`` in memory: a huge inbox costs a listing, not more.
        Hidden names (``.x.json``) are left alone: a writer's file in progress."""
        with os.scandir(self.fd) as entries:
            return heapq.nsmallest(limit, (e.name for e in entries
                                           if e.name.endswith(SUFFIX) and not e.name.startswith(".")))

    def read(self, name: str) -> Entry | None:
        """The entry's bytes, or None if it is gone; EntryError if it is not a task file we may read."""
        if shown(name) != name:  # it names the run in a tag: text only
            raise EntryError("the file name is not printable UTF-8 text; rename it")
        try:
            mode = os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(mode):
            raise EntryError(f"{kind_of(mode)}, not a task file; it was not opened")
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
        except FileNotFoundError:
            return None
        except OSError as exc:  # ELOOP: a link swapped in since the lstat
            raise EntryError(f"cannot be opened: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise EntryError(f"{kind_of(info.st_mode)}, not a task file")
            if info.st_size > self.max_bytes:
                raise EntryError(f"task file is {info.st_size:,} bytes, over the {self.max_bytes:,} limit")
            chunks, left = [], self.max_bytes + 1
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
        except OSError as exc:
            raise EntryError(f"cannot be read: {exc.strerror}") from None
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if len(data) > self.max_bytes:  # it grew while being read
            raise EntryError(f"task file is over the {self.max_bytes:,} byte limit")
        return Entry(name, data, f"{info.st_ino}-{hashlib.sha256(data).hexdigest()}")

    def set_aside(self, name: str, into: str, reason: str = "") -> str:
        """Move the entry (whatever it is) into the sub-folder ``into``, under a name not taken there
        (shortened if need be: see ``fitted``), with ``<name>.error.txt`` holding ``reason`` if one is
        given; returns the name it got. InboxError if it cannot be moved (it is then left where it is),
        or if its error file cannot be written: any OSError, so that the caller counts the entry as
        stuck, never as a failed tick."""
        sub = self._subfolder(into)
        try:
            target = fitted(name)
            while _exists(target, sub) or (reason and _exists(f"{target}.error.txt", sub)):
                target = fitted(name, str(time.time_ns()))
            os.rename(name, target, src_dir_fd=self.fd, dst_dir_fd=sub)
        except OSError as exc:
            raise InboxError(exc.errno, f"cannot move {name!r} into {into}/: {exc.strerror}") from None
        if reason:
            try:
                self._write_error(sub, target, reason)
            except OSError as exc:
                raise InboxError(exc.errno, f"moved into {into}/ as {target!r}, but its error file could not "
                                            f"be written: {exc.strerror}") from None
        return target

    def _write_error(self, sub: int, target: str, reason: str) -> None:
        text = (reason[:MAX_REASON_CHARS] + "\n").encode("utf-8", "replace")
        name = f"{target}.error.txt"
        while True:
            try:
                fd = os.open(name, _ERROR_FILE, 0o644, dir_fd=sub)
                break
            except FileExistsError:  # planted since we looked (a file or a link): never write through it
                name = f"{target}.{time.time_ns()}.error.txt"
        try:
            os.write(fd, text)
        finally:
            os.close(fd)

    def _subfolder(self, into: str) -> int:
        if into not in self._subfolders:
            try:
                os.mkdir(into, 0o755, dir_fd=self.fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise InboxError(exc.errno, f"cannot create {into}/ in the inbox: {exc.strerror}") from None
            try:
                self._subfolders[into] = os.open(into, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                                 dir_fd=self.fd)
            except OSError as exc:
                why = ("not a folder; links are not followed" if exc.errno in (errno.ELOOP, errno.ENOTDIR)
                       else exc.strerror)
                raise InboxError(exc.errno, f"cannot use {into}/ in the inbox ({why}): fix or remove it") from None
        return self._subfolders[into]


def fitted(name: str, tag: str = "") -> str:
    """``name``, with ``-tag`` before its suffix if given, short enough (in bytes) that an error file beside it
    stays within NAME_MAX: a name too long keeps the start of its stem and gains a short hash of the whole
    name, so two long names that start alike stay apart."""
    stem = name.removesuffix(SUFFIX)
    suffix, tail = name[len(stem):], f"-{tag}" if tag else ""
    if len(os.fsencode(stem + tail + suffix)) <= NAME_MAX - _ROOM:
        return stem + tail + suffix
    tail = f"-{hashlib.sha256(os.fsencode(name)).hexdigest()[:12]}{tail}{suffix}"
    while len(os.fsencode(stem + tail)) > NAME_MAX - _ROOM:
        stem = stem[:-1]  # characters, not bytes: a multi-byte character is never cut in half
    return stem + tail


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def shown(name: str) -> str:
    """The name for logs and tags: as it is if it is printable UTF-8, else escaped (undecodable bytes in a
    file name come back from the OS as lone surrogates, which no log or database would take)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return ascii(name)
    return name if name.isprintable() else ascii(name)
