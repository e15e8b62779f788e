"""Wall time of `threegen generate` cold from the shell, and where it goes, on the embedded CPU backends.

Run: .venv/bin/python benchmarks/bench_generate.py
Each run is a fresh process in a fresh folder (new DAGSTER_HOME, new store), as a newcomer's first
`make demo` is. Per-stage seconds are the stage's own compute; the rest is Python start-up and
imports, Dagster's run bookkeeping (SQLite event log) and file writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

THREEGEN = Path(sys.executable).with_name("threegen")
PROMPTS = [("a wooden chair", 42), ("red cube", 1), ("blue ball", 7)]


def timed(cmd: list[str], cwd: str, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out


def main() -> None:
    print(f"threegen generate, cold from the shell, 50,000 gaussians; {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
        imports, _ = timed([sys.executable, "-c", "import threegen_dagster.definitions"], tmp, env)
        print(f"  python start-up + imports (dagster, trimesh, scipy, skimage ...): {imports:.2f} s")
        for prompt, seed in PROMPTS:
            wall, out = timed([str(THREEGEN), "generate", prompt, "--seed", str(seed), "--json"], tmp, env)
            report = json.loads(out)
            stages = {name: info["seconds"] for name, info in report["stages"].items()}
            compute = sum(stages.values())
            print(f"\n  {prompt!r} seed {seed}: {wall:.2f} s wall (run itself {report['seconds']:.2f} s, "
                  f"stage compute {compute:.2f} s), score {report['score']['score']:.3f} (proxy)")
            for name, seconds in stages.items():
                print(f"    {name:<18} {seconds:6.3f} s")


if __name__ == "__main__":
    main()
