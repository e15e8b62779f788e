"""A local estimate of the round's duel against the leader (SN17-NOW.md section 5), stem by stem on the
judges' renders: a VLM (OpenAI-compatible ``/v1/chat/completions``, the judges run ``glm-4.6v-flash`` at
temperature 0 with the round seed) scores each side's front views with a 0-10 penalty per angle, asked in
both orders; angles where the orders disagree are dropped; a draw when |delta| <= 0.7, or both average >= 8
with |delta| <= 1.5; else the lower penalty wins. When the VLM is not configured or calls it a draw, the
best-view vote decides: each side's highest DINO cosine between a white view and the prompt image, a gap of
at least ``dino_gap`` wins. A missing side loses (a draw when both are). margin = (wins - losses) / stems,
against the published ``win_margin``. The judges' exact prompts are not public: this is an estimate.
No Dagster imports."""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
from PIL import Image

from ..rounds.comp2_llm import LlmConfig, LlmError, chat
from .renders import Embedder

FRONT = ("front_left", "front_right", "front_below", "front_above")
WIN_MARGIN = 0.07  # S config.json (SN17-NOW.md section 1): the published value is read when available
DINO_GAP = 0.02
QUESTION = ("You judge two 3D objects against the reference image (the first image). Then come four views of "
            "object {first} (front_left, front_right, front_below, front_above), then the same four views of "
            "object {second}. For each view give a penalty from 0 (matches the reference perfectly) to 10 "
            "(nothing like it) for each object. Answer only JSON: "
            '{{"{first}": [4 numbers], "{second}": [4 numbers]}}')


@dataclass
class StemDuel:
    stem: str
    outcome: str  # win | loss | draw (for this miner)
    decided_by: str  # missing | identical | vlm | best_view | none
    ours_best: float | None = None
    leader_best: float | None = None
    vlm_delta: float | None = None  # leader's mean penalty minus ours, over the angles kept
    note: str = ""
    judge_failed: bool = False  # the judge model could not say (unreachable, an answer without penalties)


@dataclass
class DuelEstimate:
    round: int
    stems: int
    wins: int = 0
    losses: int = 0
    draws: int = 0
    win_margin: float = WIN_MARGIN
    rows: list[StemDuel] = field(default_factory=list)

    @property
    def margin(self) -> float:
        return (self.wins - self.losses) / self.stems if self.stems else 0.0

    @property
    def would_win(self) -> bool:
        return self.margin >= self.win_margin

    def to_json(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "rows"}, "margin": round(self.margin, 4),
                "would_win": self.would_win, "rows": [asdict(r) for r in self.rows]}


def _data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").resize((512, 512)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _penalties(text: str, label: str) -> list[float]:
    match = re.search(r"\{.*\}", text, re.S)
    try:
        values = json.loads(match.group(0) if match else text)[label]
        out = [float(v) for v in values]
    except (ValueError, KeyError, TypeError) as exc:
        raise LlmError(f"the judge model's answer has no penalties for {label}: {text[:200]!r} ({exc})") from None
    if len(out) != len(FRONT) or not all(0 <= v <= 10 for v in out):
        raise LlmError(f"the judge model's penalties for {label} are not four numbers in 0..10: {out}")
    return out


def ask(config: LlmConfig, prompt: Image.Image, first: dict[str, Image.Image], second: dict[str, Image.Image],
        seed: int, client: httpx.Client) -> tuple[list[float], list[float]]:
    """The front-view penalties of (first, second) as the model gives them in this order."""
    parts = [{"type": "text", "text": QUESTION.format(first="A", second="B")},
             {"type": "image_url", "image_url": {"url": _data_url(prompt)}}]
    for views in (first, second):
        parts += [{"type": "image_url", "image_url": {"url": _data_url(views[name])}} for name in FRONT]
    answer = chat(config, [{"role": "user", "content": parts}], seed, client)
    return _penalties(answer, "A"), _penalties(answer, "B")


def vlm_verdict(config: LlmConfig, prompt: Image.Image, ours: dict, leader: dict, seed: int,
                client: httpx.Client) -> tuple[str, float | None, str]:
    """(win | loss | draw, the penalty delta, a note): both orders asked, disagreeing angles dropped."""
    a_ours, a_leader = ask(config, prompt, ours, leader, seed, client)
    b_leader, b_ours = ask(config, prompt, leader, ours, seed, client)
    kept = [i for i in range(len(FRONT))
            if np.sign(a_leader[i] - a_ours[i]) == np.sign(b_leader[i] - b_ours[i])]
    if not kept:
        return "draw", None, "the two orders disagree on every angle"
    ours_mean = float(np.mean([(a_ours[i] + b_ours[i]) / 2 for i in kept]))
    leader_mean = float(np.mean([(a_leader[i] + b_leader[i]) / 2 for i in kept]))
    delta = round(leader_mean - ours_mean, 3)
    if abs(delta) <= 0.7 or (ours_mean >= 8 and leader_mean >= 8 and abs(delta) <= 1.5):
        return "draw", delta, f"{len(kept)} angle(s) kept; too close"
    return ("win" if delta > 0 else "loss"), delta, f"{len(kept)} angle(s) kept"


def best_view(embedder: Embedder, prompt: Image.Image, views: dict[str, Image.Image]) -> float:
    """The highest cosine between the prompt image and one of the white views (the judges' best-view vote)."""
    rows = embedder.embed([prompt, *views.values()])
    return float(np.max(rows[1:] @ rows[0]))


def judge_stem(stem: str, prompt: Image.Image | None, ours: dict | None, leader: dict | None, *,
               embedder: Embedder | None, vlm: LlmConfig | None, seed: int, client: httpx.Client | None,
               dino_gap: float = DINO_GAP) -> StemDuel:
    """One stem's estimated duel; ``ours``/``leader`` are the sides' white views (None: missing)."""
    if ours is None or leader is None:
        outcome = "draw" if ours is None and leader is None else "loss" if ours is None else "win"
        return StemDuel(stem, outcome, "missing", note="ours missing" if ours is None else "the leader's missing")
    row = StemDuel(stem, "draw", "none")
    if vlm is not None and client is not None:
        try:
            row.outcome, row.vlm_delta, row.note = vlm_verdict(vlm, prompt, ours, leader, seed, client)
        except LlmError as exc:  # one stem the judge cannot answer: the best-view vote, if any, decides it
            row.judge_failed, row.note = True, f"the judge failed: {exc}"[:300]
        if row.outcome != "draw":
            row.decided_by = "vlm"
    if embedder is not None:
        row.ours_best = round(best_view(embedder, prompt, ours), 4)
        row.leader_best = round(best_view(embedder, prompt, leader), 4)
        if row.outcome == "draw":
            gap = row.ours_best - row.leader_best
            if abs(gap) >= dino_gap:
                row.outcome, row.decided_by = ("win" if gap > 0 else "loss"), "best_view"
    return row


def tally(number: int, rows: list[StemDuel], win_margin: float) -> DuelEstimate:
    estimate = DuelEstimate(number, len(rows), win_margin=win_margin, rows=rows)
    estimate.wins = sum(r.outcome == "win" for r in rows)
    estimate.losses = sum(r.outcome == "loss" for r in rows)
    estimate.draws = len(rows) - estimate.wins - estimate.losses
    return estimate
