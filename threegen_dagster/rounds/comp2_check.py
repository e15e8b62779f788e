"""SN17 comp 2 (``threejs``): a ``{stem}.js`` module checked against every published rule by running
the Node checker in ``node_checker/`` (acorn + eslint-scope for the static rules, three@0.183.2 in a
worker thread for the runtime ones; ``scripts/install_node_checker.sh`` installs it). The module is
written to a file, the checker runs as a subprocess with a wall-clock limit and a V8 heap cap, and its
one JSON line is the verdict: failures carry the specification's rule codes. No Dagster imports.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from .rules import CheckReport, Failure

CHECKER = Path(__file__).parent / "node_checker"
INSTALL_HINT = "run scripts/install_node_checker.sh (Node 20+ and npm)"


@dataclass(frozen=True)
class Comp2Limits:
    """The output rules' numbers (SN17-NOW.md section 1, as the render service enforces them)."""

    file_bytes: int = 1_048_576
    literal_bytes: int = 51_200
    vertices: int = 250_000
    draw_calls: int = 200
    depth: int = 32
    instances: int = 50_000
    texture_bytes: int = 4 * 2**20
    time_s: float = 5.0
    heap_mb: int = 256
    bound: float = 0.5
    process_mb: int = 3072  # the checker's address space (RLIMIT_AS): ArrayBuffers live outside the JS heap


Comp2Report = CheckReport  # the verdict on a module (rules.py: one shape for every competition)


class CheckerError(RuntimeError):
    """The checker itself could not give a verdict (not installed, crashed, killed): never a pass."""


def _limit_memory(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _memory_bound(command: list[str], limit: int) -> tuple[list[str], dict]:
    """The command with its address space bounded (RLIMIT_AS) from its start: through util-linux's
    ``prlimit``, or where that is missing a ``preexec_fn``; and subprocess's extra arguments."""
    prlimit = shutil.which("prlimit")
    if prlimit:
        return [prlimit, f"--as={limit}", "--", *command], {}
    return command, {"preexec_fn": partial(_limit_memory, limit)}


def checker_ready(folder: Path = CHECKER) -> bool:
    return shutil.which("node") is not None and (folder / "node_modules" / "three" / "package.json").is_file()


def check_module(source: bytes, limits: Comp2Limits = Comp2Limits(), *, timeout_s: float = 60.0,
                 folder: Path = CHECKER) -> Comp2Report:
    """The verdict on one module's bytes. Too large a file is refused before Node is started."""
    if len(source) > limits.file_bytes:
        return Comp2Report(False, (Failure("static_analysis", "FILE_SIZE_EXCEEDED",
                                           f"{len(source):,} bytes (limit {limits.file_bytes:,})"),))
    node = shutil.which("node")
    if node is None or not checker_ready(folder):
        raise CheckerError(f"the comp 2 checker is not installed in {folder}: {INSTALL_HINT}")
    with tempfile.TemporaryDirectory(prefix="comp2-check-") as tmp:
        path = Path(tmp) / "module.js"
        path.write_bytes(source)
        # the main thread's heap is capped too; the module's worker gets limits.heap_mb (resourceLimits). The
        # module is untrusted code (a model's answer, another miner's output): eval and Function off, and
        # Node's permission model: it reads the checker and the module, writes nothing, starts no process
        command = [node, f"--max-old-space-size={limits.heap_mb + 256}", "--disallow-code-generation-from-strings",
                   "--experimental-permission", f"--allow-fs-read={folder.resolve()}/*", f"--allow-fs-read={path}",
                   "--allow-worker", str(folder / "check.mjs"), str(path), json.dumps(asdict(limits))]
        command, bound = _memory_bound(command, limits.process_mb * 2**20)
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout_s, cwd=folder,
                                  env={"PATH": os.environ.get("PATH", ""), "NODE_OPTIONS": ""},
                                  **bound)
        except subprocess.TimeoutExpired:
            raise CheckerError(f"the comp 2 checker did not answer within {timeout_s:.0f} s: killed") from None
    tail = " | ".join(done.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
    if done.returncode < 0 or "FATAL ERROR" in tail:  # V8 aborted (out of memory): the module's doing, a verdict
        return Comp2Report(False, (Failure("execution", "HEAP_EXCEEDED", f"running the module took the checker "
                                           f"down (exit {done.returncode}): {tail[-300:]}"),))
    if done.returncode != 0:
        raise CheckerError(f"the comp 2 checker failed (exit {done.returncode}): {tail}")
    try:
        answer = json.loads(done.stdout.decode("utf-8").strip().splitlines()[-1])
        failures = tuple(Failure(str(f["stage"]), str(f["rule"]), str(f["detail"])) for f in answer["failures"])
        return Comp2Report(bool(answer["ok"]) and not failures, failures, dict(answer.get("metrics") or {}),
                           str(answer.get("three", "")))
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise CheckerError(f"the comp 2 checker's answer is not its JSON: {exc}") from None
