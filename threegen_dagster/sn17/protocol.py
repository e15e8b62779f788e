"""SN17's legacy synapses, wire-compatible with the 404-GEN validators (needs the ``sn17`` extra).

The miner pulls a task from a validator (``PullTask``), generates, and pushes the result back
(``SubmitResults``); the validator fills the response fields. Field names, types and defaults
follow the subnet's ``common/protocol.py`` so bodies and headers match what validators parse.
"""

from __future__ import annotations

import uuid
from typing import Literal

import bittensor as bt
from pydantic import BaseModel, Field

from .decision import VALIDATION_THRESHOLD

PULL_TASK_TIMEOUT = 12.0  # seconds, as the reference miner
SUBMIT_RESULTS_TIMEOUT = 300.0


class Task(BaseModel):
    type: Literal["text", "image"] = "text"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    prompt: str = ""  # the text, or for image tasks the base64 image


class Feedback(BaseModel):
    validation_failed: bool = False
    task_fidelity_score: float = 0.0
    average_fidelity_score: float = 0.0
    generations_within_the_window: int = 0
    current_duel_rating: float = 0.0
    current_miner_reward: float = 0.0


class PullTask(bt.Synapse):
    """Miner asks for a task; the validator fills the rest."""

    task: Task | None = None
    validation_threshold: float = VALIDATION_THRESHOLD
    throttle_period: int = 0
    cooldown_until: int = 0  # unix seconds
    cooldown_violations: int = 0


class SubmitResults(bt.Synapse):
    """Miner submits a result (base64 SPZ, or "" to skip); the validator answers feedback and cooldown."""

    task: Task | None = None  # deprecated upstream in favour of task_id; older validators still read it
    task_id: str = ""
    results: str
    data_format: str = "ply"
    data_ver: int = 0
    compression: int = 2  # SPZ
    submit_time: int  # time.time_ns()
    signature: str  # see threegen_dagster.sn17.signing
    feedback: Feedback | None = None
    cooldown_until: int = 0

    def model_post_init(self, context: object, /) -> None:
        if not self.task_id and self.task is not None:
            self.task_id = self.task.id
