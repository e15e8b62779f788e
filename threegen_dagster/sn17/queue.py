"""Pulled SN17 tasks waiting in the store (``sn17/tasks/<task_id>.json``): the puller writes them,
the Dagster sensor reads them. Needs nothing from bittensor, so the sensor stays light. No Dagster imports."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..keys import Prompt, PromptError
from ..storage import Conflict, StorageError, Store
from ..tasks import TaskError, is_task_id

if TYPE_CHECKING:
    from .client import PulledTask

ROOT = "sn17/tasks"
STATES = ("pulled", "running", "submitted", "failed", "rejected")


def prompt_of(task: Any) -> Prompt:
    """The project's Prompt for a protocol task (anything with ``id``, ``type``, ``prompt``);
    TaskError naming the task when it is malformed."""
    if not is_task_id(task.id):
        raise TaskError(f"task {task.id!r}: not a usable task id")
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


class TaskQueue:
    """One JSON object per pulled task; created once (create-only writes), then moved through STATES."""

    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def path(task_id: str) -> str:
        if is_task_id(task_id):
            return f"{ROOT}/{task_id}.json"
        # an id that cannot be a file name is still recorded (as rejected), under its hash
        return f"{ROOT}/invalid-id-{hashlib.sha256(repr(task_id).encode()).hexdigest()[:16]}.json"

    def add(self, pulled: PulledTask) -> bool:
        """Queue a pulled task; False if it is queued already (a re-pull gives the same task)."""
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
        try:
            self.store.write(self.path(task.id), json.dumps(entry, indent=1, sort_keys=True).encode(),
                             if_absent=True, content_type="application/json")
        except Conflict:
            return False
        return True

    def get(self, task_id: str) -> dict | None:
        try:
            return json.loads(self.store.read(self.path(task_id)))
        except StorageError:
            return None

    def all(self) -> list[dict]:
        """Every entry, oldest pull first."""
        entries = [json.loads(self.store.read(i.path)) for i in self.store.list(ROOT) if i.path.endswith(".json")]
        return sorted(entries, key=lambda e: (e["pulled_at"], e["task_id"]))

    def pending(self) -> list[dict]:
        return [e for e in self.all() if e["state"] == "pulled"]

    def set_state(self, task_id: str, state: str, **fields: Any) -> dict:
        if state not in STATES:
            raise ValueError(f"unknown task state {state!r}; one of {', '.join(STATES)}")

        def change(current: dict | None) -> dict:
            if current is None:
                raise KeyError(f"no queued task {task_id!r}")
            return {**current, **fields, "state": state}

        return self.store.update_json(self.path(task_id), change)
