"""Submit, or send an empty result: the decision miners care about most. A result scored below
the validator's threshold costs a 600 s cooldown on top of the task's 300 s; an empty result
costs nothing extra. With several seeds for one prompt, the best-scoring one goes. No Dagster imports."""

from __future__ import annotations

from dataclasses import dataclass

VALIDATION_THRESHOLD = 0.6
"""The legacy validators' acceptance threshold (SN17.md sections 4 and 5: ``validation_threshold`` 0.6): the
default wherever a threshold is not given, and what a validator's unusable one is replaced with."""


@dataclass(frozen=True)
class Candidate:
    key: str  # the generation
    score: float | None  # None: not scored (failed before scoring)
    checks_passed: bool = True  # the validator's zero-score rules


@dataclass(frozen=True)
class Decision:
    submit: bool
    key: str | None  # the generation whose SPZ goes, None for an empty result
    score: float | None
    reason: str


def decide(candidates: list[Candidate], threshold: float = VALIDATION_THRESHOLD) -> Decision:
    """The best candidate if it reaches ``threshold``, else an empty result, with the reason."""
    scored = [c for c in candidates if c.score is not None and c.checks_passed]
    if not scored:
        unscored = all(c.score is None for c in candidates)
        why = "no candidate was scored" if unscored else "every candidate failed the validator's checks"
        return Decision(False, None, None, f"empty result: {why}")
    best = max(scored, key=lambda c: (c.score, c.key))
    of = f" (best of {len(scored)})" if len(scored) > 1 else ""
    if best.score >= threshold:
        return Decision(True, best.key, best.score, f"submit {best.key}: score {best.score:.3f} >= {threshold}{of}")
    return Decision(False, None, best.score,
                    f"empty result: best score {best.score:.3f} < {threshold}{of}; a submission would add a 600 s cooldown")
