"""Small timing helpers shared by the benchmark scripts (figures are printed, never asserted)."""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from typing import Callable


def machine() -> str:
    import os

    return f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}"


def times_ms(fn: Callable[[], object], repeat: int = 15, warmup: int = 2) -> list[float]:
    """Wall time of each of ``repeat`` calls of ``fn`` in milliseconds, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def median_ms(fn: Callable[[], object], repeat: int = 15, warmup: int = 2) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    return statistics.median(times_ms(fn, repeat, warmup))


def peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh Python process running ``code``.

    Read from the child's own /proc/self/status VmHWM: ``ru_maxrss`` would carry over the
    parent's peak across exec on Linux."""
    report = "\nprint('PEAK', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"
    out = subprocess.run([sys.executable, "-c", code + report], check=True, capture_output=True, text=True).stdout
    return int(out.rsplit("PEAK", 1)[1]) / 1024


def row(label: str, ms: float, items: int) -> None:
    print(f"  {label:<44} {ms:9.2f} ms   {items / ms * 1e3 / 1e6:7.2f} M gaussians/s")
