"""``threegen workers``: every GPU worker of the pool (THREEGEN_WORKERS, or THREEGEN_WORKER_URL alone),
up or down, busy, queue, calls served, models loaded, card and last error, and the instance's ``gpu``
pool limit beside the number of workers (they should be equal: one step per card)."""

from __future__ import annotations

import argparse
import json
import sys

from .settings import Settings
from .workers import WorkerPool

GPU_POOL = "gpu"


def gpu_pool_limit() -> tuple[int | None, str]:
    """The instance's limit on the ``gpu`` pool (set, or the instance's default), or None and why not."""
    from .defs.instance import get_instance
    from .failures import InstanceUnavailable

    try:
        with get_instance() as instance:
            storage = instance.event_log_storage
            if GPU_POOL in storage.get_concurrency_keys():
                return storage.get_concurrency_info(GPU_POOL).slot_count, ""
            return instance.global_op_concurrency_default_limit, ""
    except InstanceUnavailable as exc:
        return None, str(exc)


def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    urls = settings.worker_urls
    if not urls:
        print("threegen workers: no GPU workers are configured: set THREEGEN_WORKERS=http://HOST:PORT,... "
              "(or THREEGEN_WORKER_URL for one)", file=sys.stderr)
        return 2
    rows = WorkerPool(urls).status()
    limit, why = gpu_pool_limit()
    down = [r["url"] for r in rows if not r["up"]]
    if args.json:
        print(json.dumps({"workers": rows, "gpu_pool_limit": limit}, indent=1))
        return 1 if down else 0
    print(f"{'worker':<28} {'state':<5} {'busy':<4} {'queue':>5} {'served':>6}  {'card':<18} models / last error")
    for r in rows:
        state, busy = ("up", "yes" if r["busy"] else "no") if r["up"] else ("down", "-")
        print(f"{r['url']:<28} {state:<5} {busy:<4} {r['queue']:>5} {r['served']:>6}  {r['card'][:18]:<18} "
              f"{', '.join(r['models']) or '-'}")
        if r["last_error"]:
            print(f"{'':<28} last error: {r['last_error']}")
    if limit is None:
        print(f"gpu pool limit: unknown ({why})")
    else:
        hint = "" if limit == len(urls) else (f": set it to the number of workers with `dagster instance "
                                               f"concurrency set {GPU_POOL} {len(urls)}`")
        print(f"gpu pool limit: {limit}, workers: {len(urls)} ({len(urls) - len(down)} up){hint}")
    return 1 if down else 0


def add_parser(sub) -> None:
    work = sub.add_parser("workers", help="every GPU worker of the pool: up or down, busy, models, card, last error")
    work.add_argument("--json", action="store_true", help="machine-readable output")
    work.set_defaults(run=cmd_workers)
