"""Who writes a generation's comp 2 module (``THREEGEN_COMP2_BACKEND``): the embedded encoder from the
pipeline's mesh, or a code model behind an OpenAI-compatible API (``comp2_llm``) whose every answer goes
through the same check, a failed check fed back to it. A model that cannot be reached or never passes falls
back to the embedded module (unless told not to), so a prompt is never lost to the model alone; why is kept.
No Dagster imports."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trimesh

from .comp2_generate import generate_module
from .comp2_llm import LlmConfig, LlmError, generate_with_llm
from .rules import CheckReport


@dataclass(frozen=True)
class Written:
    data: bytes
    report: CheckReport
    backend: str  # "embedded" or "llm"
    info: dict = field(default_factory=dict)  # what the output's metadata shows of how it was written


def write_module(mesh: trimesh.Trimesh, check: Callable[[bytes], CheckReport], literal_budget: int,
                 llm: LlmConfig | None = None, prompt: str = "", image_png: bytes | None = None, seed: int = 0,
                 fallback: bool = True, log: Callable[[str], None] = lambda line: None) -> Written:
    """The module and its check's verdict. ``check`` may raise (no verdict at all); that is never a fallback."""
    fell_back = ""
    if llm is not None:
        try:
            result = generate_with_llm(llm, check, prompt, image_png, seed)
        except LlmError as exc:
            if not fallback:
                raise
            fell_back = str(exc)[:500]
            log(f"comp 2: the code model {llm.model!r} gave no module that passes ({fell_back}); "
                "the embedded module is written from the mesh instead")
        else:
            failures = [f"{a.number}: {'; '.join(a.failures)[:300]}" for a in result.attempts if a.failures]
            return Written(result.source.encode("utf-8"), result.report, "llm",
                           {"model": llm.model, "attempts": len(result.attempts),
                            "failed_attempts": " | ".join(failures) or "none"})
    module = generate_module(mesh, literal_budget=literal_budget)
    info = {"faces": module.faces, "literal_bytes": module.literal_bytes}
    if llm is not None:
        info |= {"model": llm.model, "fallback_reason": fell_back}
    return Written(module.data, check(module.data), "embedded", info)
