"""Benchmark a comp 2 round's per-prompt work on the embedded backends: the pipeline's refined mesh, the comp 2
module written from it (comp2_generate), its check (the Node checker, three@0.183.2) and the judge-style
renders (8 white views, 4 gray views, the grid; three r183 in Chromium with swiftshader WebGL).

Run: .venv/bin/python benchmarks/bench_round.py [--prompts 8] [--no-render] [--no-publish]

After the prompts, the round's last stages: every module published to a local S3 server's public bucket
(SeaweedFS, the tests' server) and read back by its public URL (sha256 compared), and the commitment payload
built, sealed (drand timelock) and signed by a throwaway hotkey; then the wall time of each stage and of the
round (every stage one after the other, as one process would run it).

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
    parser.add_argument("--no-publish", action="store_true", help="skip the CDN publish/verify and commitment stages")
    args = parser.parse_args()
    prompts = [PROMPTS[i % len(PROMPTS)] + (f" #{i // len(PROMPTS)}" if i >= len(PROMPTS) else "")
               for i in range(args.prompts)]
    check = checker_ready()
    render = not args.no_render and find_chromium() is not None
    print(f"bench_round: {len(prompts)} prompts on the embedded backends; {machine()}")
    print(f"  Node check: {'yes' if check else 'no (run scripts/install_node_checker.sh)'}; "
          f"renders: {'yes' if render else 'no'}")
    stages, refine = (Procedural(), FloodFill(), Inflate()), Decimate()
    rows, modules = [], {}
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
                modules[f"{seed:064x}"] = module.data
                print(f"  {prompt[:25]:<26}{mesh_s:8.2f}{comp2_s:9.2f}{module.faces:7d}{module.literal_bytes:10d}"
                      f"{check_s:9.2f}{render_s:9.2f}")
        finally:
            if renderer:
                renderer.__exit__(None, None, None)
    stages = {name: sum(v for v in column if v == v)
              for name, column in zip(("mesh", "comp 2 module", "Node check", "render"), zip(*rows))}
    if not args.no_publish:
        stages.update(publish_stages(modules))
    for name, column in zip(("mesh", "comp 2 module", "Node check", "render"), zip(*rows)):
        values = [v for v in column if v == v]
        if values:
            median = statistics.median(values)
            print(f"  {name:<14} median {median:6.2f} s/prompt, total {sum(values):7.1f} s; "
                  f"x128 on one core: {median * 128 / 60:6.1f} min")
    print(f"  round of {len(prompts)} prompts, stage by stage (wall s): "
          + ", ".join(f"{name} {value:.1f}" for name, value in stages.items()))
    medians = [statistics.median(v for v in column if v == v) for column in zip(*rows) if any(v == v for v in column)]
    once = sum(stages.get(k, 0.0) for k in ("publish", "verify", "commitment")) * 128 / max(1, len(prompts))
    print(f"  round total: {sum(stages.values()):.1f} s; a 128-prompt round from the per-prompt medians, one process: "
          f"{(sum(medians) * 128 + once) / 60:.1f} min")


def publish_stages(modules: dict[str, bytes]) -> dict[str, float]:
    """Publish to a local S3 server's public bucket, verify every URL, seal and sign the commitment."""
    import os

    from threegen_dagster.rounds.commitment import build_payload, seal
    from threegen_dagster.rounds.publish import Output, upload, verify
    from threegen_dagster.storage import open_store
    from threegen_dagster_tests.rounds.local_chain import make_wallet
    from threegen_dagster_tests.s3_server import PUBLIC_BUCKET, S3Server

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-round-cdn-") as tmp, S3Server(Path(tmp)) as server:
        os.environ.update(server.env())
        cdn = open_store(f"s3://{PUBLIC_BUCKET}/bench", endpoint_url=server.endpoint)
        items = [Output(stem, data, True) for stem, data in modules.items()]
        publication, out["publish"] = seconds(lambda: upload(cdn, items, number=53, competition=2,
                                                             cdn_url=server.public_url("bench")))
        _, out["verify"] = seconds(lambda: verify(publication, timeout_s=30, tries=1))
        print(f"  published {len(publication.urls)}, verified {len(publication.verified)} by URL, "
              f"failed {len(publication.failures)}: {out['publish']:.2f} s upload, {out['verify']:.2f} s read-back")
        wallet = make_wallet(Path(tmp) / "wallets")
        payload = build_payload("miner-one/threejs-gen", "0" * 40, server.public_url("bench"))
        _, out["commitment"] = seconds(lambda: seal(payload, wallet.hotkey))
    return out


if __name__ == "__main__":
    main()
