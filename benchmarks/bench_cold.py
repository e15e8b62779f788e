"""Cold `threegen generate` from the shell on the embedded CPU backends: where the wall time goes.

Run: .venv/bin/python benchmarks/bench_cold.py [N]   (N runs, default 5; figures are medians)
Each run is a fresh process (a new prompt each time, one DAGSTER_HOME and store for the series, as
on a miner). Printed, never asserted:
  wall        the whole command, from the shell
  start       interpreter start and the CLI's imports, up to `generate` (psutil: the process's age)
  setup       importing the definitions and the stages, opening the instance, registering the prompt
  bookkeeping the run's wall minus its stages' compute (Dagster's events, the store's writes) plus the
              inline catalog refresh
  compute     the stages' own seconds (their metadata)
  rest        exit, the report, what none of the above covers
and, separately, `import threegen_dagster.definitions` alone in a fresh process, and the modules
the configuration never uses that it imported anyway (there should be none).
"""

from __future__ import annotations

import compileall
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

THREEGEN = Path(sys.executable).with_name("threegen")
HEAVY = ("torch", "diffusers", "transformers", "bittensor", "dagster_aws", "boto3", "pandas")


def _run(cmd: list[str], cwd: str, env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out


def main(n: int = 5) -> None:
    print(f"cold `threegen generate` from the shell, median of {n}; {machine()}")
    # the project's bytecode compiled, as `make setup` leaves it (and as any machine without
    # PYTHONDONTWRITEBYTECODE has it after the first run): a cold process, not a cold checkout
    compileall.compile_dir(str(Path(__file__).resolve().parents[1] / "threegen_dagster"), quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_HOME", "THREEGEN_"))}
        env["THREEGEN_GAUSSIANS"] = "50000"
        code = ("import sys, time; t = time.perf_counter(); import threegen_dagster.definitions; "
                "print(time.perf_counter() - t); print(' '.join(m for m in %r if m in sys.modules))" % (HEAVY,))
        imports = [_run([sys.executable, "-c", code], tmp, env)[1].splitlines() for _ in range(n)]
        rows = []
        for i in range(n):
            wall, out = _run([str(THREEGEN), "generate", f"a wooden chair number {i}", "--seed", str(i), "--json"],
                             tmp, env)
            report = json.loads(out)
            t = report["timings"]
            compute = sum(info["seconds"] or 0 for info in report["stages"].values())
            book = t["run_s"] - compute + t["catalog_s"]
            rows.append({"wall": wall, "start": t["process_start_s"], "setup": t["setup_s"], "bookkeeping": book,
                         "compute": compute, "catalog": t["catalog_s"],
                         "rest": wall - t["process_start_s"] - t["setup_s"] - t["run_s"] - t["catalog_s"]})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"  import threegen_dagster.definitions alone: {statistics.median(float(i[0]) for i in imports):.2f} s; "
          f"unused heavy modules imported: {imports[0][1] if len(imports[0]) > 1 else 'none'}")
    for name in ("wall", "start", "setup", "bookkeeping", "catalog", "compute", "rest"):
        note = "  (of bookkeeping: the inline catalog refresh)" if name == "catalog" else ""
        print(f"  {name:<12} {med[name]:6.2f} s{note}")
    print(f"  wall / compute: {med['wall'] / med['compute']:.2f}x   (each run: "
          + ", ".join(f"{r['wall']:.1f}/{r['compute']:.1f}" for r in rows) + ")")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
