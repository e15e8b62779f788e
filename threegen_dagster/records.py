"""Reading the store's small JSON records (version manifests, ledger entries) so that one bad
record never blocks the rest: each record is parsed and checked against its schema in one
place, and a record that fails becomes a ``CorruptRecord``, a one-line error naming it, which
whole-store views (catalog, stats, retention) collect and report instead of raising. No Dagster
imports.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterable
from typing import Annotated, TypeVar

from pydantic import Field, StringConstraints, TypeAdapter, ValidationError

from .keys import KEY_PATTERN
from .storage import StorageError, Store, TooLarge

T = TypeVar("T")
I = TypeVar("I")

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,100}$")]  # an asset
Extension = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]{1,8}$")]
Count = Annotated[int, Field(ge=0)]
GenerationKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN.pattern)]
MAX_RECORD_BYTES = 2**20  # a version record or ledger entry is a few KB; a larger object here is not one
_SHA_IN_TEXT = re.compile(rb"[0-9a-f]{64}")


class CorruptRecord(StorageError):
    """A stored record that cannot be parsed, fails its schema, or contradicts where it is stored.
    ``path`` is the record's store path; ``reason`` says what is wrong with it."""

    path: str = ""
    reason: str = ""
    named: frozenset[str] = frozenset()  # the sha256s its bytes still name (see ``named_shas``)

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]"
        return self.strerror


def corrupt(path: str, uri: str, reason: str) -> CorruptRecord:
    error = CorruptRecord(errno.EBADMSG, f"bad record {uri}: {reason}; fix or delete it "
                                         f"(the rest of the store is unaffected)")
    error.path, error.reason = path, reason
    return error


def check_size(size: int | None, path: str, uri: str, limit: int = MAX_RECORD_BYTES) -> None:
    """Refuse a record too large to be one before reading it (``size`` from a listing)."""
    if size is not None and size > limit:
        raise corrupt(path, uri, f"it is {size:,} bytes, not a record (at most {limit:,}); not read")


def read_record(store: Store, path: str, size: int | None = None, limit: int = MAX_RECORD_BYTES) -> bytes:
    """The record's bytes, never more than ``limit`` of them read: a larger object, by its listing's
    ``size`` or by the store as it reads (a record read by name has no listing), is a CorruptRecord."""
    uri = store.uri(path)
    check_size(size, path, uri, limit)
    try:
        return store.read(path, max_bytes=limit)
    except TooLarge as exc:
        check_size(exc.size, path, uri, limit)  # raises: it is over the limit
        raise


def parse(adapter: TypeAdapter[T], data: bytes, path: str, uri: str) -> T:
    """``data`` as the adapter's type (strict: no coercion), or CorruptRecord saying why not."""
    try:
        return adapter.validate_json(data, strict=True)
    except ValidationError as exc:
        problems = exc.errors(include_url=False)
        first = problems[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        reason = f"{where}: {first['msg']}" if where else first["msg"]
        raise corrupt(path, uri, f"{reason}{more}") from None


def read_each(read: Callable[[I], T], items: Iterable[I], unreadable: list[CorruptRecord] | None) -> list[T]:
    """``read(item)`` for each item; a bad record is raised, or appended to ``unreadable`` if given. A
    record gone since it was listed (removed or retired meanwhile) is skipped: it is no longer there to show."""
    out = []
    for item in items:
        try:
            out.append(read(item))
        except CorruptRecord as exc:
            if unreadable is None:
                raise
            unreadable.append(exc)
        except StorageError as exc:
            if exc.errno != errno.ENOENT:
                raise
    return out


def named_shas(data: bytes) -> set[str]:
    """Every sha256 that a (possibly damaged) record's bytes still name: what an unreadable
    version might refer to, which garbage collection must therefore keep."""
    return {match.decode() for match in _SHA_IN_TEXT.findall(data)}
