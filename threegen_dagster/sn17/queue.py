"""Pulled SN17 tasks in the store: the puller writes them, the Dagster sensors and the submit run move
them through their states. Needs nothing from bittensor, so the sensors stay light. No Dagster imports.

Layout:

- ``sn17/tasks/<task_id>.json``: one record per task, created once (create-only: a re-pull of the same
  task is a no-op) and then changed only by compare-and-swap (``Store.update_json``).
- ``sn17/active/<task_id>.json``: an empty marker while the task is active (pulled, running,
  submitting). The sensors list this prefix and read only those records, so a tick's cost follows the
  work in flight, not the history: finished tasks (kept for days) are never read on a tick.

The record is written before its marker and made terminal before its marker is removed, so a crash in
between leaves at worst a stale marker (notes by ``active()``) or a pulled task without one (notes on
its next re-pull, or once by ``reindex()``).

States: pulled -> running -> submitting -> submitted | failed; rejected at the edge (malformed); expired
when still pulled past the validator's deadline (``TASK_DEADLINE_S``); failed also when a task cannot start
or its submission cannot be made. Every move between states is a ``transition``: compare-and-swap from the
states it expects, so with several sensors or runs on one store exactly one wins each move (``NotClaimed``
for the others).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..keys import MAX_IMAGE_BYTES, MAX_PROMPT_CHARS, Prompt, PromptError
from ..storage import Conflict, StorageError, Store
from ..tasks import TaskError, is_task_id

if TYPE_CHECKING:
    from .client import PulledTask

ROOT = "sn17/tasks"
ACTIVE = "sn17/active"
ACTIVE_STATES = ("pulled", "running", "submitting")
TERMINAL_STATES = ("submitted", "failed", "rejected", "expired")
STATES = ACTIVE_STATES + TERMINAL_STATES
# the fields the sensors compare or count with: a record where one is not a number is skipped, reported
NUMBERS = ("pulled_at", "started_at", "failed_at", "submitted_at", "start_errors", "relaunches")

TASK_DEADLINE_S = 300.0
"""How long after its pull a task may still start; past it the task expires, never run or submitted.
SN17.md section 5 names no deadline outright; the time it gives a task is 300 s (the validator's cooldown
per task, the reference miner's SubmitResults timeout), and 404's validator drops an organic task after 5
minutes. A task not started by then waited on a stopped sensor or behind a flood: its answer is stale, and
handing it back (empty: no penalty) frees the validator for a fresh one. Only tasks not yet started expire:
a running one has its GPU time spent, and the validator scores a late result like any other."""

REJECTED_CHARS = 200
"""What a rejected task's record keeps of its prompt (and of an over-long id): a prefix to recognise it by,
with the full length beside it (``prompt_chars``). A rejected task is never run, and its hand-back signs the
prompt in hand, not the record's, so a validator's 30 MB prompt costs 200 characters on disk."""

MAX_IMAGE_B64_CHARS = 4 * -(-MAX_IMAGE_BYTES // 3)  # the base64 of the largest image prompt (no whitespace allowed)


class NotClaimed(Exception):
    """A transition that did not happen: the task is no longer in a state it expected (another sensor
    or run moved it first), or is not there."""


def prompt_of(task: Any) -> Prompt:
    """The project's Prompt for a protocol task (anything with ``id``, ``type``, ``prompt``);
    TaskError naming the task when it is malformed."""
    if not is_task_id(task.id):
        raise TaskError(f"task {str(task.id)[:100]!r}: not a usable task id")
    # lengths first: a prompt far over the limit must cost nothing to refuse (cleaning or decoding 30 MB
    # takes hundreds of MB); a validator's prompt is measured as sent, before whitespace is collapsed
    sent = len(task.prompt) if isinstance(task.prompt, str) else 0
    if task.type == "text" and sent > MAX_PROMPT_CHARS:
        raise TaskError(f"task {task.id}: the prompt has {sent:,} characters; the limit is {MAX_PROMPT_CHARS:,}")
    if task.type != "text" and sent > MAX_IMAGE_B64_CHARS:
        raise TaskError(f"task {task.id}: the image prompt has {sent:,} base64 characters; "
                        f"the limit is {MAX_IMAGE_B64_CHARS:,} ({MAX_IMAGE_BYTES:,} bytes)")
    try:
        if task.type == "text":
            return Prompt.from_text(task.prompt)
        try:
            image = base64.b64decode(task.prompt, validate=True)
        except (binascii.Error, ValueError):
            raise TaskError(f"task {task.id}: the image prompt is not valid base64") from None
        return Prompt.from_image(image)
    except PromptError as exc:
        raise TaskError(f"task {task.id}: {exc}") from None


def entry_prompt(entry: dict) -> Prompt:
    """The Prompt of a queue entry."""
    return prompt_of(SimpleNamespace(id=entry["task_id"], type=entry["type"], prompt=entry["prompt"]))


def _is_number(value: Any) -> bool:
    """A real number (not a bool, not NaN or infinite, not an int no float can hold)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63


def _bounded(name: str, value: Any) -> dict:
    """``{name: value}``; for a string over REJECTED_CHARS, its prefix and its length (``{name}_chars``)."""
    if isinstance(value, str) and len(value) > REJECTED_CHARS:
        return {name: value[:REJECTED_CHARS], f"{name}_chars": len(value)}
    return {name: value}


def _pull_order(entry: dict) -> tuple[float, str]:
    """Oldest pull first; a record without a usable time sorts first (``_checked`` skips those anyway)."""
    pulled = entry.get("pulled_at", 0)
    return (float(pulled) if _is_number(pulled) else 0.0, str(entry.get("task_id")))


def _marker(record_path: str) -> str:
    return ACTIVE + record_path[len(ROOT):]


def _record(marker_path: str) -> str:
    return ROOT + marker_path[len(ACTIVE):]


class TaskQueue:
    """One JSON object per pulled task, plus the index of active ones (see the module's docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.notes: list[str] = []  # what the last active() or reindex() repaired

    @staticmethod
    def path(task_id: str) -> str:
        if is_task_id(task_id):
            return f"{ROOT}/{task_id}.json"
        # an id that cannot be a file name is still recorded (as rejected), under its hash
        return f"{ROOT}/invalid-id-{hashlib.sha256(repr(task_id).encode()).hexdigest()[:16]}.json"

    def add(self, pulled: PulledTask) -> bool:
        """Queue a pulled task; False if it is queued already (a re-pull gives the same task).
        A malformed task (its id included) is recorded as rejected, with the reason and at most
        REJECTED_CHARS of its prompt and id."""
        task = pulled.task
        try:
            prompt_of(task)
            state, reason = "pulled", ""
        except TaskError as exc:
            state, reason = "rejected", str(exc)
        entry = {"task_id": task.id, "type": task.type, "prompt": task.prompt,
                 "validator_uid": pulled.validator_uid, "validator_hotkey": pulled.validator_hotkey,
                 "validator_ip": pulled.validator_ip, "validator_port": pulled.validator_port,
                 "validation_threshold": pulled.validation_threshold, "pulled_at": pulled.pulled_at,
                 "state": state, "reason": reason}
        if state == "rejected":
            entry |= _bounded("task_id", task.id) | _bounded("prompt", task.prompt)
        path = self.path(task.id)
        try:
            self.store.write(path, json.dumps(entry, indent=1, sort_keys=True).encode(),
                             if_absent=True, content_type="application/json")
        except Conflict:
            # queued before; if a crash came between the record and its marker, this re-pull heals it
            current = self._read(path)
            if current is not None and current["state"] in ACTIVE_STATES and not self.store.exists(_marker(path)):
                self.store.write(_marker(path), b"")
            return False
        if state in ACTIVE_STATES:
            self.store.write(_marker(path), b"")
        return True

    def _read(self, path: str) -> dict | None:
        try:
            return json.loads(self.store.read(path))
        except StorageError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise  # unreachable or refused is not the same as "not queued"

    def get(self, task_id: str) -> dict | None:
        return self._read(self.path(task_id))

    def all(self) -> list[dict]:
        """Every entry, oldest pull first. Reads every record: for the catalog, not for sensor ticks.
        A record that cannot be read is skipped, with a line in ``notes``."""
        self.notes = []
        entries = [self._checked(i.path) for i in self.store.list(ROOT) if i.path.endswith(".json")]
        return sorted((e for e in entries if e), key=_pull_order)

    def active(self) -> list[dict]:
        """The active entries (pulled, running, submitting), oldest pull first: one listing of the index
        plus one read per active task. A marker whose record is gone or finished is removed; a record
        that cannot be read is skipped; each is a line in ``notes`` (for the caller's log)."""
        entries, self.notes = [], []
        for info in self.store.list(ACTIVE):
            path = _record(info.path)
            entry = self._checked(path)
            if entry is False:
                continue
            if entry is None or entry["state"] not in ACTIVE_STATES:
                self.store.delete(info.path)
                self.notes.append(f"removed the stale index marker {info.path}")
            elif not self._reject_bad_id(path, entry):
                entries.append(entry)
        return sorted(entries, key=_pull_order)

    def pending(self) -> list[dict]:
        return [e for e in self.active() if e["state"] == "pulled"]

    def reindex(self, after: str = "", limit: int = 500) -> str | None:
        """Index active records that lack a marker (queued before the index existed, by a version whose
        id rule was looser: those are rejected here), reading at most ``limit`` records after the path
        ``after``. Returns the path to continue after, or None when done; what it did is in ``notes``."""
        self.notes, read = [], 0
        for info in self.store.list(ROOT):
            if info.path <= after or not info.path.endswith(".json"):
                continue
            if read == limit:
                return after
            entry, read, after = self._checked(info.path), read + 1, info.path
            if not entry or entry["state"] not in ACTIVE_STATES or self._reject_bad_id(info.path, entry):
                continue
            if not self.store.exists(_marker(info.path)):
                self.store.write(_marker(info.path), b"")
                self.notes.append(f"indexed task {entry['task_id']} ({entry['state']})")
        return None

    def _checked(self, path: str) -> dict | None | bool:
        """The record at ``path``; None if it is gone; False (and a note) if it cannot be read as one,
        so that one damaged record never stops the others."""
        try:
            entry = self._read(path)
            if entry is None:
                return None
            if not (isinstance(entry, dict) and isinstance(entry.get("state"), str) and "task_id" in entry):
                raise ValueError("not a task record (no task_id or state)")
            wrong = next((name for name in NUMBERS if name in entry and not _is_number(entry[name])), None)
            if wrong:
                raise ValueError(f"{wrong} is {json.dumps(entry[wrong])[:40]}, not a number")
            return entry
        except (StorageError, ValueError, RecursionError) as exc:
            self.notes.append(f"skipped the task record {self.store.uri(path)}: {exc}")
            return False

    def _reject_bad_id(self, path: str, entry: dict) -> bool:
        """An active record whose id breaks today's rule (an older version queued it): rejected, True."""
        if is_task_id(entry.get("task_id")):
            return False
        reason = f"task {str(entry.get('task_id'))[:100]!r}: not a usable task id (queued by an older version)"
        self._transition(path, ACTIVE_STATES, "rejected", None, {"reason": reason})
        self.notes.append(reason)
        return True

    def expire(self, entry: dict, now: float) -> dict | None:
        """The task made ``expired`` (terminal, with the reason) if it is still ``pulled`` TASK_DEADLINE_S
        after its pull; None if it is not overdue. NotClaimed if a sensor started it meanwhile."""
        if entry["state"] != "pulled" or now <= entry.get("pulled_at", 0) + TASK_DEADLINE_S:
            return None
        reason = (f"expired: not started within {TASK_DEADLINE_S:.0f} s of its pull (the validator's deadline); "
                  "never run or submitted")
        return self.transition(entry["task_id"], ("pulled",), "expired", reason=reason, expired_at=now)

    def transition(self, task_id: str, expect: tuple[str, ...], state: str,
                   check: Callable[[dict], str] | None = None, **fields: Any) -> dict:
        """Move a task from one of the ``expect`` states to ``state`` (compare-and-swap), setting
        ``fields``; ``check(current)`` may veto with a reason. NotClaimed if it was not in such a state."""
        return self._transition(self.path(task_id), expect, state, check, fields)

    def _transition(self, path: str, expect: tuple[str, ...], state: str, check: Callable[[dict], str] | None,
                    fields: dict) -> dict:
        if state not in STATES:
            raise ValueError(f"unknown task state {state!r}; one of {', '.join(STATES)}")

        def change(current: dict | None) -> dict:
            if current is None:
                raise NotClaimed(f"no queued task at {path}")
            if current["state"] not in expect:
                raise NotClaimed(f"task {current['task_id']} is {current['state']}, not {' or '.join(expect)}")
            veto = check(current) if check else ""
            if veto:
                raise NotClaimed(f"task {current['task_id']}: {veto}")
            return {**current, **fields, "state": state}

        new = self.store.update_json(path, change)
        if state in TERMINAL_STATES:
            self.store.delete(_marker(path))
        return new

    def set_state(self, task_id: str, state: str, **fields: Any) -> dict:
        """Unconditional: whatever state the task is in (for the puller's own records and tests)."""
        path = self.path(task_id)
        if state in ACTIVE_STATES:
            self.store.write(_marker(path), b"")  # before the record: a stale marker heals, a missing one would not
        return self._transition(path, STATES, state, None, fields)
