"""The ledger: what each generation key means (prompt, seed, source, time), kept in the store.

One JSON object per generation (``ledger/<key>.json``; an image prompt's bytes beside it as
``ledger/<key>.image``), so any worker that reaches the store (local or S3) can decode a key,
and two writers adding different generations never touch the same object. Adding is
create-only and changes are compare-and-swap, so concurrent writers never lose an update.
Holds (``ledger/holds/<key>/<name>.json``) protect a generation from retention while
something, such as a pending submission, still needs it.

Every entry is checked when read: its schema, that it is stored under its own key, that its
prompt hashes to that key, and an image prompt's bytes against their recorded sha256; a bad entry
is a ``CorruptRecord`` naming it (``all`` can collect those instead). Two prompts whose keys
collide never share a generation: the later one gets a key with more of its hash. No Dagster imports.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, TypeAdapter

from .changes import mark_changed
from .keys import (MAX_SEED, Prompt, PromptError, candidate_keys, is_generation_key, key_error, key_fits,
                   parse_readable_key, seed_of)
from .records import CorruptRecord, GenerationKey, corrupt, parse, read_each, read_record
from .storage import Conflict, Store, StorageError

LEDGER = "ledger"
HOLDS = f"{LEDGER}/holds"
MAX_CREATED_AT = 253402300799.0  # 9999-12-31 23:59:59 UTC: the last second a datetime can show


@dataclass(frozen=True)
class Generation:
    key: GenerationKey
    kind: Literal["text", "image"]
    prompt: str  # the text, or the image's caption (may be empty)
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]
    source: str  # "cli", "ui", "inbox", ...
    # unix seconds; bounded, so that one altered entry is a bad record, not a date no view can show
    created_at: Annotated[float, Field(ge=0, le=MAX_CREATED_AT, allow_inf_nan=False)]
    task_id: str = ""
    image_sha256: Annotated[str, StringConstraints(pattern=r"^(?:[0-9a-f]{64})?$")] = ""
    keep: bool = False

    @property
    def label(self) -> str:
        return self.prompt if self.kind == "text" else f"[image {self.image_sha256[:12]}] {self.prompt}".strip()

    @property
    def digest(self) -> str:
        """sha256 of what the prompt is (as ``Prompt.digest``); "" for an image entry that did not record it."""
        return hashlib.sha256(self.prompt.encode("utf-8")).hexdigest() if self.kind == "text" else self.image_sha256


_GENERATION = TypeAdapter(Generation)


def key_of(path: str) -> str:
    """The generation key a ledger path (``ledger/<key>.json``) is about."""
    return path.removeprefix(f"{LEDGER}/").removesuffix(".json")


class UnknownGeneration(KeyError):
    def __str__(self) -> str:
        return (f"no generation {self.args[0]!r} in the ledger: register it first "
                f"(`threegen add PROMPT --seed N`, or the request_generations job in the UI), or check the key")


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, prompt: Prompt, seed: int, source: str, task_id: str = "",
            now: float | None = None) -> tuple[Generation, bool]:
        """Register (prompt, seed); returns the entry and whether it is new (adding twice is a no-op).
        The prompt gets the first of its candidate keys that no other prompt holds: the short key,
        unless two prompts collide on it (same slug, same first 10 hex of their sha256)."""
        for key in candidate_keys(prompt, seed):
            existing = self.find(key)
            if existing is None:
                entry = Generation(key=key, kind=prompt.kind, prompt=prompt.text, seed=seed, source=source,
                                   created_at=time.time() if now is None else now, task_id=task_id,
                                   image_sha256=prompt.digest if prompt.kind == "image" else "")
                if prompt.kind == "image":  # same key, same bytes: a concurrent writer writes the same thing
                    self.store.write(f"{LEDGER}/{key}.image", prompt.image)
                try:
                    self.store.write(f"{LEDGER}/{key}.json", json.dumps(asdict(entry), indent=1).encode(),
                                     if_absent=True, content_type="application/json")
                    mark_changed(self.store, [key])  # the catalog index lists it
                    return entry, True
                except Conflict:  # another worker registered this key between our look and our write
                    existing = self.get(key)
            if existing.kind == prompt.kind and (existing.digest or self._image_digest(key)) == prompt.digest:
                return existing, False
            # else a different prompt holds this key (their hashes collide): try a longer one
        raise PromptError(f"every key of this prompt is held by another prompt ({key}): the ledger is damaged")

    def add_readable(self, key: str, source: str, now: float | None = None) -> tuple[Generation, bool]:
        """Register a readable key (``a-blue-vase-s3``) under itself, as the prompt its words spell
        ("a blue vase", seed 3); adding it again finds it. PromptError for any other key."""
        prompt, seed = parse_readable_key(key)
        entry = Generation(key=key, kind="text", prompt=prompt.text, seed=seed, source=source,
                           created_at=time.time() if now is None else now)
        try:
            self.store.write(f"{LEDGER}/{key}.json", json.dumps(asdict(entry), indent=1).encode(),
                             if_absent=True, content_type="application/json")
            mark_changed(self.store, [key])  # the catalog index lists it
            return entry, True
        except Conflict:  # registered before (or by a concurrent run): the entry is checked when read
            return self.get(key), False

    def _image_digest(self, key: str) -> str:
        return hashlib.sha256(self.store.read(f"{LEDGER}/{key}.image")).hexdigest()

    def _read(self, path: str, size: int | None = None) -> Generation:
        """The entry at ``path``, checked: schema, stored under its own key, prompt hashing to it."""
        uri = self.store.uri(path)
        entry = parse(_GENERATION, read_record(self.store, path, size), path, uri)
        if path != f"{LEDGER}/{entry.key}.json":
            raise corrupt(path, uri, f"it is the entry of {entry.key}, not of the key it is stored under")
        if not (key_fits(entry.key, entry.digest, entry.seed) if entry.digest else seed_of(entry.key) == entry.seed):
            raise corrupt(path, uri, f"its prompt and seed do not hash to its key {entry.key}: the store was altered")
        return entry

    def find(self, key: str) -> Generation | None:
        if not is_generation_key(key):
            raise PromptError(key_error(key))
        try:
            return self._read(f"{LEDGER}/{key}.json")
        except CorruptRecord:
            raise
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise  # unreachable, refused, ...: not the same as "unknown"

    def get(self, key: str) -> Generation:
        entry = self.find(key)
        if entry is None:
            raise UnknownGeneration(key)
        return entry

    def prompt(self, key: str) -> Prompt:
        """The full prompt behind a key (image bytes included)."""
        entry = self.get(key)
        if entry.kind == "text":
            return Prompt("text", text=entry.prompt)
        path = f"{LEDGER}/{key}.image"
        image = self.store.read(path)
        actual = hashlib.sha256(image).hexdigest()
        if not key_fits(key, actual, entry.seed) or (entry.image_sha256 and actual != entry.image_sha256):
            raise corrupt(path, self.store.uri(path), f"the ledger image for {key} does not match its recorded "
                          f"sha256 (these bytes hash to {actual[:16]}…): the store was altered; register the "
                          f"image again (`threegen add --image`)")
        return Prompt("image", text=entry.prompt, image=image)

    def all(self, unreadable: list[CorruptRecord] | None = None) -> list[Generation]:
        """Every entry, oldest first. A bad one is raised, or, if ``unreadable`` is given, appended
        to it and skipped (``key_of(error.path)`` says whose it was)."""
        infos = [i for i in self.store.list(LEDGER) if i.path.endswith(".json") and i.path.count("/") == 1]
        entries = read_each(lambda info: self._read(info.path, info.size), infos, unreadable)
        return sorted(entries, key=lambda e: (e.created_at, e.key))

    def set_keep(self, key: str, keep: bool = True) -> Generation:
        self.get(key)

        def change(current: dict | None) -> dict:
            if current is None:
                raise UnknownGeneration(key)
            return asdict(replace(Generation(**current), keep=keep))

        kept = Generation(**self.store.update_json(f"{LEDGER}/{key}.json", change))
        mark_changed(self.store, [key])  # the catalog row shows the mark
        return kept

    def hold(self, key: str, name: str, note: str = "") -> None:
        """Protect ``key`` from retention until ``release(key, name)`` (e.g. a pending submission)."""
        if not re.fullmatch(r"[A-Za-z0-9._:-]{1,100}", name) or name.startswith("."):
            raise ValueError(f"hold name {name!r}: use letters, digits and . _ : - (at most 100)")
        self.get(key)
        self.store.write(f"{HOLDS}/{key}/{name}.json", json.dumps({"note": note, "since": time.time()}).encode())

    def release(self, key: str, name: str) -> None:
        self.store.delete(f"{HOLDS}/{key}/{name}.json")

    def holds(self) -> dict[str, list[str]]:
        """Generation key -> the names of its holds."""
        held: dict[str, list[str]] = {}
        for info in self.store.list(HOLDS):
            key, _, name = info.path[len(HOLDS) + 1:].partition("/")
            if name:  # a stray file directly under holds/ holds nothing
                held.setdefault(key, []).append(name.removesuffix(".json"))
        return held

    def entry_bytes(self, key: str) -> int:
        return sum(info.size for path in (f"{LEDGER}/{key}.json", f"{LEDGER}/{key}.image")
                   if (info := self.store.stat(path)) is not None)

    def remove(self, key: str) -> int:
        """Forget a generation; the bytes freed from the ledger."""
        freed = self.store.delete(f"{LEDGER}/{key}.json") + self.store.delete(f"{LEDGER}/{key}.image")
        mark_changed(self.store, [key])  # the catalog index drops it
        return freed
