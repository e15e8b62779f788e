"""SPZ codec and PLY I/O speed, beside pyspz's C++ figures on the same 2-core machine class.

Each case runs in a fresh process (as pyspz's reference figures were taken), so one case's
allocations do not shape the next one's; it prints the median and the minimum per call over
many calls. Figures are printed, never asserted.

On a machine shared with other work, ``--realtime`` (Linux, as root) times each case's calls
with the case's threads on SCHED_FIFO, so the other processes' load stops counting: the figures
of an otherwise idle machine. Meanwhile the others get the 5% of the CPU the kernel keeps for
them (sched_rt_runtime_us), so use it for short runs.

``--breakdown`` times only decompress SH0 and its parts, in turns within one process: zstd alone,
decompress on the calling thread alone, with the pool, with numpy's writers instead of the compiled
kernel, and the CPU time a pooled call uses.

Decompress uses the compiled kernel (``_spz_kernel.c``) where the package was built with a C
compiler; the header line says which decoder ran.

Run: .venv/bin/python benchmarks/bench_spz.py [--repeat N] [--realtime] [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT.parent)]
from _common import machine, peak_rss_mb, times_ms  # noqa: E402

from threegen_dagster.splats import ply, spz, spz_unpack  # noqa: E402
from threegen_dagster_tests.splats.conftest import random_cloud  # noqa: E402

N = 100_000
DECODER = "compiled kernel" if spz_unpack.KERNEL else "numpy writers (the kernel is not built)"
CASES = {  # name: (label, pyspz's median on this machine class)
    "decompress_sh0": ("decompress SH0 (PLY without normals)", "pyspz 4.1-5.7 ms; aim <= 4.5"),
    "decompress_sh3": ("decompress SH3", "pyspz ~44 ms"),
    "compress_sh0": ("compress SH0, no normals", "pyspz ~19 ms"),
    "compress_sh3n": ("compress SH3 + normals", "pyspz 73-115 ms"),
    "read_ply_sh3n": ("read_ply SH3 + normals", ""),
}


def _call(case: str):
    """The timed call of a case, with its input built beforehand."""
    if case.startswith("decompress"):
        frame = spz.compress(ply.write_ply(random_cloud(N, int(case[-1]))))
        return lambda: spz.decompress(frame)
    degree, normals = int(case[-2 if case.endswith("n") else -1]), case.endswith("n")
    data = ply.write_ply(random_cloud(N, degree), include_normals=normals)
    return (lambda: ply.read_ply(data)) if case.startswith("read_ply") else (lambda: spz.compress(data))


@contextmanager
def _realtime() -> Iterator[None]:
    """This process's threads, and those they start, on SCHED_FIFO for the duration."""
    def every_thread(policy: int, priority: int) -> None:
        for tid in os.listdir("/proc/self/task"):
            os.sched_setscheduler(int(tid), policy, os.sched_param(priority))

    every_thread(os.SCHED_FIFO, 1)
    try:
        yield
    finally:
        every_thread(os.SCHED_OTHER, 0)


def _time_case(case: str, repeat: int, realtime: bool) -> None:
    """Child process: print {"median": ms, "min": ms} for one case."""
    call = _call(case)
    with _realtime() if realtime else nullcontext():
        times = times_ms(call, repeat, warmup=3)
    print(json.dumps({"median": statistics.median(times), "min": min(times)}))


