"""Task files dropped in the inbox: ``{"id": ..., "prompt": "..." | "image_b64": "...", "seed"?: N}``.
No Dagster imports."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass

from .keys import Prompt, PromptError, check_seed

MAX_TASK_BYTES = 32 * 1024 * 1024
# One rule for every untrusted task id (inbox files, SN17 validators), checked once at the edge: every
# name derived from an id (run keys, hold names "submission-<id>", queue paths) satisfies its own rule.
TASK_ID_CHARS = 80
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,%d}" % (TASK_ID_CHARS - 1))
DEFAULT_SEED = 0


class TaskError(ValueError):
    """A task file that cannot become a generation; the message says why."""


def is_task_id(value: object) -> bool:
    """Whether ``value`` is a valid task id: the whole string must match (no trailing newline)."""
    return isinstance(value, str) and TASK_ID.fullmatch(value) is not None


def check_task_id(value: object) -> str:
    if not is_task_id(value):
        raise TaskError(f"'id' must be a string of 1-{TASK_ID_CHARS} letters, digits, '.', '_', ':' or '-', "
                        f"starting with a letter or digit; got {str(value)[:100]!r}")
    return value


@dataclass(frozen=True)
class Task:
    id: str
    prompt: Prompt
    seed: int


def parse_task(data: bytes) -> Task:
    if len(data) > MAX_TASK_BYTES:
        raise TaskError(f"task file is {len(data):,} bytes, over the {MAX_TASK_BYTES:,} limit")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TaskError(f"not JSON: {exc}") from None
    except RecursionError:  # a task is a flat object; the parser gives up on deep nesting this way
        raise TaskError("not a task: JSON nested too deeply") from None
    if not isinstance(raw, dict):
        raise TaskError(f"a task is a JSON object, not {type(raw).__name__}")
    unknown = sorted(set(raw) - {"id", "prompt", "image_b64", "seed"})
    if unknown:
        raise TaskError(f"unknown fields: {', '.join(unknown)} (expected id, prompt or image_b64, seed)")
    task_id = check_task_id(raw.get("id"))
    seed = raw.get("seed", DEFAULT_SEED)
    try:
        check_seed(seed)
        if ("prompt" in raw) == ("image_b64" in raw):
            raise TaskError("give exactly one of 'prompt' (text) or 'image_b64' (a base64 image)")
        if "prompt" in raw:
            prompt = Prompt.from_text(raw["prompt"])
        else:
            if not isinstance(raw["image_b64"], str):
                raise TaskError("'image_b64' must be a base64 string")
            try:
                image = base64.b64decode(raw["image_b64"], validate=True)
            except (binascii.Error, ValueError):
                raise TaskError("'image_b64' is not valid base64") from None
            prompt = Prompt.from_image(image)
    except PromptError as exc:
        raise TaskError(str(exc)) from None
    return Task(task_id, prompt, seed)
