"""The ledger: what each generation key means (prompt, seed, source, time), kept in the store.

One JSON object per generation (``ledger/<key>.json``; an image prompt's bytes beside it as
``ledger/<key>.image``), so any worker that reaches the store (local or S3) can decode a key,
and two writers adding different generations never touch the same object. Adding is
create-only and changes are compare-and-swap, so concurrent writers never lose an update.
Holds (``ledger/holds/<key>/<name>.json``) protect a generation from retention while
something, such as a pending submission, still needs it. No Dagster imports.
"""

from __future__ import annotations

import errno
import json
import re
import time
from dataclasses import asdict, dataclass, replace

from .keys import Prompt, PromptError, generation_key, is_generation_key
from .storage import Conflict, Store, StorageError

LEDGER = "ledger"
HOLDS = f"{LEDGER}/holds"


@dataclass(frozen=True)
class Generation:
    key: str
    kind: str  # "text" | "image"
    prompt: str  # the text, or the image's caption (may be empty)
    seed: int
    source: str  # "cli", "ui", "inbox", ...
    created_at: float  # unix seconds
    task_id: str = ""
    image_sha256: str = ""
    keep: bool = False

    @property
    def label(self) -> str:
        return self.prompt if self.kind == "text" else f"[image {self.image_sha256[:12]}] {self.prompt}".strip()


class UnknownGeneration(KeyError):
    def __str__(self) -> str:
        return (f"no generation {self.args[0]!r} in the ledger: register it first "
                f"(`threegen add PROMPT --seed N`), or check the key")


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, prompt: Prompt, seed: int, source: str, task_id: str = "",
            now: float | None = None) -> tuple[Generation, bool]:
        """Register (prompt, seed); returns the entry and whether it is new (adding twice is a no-op)."""
        key = generation_key(prompt, seed)
        existing = self.find(key)
        if existing is not None:
            return existing, False
        entry = Generation(key=key, kind=prompt.kind, prompt=prompt.text, seed=seed, source=source,
                           created_at=time.time() if now is None else now, task_id=task_id,
                           image_sha256=prompt.digest if prompt.kind == "image" else "")
        if prompt.kind == "image":  # same key, same bytes: a concurrent writer writes the same thing
            self.store.write(f"{LEDGER}/{key}.image", prompt.image)
        try:
            self.store.write(f"{LEDGER}/{key}.json", json.dumps(asdict(entry), indent=1).encode(), if_absent=True,
                             content_type="application/json")
        except Conflict:  # another worker registered it between our look and our write
            return self.get(key), False
        return entry, True

    def find(self, key: str) -> Generation | None:
        if not is_generation_key(key):
            raise PromptError(f"{key!r} is not a generation key (like 'a-wooden-chair-3f2a9c1b0d-s42')")
        try:
            return Generation(**json.loads(self.store.read(f"{LEDGER}/{key}.json")))
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
        if entry.kind == "image":
            return Prompt("image", text=entry.prompt, image=self.store.read(f"{LEDGER}/{key}.image"))
        return Prompt("text", text=entry.prompt)

    def all(self) -> list[Generation]:
        entries = []
        for info in self.store.list(LEDGER):
            if info.path.endswith(".json") and info.path.count("/") == 1:
                entries.append(Generation(**json.loads(self.store.read(info.path))))
        return sorted(entries, key=lambda e: (e.created_at, e.key))

    def set_keep(self, key: str, keep: bool = True) -> Generation:
        self.get(key)

        def change(current: dict | None) -> dict:
            if current is None:
                raise UnknownGeneration(key)
            return asdict(replace(Generation(**current), keep=keep))

        return Generation(**self.store.update_json(f"{LEDGER}/{key}.json", change))

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
            key, name = info.path[len(HOLDS) + 1:].split("/", 1)
            held.setdefault(key, []).append(name.removesuffix(".json"))
        return held

    def entry_bytes(self, key: str) -> int:
        return sum(info.size for path in (f"{LEDGER}/{key}.json", f"{LEDGER}/{key}.image")
                   if (info := self.store.stat(path)) is not None)

    def remove(self, key: str) -> int:
        """Forget a generation; the bytes freed from the ledger."""
        return self.store.delete(f"{LEDGER}/{key}.json") + self.store.delete(f"{LEDGER}/{key}.image")