def _breakdown(repeat: int, realtime: bool) -> None:
    """Child process: where a 100k SH0 decompress spends its time, each variant timed in turns of 20
    calls in one process, so all of them meet the same moments of a shared machine."""
    import resource

    import zstandard

    from threegen_dagster.splats import spz_pool

    frame = spz.compress(ply.write_ply(random_cloud(N, 0)))
    pooled = spz_pool.WORKERS

    def on_one_thread() -> None:
        spz_pool.WORKERS = 0
        try:
            spz.decompress(frame)
        finally:
            spz_pool.WORKERS = pooled

    def with_numpy_writers() -> None:
        kernel, spz_unpack.KERNEL = spz_unpack.KERNEL, None
        try:
            spz.decompress(frame)
        finally:
            spz_unpack.KERNEL = kernel

    variants = {"zstd alone": lambda: zstandard.ZstdDecompressor().decompress(frame),
                "decompress, calling thread only": on_one_thread,
                "decompress, with the pool": lambda: spz.decompress(frame),
                "decompress, numpy writers, with the pool": with_numpy_writers}
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu = 0.0
    with _realtime() if realtime else nullcontext():
        for name, call in variants.items():
            times_ms(call, 1, warmup=5)
        for _ in range(max(1, repeat // 20)):
            for name, call in variants.items():
                before = resource.getrusage(resource.RUSAGE_SELF)
                times[name] += times_ms(call, 20, warmup=0)
                after = resource.getrusage(resource.RUSAGE_SELF)
                if call is variants["decompress, with the pool"]:
                    cpu += after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    medians = {name: statistics.median(t) for name, t in times.items()}
    medians["CPU time of a pooled call, both threads"] = cpu * 1e3 / len(times["decompress, with the pool"])
    print(json.dumps(medians))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=200, help="timed calls per case (compress: a fifth)")
    parser.add_argument("--realtime", action="store_true", help="time the calls on SCHED_FIFO (root)")
    parser.add_argument("--breakdown", action="store_true",
                        help="only decompress SH0: zstd alone, one thread, the pool, their CPU time")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # the child's one case
    args = parser.parse_args()
    if args.case == "breakdown":
        return _breakdown(args.repeat, args.realtime)
    if args.case:
        return _time_case(args.case, args.repeat, args.realtime)
    if args.breakdown:
        command = [sys.executable, __file__, "--case", "breakdown", "--repeat", str(args.repeat)]
        out = subprocess.run(command + ["--realtime"] * args.realtime, check=True, capture_output=True, text=True)
        print(f"decompress {N:,} SH0 gaussians, medians per call over {args.repeat} calls each, taken in "
              f"turns; {machine()}; load {os.getloadavg()[0]:.1f}" + (", on SCHED_FIFO" if args.realtime else "")
              + f"; decoder: {DECODER}")
        for name, ms in json.loads(out.stdout).items():
            print(f"  {name:<40} {ms:7.2f} ms")
        return

    load = os.getloadavg()[0]
    print(f"SPZ codec, {N:,} gaussians, level 1, single-threaded zstd; {machine()}; load {load:.1f}"
          + (", timed on SCHED_FIFO" if args.realtime else "") + f"; decoder: {DECODER}")
    print(f"  each case in a fresh process; per call over {args.repeat} calls (compress: {max(1, args.repeat // 5)})")
    for case, (label, reference) in CASES.items():
        repeat = max(1, args.repeat // 5) if case.startswith("compress") else args.repeat
        command = [sys.executable, __file__, "--case", case, "--repeat", str(repeat)]
        out = subprocess.run(command + ["--realtime"] * args.realtime, check=True, capture_output=True, text=True).stdout
        t = json.loads(out)
        print(f"  {label:<38} median {t['median']:7.2f} ms   min {t['min']:7.2f} ms   {reference}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.ply"
        path.write_bytes(ply.write_ply(random_cloud(1_000_000, 3)))
        setup = f"from threegen_dagster.splats import spz; data = open({str(path)!r}, 'rb').read();"
        base = peak_rss_mb(setup)
        packed = peak_rss_mb(setup + "s = spz.compress(data)")
        both = peak_rss_mb(setup + "s = spz.compress(data); del data; out = spz.decompress(s)")
    print(f"  peak RSS, 1M SH3 gaussians (a 248 MB PLY) in a fresh process: {base:.0f} MB after reading the "
          f"file, {packed:.0f} MB with compress, {both:.0f} MB with compress then decompress")


if __name__ == "__main__":
    main()
