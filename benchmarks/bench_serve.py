"""Benchmark the batch API's overhead per prompt outside generation (`threegen serve`, SN17's miner API).

1. End to end: a real `threegen serve` process on loopback (embedded backends, comp 2), a batch of --prompts
   image prompts from a loopback HTTP server, driven as the validators' orchestrator does (POST /generate,
   GET /status every --poll seconds, GET /results). Each stem's own time (image fetch, registration, the
   Dagster run, the output's version) is saved in the batch; the overhead is the batch's wall time (POST to
   the last byte of the ZIP) less the stems' times, per prompt: state saves, the loop's hand-offs, polling
   granularity, the ZIP.
2. In-process parts: a 32-prompt batch's state machine (submit, 32 finishes, each saving the state to a
   local store) and its results ZIP (32 outputs of 50 KB, planned and streamed).

Run: .venv/bin/python benchmarks/bench_serve.py [--prompts 4] [--poll 0.2]
Figures are wall-clock (time.perf_counter), printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, median_ms  # noqa: E402
from threegen_dagster.serve.batch import BatchBook, GenerateRequest  # noqa: E402
from threegen_dagster.serve.results import plan, stream  # noqa: E402
from threegen_dagster.storage.local import LocalStore  # noqa: E402
from threegen_dagster_tests.rounds.state_server import StateServer, build_state  # noqa: E402
from threegen_dagster_tests.serve.serve_process import ServeProcess  # noqa: E402


def end_to_end(prompts: int, poll_s: float) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        folder = build_state(root / "state", "", images=prompts)
        with StateServer(root / "state") as images:
            env = {**os.environ, "THREEGEN_STORE": str(root / "store"), "DAGSTER_HOME": str(root / "home"),
                   "THREEGEN_COMPETITION": "2"}
            started = time.perf_counter()
            server = ServeProcess(env)
            try:
                listening = time.perf_counter() - started
                server.wait_for("ready", timeout_s=600)
                warm = time.perf_counter() - started
                batch = [{"stem": s, "image_url": f"{images.url}/procgen/{s}.png"} for s in folder.stems]
                t0 = time.perf_counter()
                assert server.client.post("/generate", json={"prompts": batch, "seed": 1}).status_code == 200
                while server.status()["status"] != "complete":
                    time.sleep(poll_s)
                archive = server.results()
                wall = time.perf_counter() - t0
            finally:
                server.stop()
        saved = json.loads((root / "store" / "serve" / "batch.json").read_text())
        stems_s = sum(s["seconds"] for s in saved["stems"])
    print(f"end to end, {prompts} prompts, polling every {poll_s:g} s: listening after {listening:.2f} s, "
          f"ready after {warm:.1f} s")
    print(f"  batch {wall:.1f} s, the stems' own time {stems_s:.1f} s ({stems_s / prompts:.1f} s a prompt), "
          f"ZIP of {len(archive.namelist())} entries")
    print(f"  overhead outside generation: {(wall - stems_s) / prompts * 1e3:.0f} ms a prompt "
          f"(polling alone can add up to {poll_s * 1e3:.0f} ms to a batch)")


def in_process() -> None:
    stems = [f"{i:064x}" for i in range(32)]
    request = GenerateRequest.model_validate({"prompts": [{"stem": s, "image_url": f"http://h/{s}.png"}
                                                          for s in stems], "seed": 1})
    output = b"x" * 50_000
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        store = LocalStore(tmp)

        def batch() -> BatchBook:
            book = BatchBook(lambda state: store.write("serve/batch.json", json.dumps(state).encode()))
            book.set_warm()
            book.submit(request)
            for stem in stems:
                book.finish(book.batch.id, stem, key=f"k-{stem}", version=1)
            return book

        state_ms = median_ms(batch, repeat=10)
        book = batch()
        zip_ms = median_ms(lambda: b"".join(stream(plan(book.completed(), lambda *a: output, "js", book.limits))),
                           repeat=10)
    print(f"in process, a 32-prompt batch: state machine with a saved state per change {state_ms:.1f} ms "
          f"({state_ms / 32:.2f} ms a prompt); results ZIP of 32 x 50 KB {zip_ms:.1f} ms ({zip_ms / 32:.2f} ms a prompt)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between GET /status")
    args = parser.parse_args()
    print(f"bench_serve: {machine()}")
    in_process()
    end_to_end(args.prompts, args.poll)


if __name__ == "__main__":
    main()
