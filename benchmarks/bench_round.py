"""Benchmark a comp 2 round's per-prompt work on the embedded backends: the pipeline's refined mesh, the comp 2
module written from it (comp2_generate), its check (the Node checker, three@0.183.2) and the judge-style
renders (8 white views, 4 gray views, the grid; three r183 in Chromium with swiftshader WebGL).

Run: .venv/bin/python benchmarks/bench_round.py [--prompts 8] [--no-render]

Figures are wall-clock seconds per prompt (time.perf_counter), one run each, printed, never asserted; the
browser is started once for the batch (its start is shown apart). A 128-prompt round is the per-prompt
median times 128 on one core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine  # noqa: E402
from threegen_dagster.backends.decimate import Decimate  # noqa: E402
from threegen_dagster.backends.inflate import Inflate  # noqa: E402
from threegen_dagster.backends.matting import FloodFill  # noqa: E402
from threegen_dagster.backends.procedural import Procedural  # noqa: E402
from threegen_dagster.rounds.comp2_check import check_module, checker_ready  # noqa: E402
from threegen_dagster.rounds.comp2_generate import glb_to_module  # noqa: E402
from threegen_dagster.rounds.render import JudgeRenderer, find_chromium  # noqa: E402

PROMPTS = ["a red mug", "a wooden chair", "a blue vase", "a green teapot", "a yellow rubber duck",
           "an orange traffic cone",
           "a purple backpack", "a white sneaker", "a black top hat", "a brown teddy bear", "a silver robot",
           "a pink flamingo"]


def seconds(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--no-render", action="store_true")
    args = parser.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] + (f" #{i // len(PROMPTS)}" if i >= len(PROMPTS) else "")
               for i in range(args.prompts)]
    check = checker_ready()
    render = not args.no_render and find_chromium() is not None
    print(f"bench_round: {len(prompts)} prompts on the embedded backends; {machine()}")
    print(f"  Node check: {'yes' if check else 'no (run scripts/install_node_checker.sh)'}; "
          f"renders: {'yes' if render else 'no'}")
    stages, refine = (Procedural(), FloodFill(), Inflate()), Decimate()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-round-") as tmp:
        renderer = JudgeRenderer() if render else None
        if renderer:
            _, start_s = seconds(renderer.__enter__)
            print(f"  browser start (once per batch): {start_s:.2f} s")
        try:
            print(f"  {'prompt':<26}{'mesh s':>8}{'comp2 s':>9}{'faces':>7}{'literal B':>10}{'check s':>9}"
                  f"{'render s':>9}")
            for seed, prompt in enumerate(prompts):
                def mesh():
                    image = stages[1](stages[0](prompt, seed))
                    return refine(stages[2](image, seed)).export(file_type="glb")

                glb, mesh_s = seconds(mesh)
                module, comp2_s = seconds(lambda: glb_to_module(glb))
                check_s = render_s = float("nan")
                if check:
                    report, check_s = seconds(lambda: check_module(module.data))
                    if not report.ok:
                        print(f"  check failed for {prompt!r}: {report.summary()}")
                if renderer:
                    _, render_s = seconds(lambda: renderer.render(module.data, "js", Path(tmp) / str(seed)))
                rows.append((mesh_s, comp2_s, check_s, render_s))
                print(f"  {prompt[:25]:<26}{mesh_s:8.2f}{comp2_s:9.2f}{module.faces:7d}{module.literal_bytes:10d}"
                      f"{check_s:9.2f}{render_s:9.2f}")
        finally:
            if renderer:
                renderer.__exit__(None, None, None)
    for name, column in zip(("mesh", "comp 2 module", "Node check", "render"), zip(*rows)):
        values = [v for v in column if v == v]
        if values:
            median = statistics.median(values)
            print(f"  {name:<14} median {median:6.2f} s/prompt, total {sum(values):7.1f} s; "
                  f"x128 on one core: {median * 128 / 60:6.1f} min")


if __name__ == "__main__":
    main()
