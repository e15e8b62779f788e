"""The SPZ codec's threads: blocks of rows written by a small pool and by the calling thread.

numpy releases the GIL inside each operation, but each hand-off of the GIL between busy threads
costs time (tens of microseconds on a small VM), so the codec runs few, large tasks on one
thread fewer than there are cores: the caller works too. While it decompresses the next field
(zstd releases the GIL), the pool writes what has arrived; once all is submitted, the caller
runs the tasks no pool thread has started yet, last first, while the pool goes on from the
first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import cache

WORKERS = min(3, (os.cpu_count() or 1) - 1)
"""Pool threads; none on one core, where the caller runs every task itself."""


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="spz")


os.register_at_fork(after_in_child=_pool.cache_clear)  # a forked child has none of the parent's threads


class Tasks:
    """Tasks shared by the pool and the caller. Used as a context manager: once it is left, every
    task has finished or will never start, so the arrays they write may be dropped."""

    def __init__(self, parallel: bool = True) -> None:
        self.parallel = parallel and WORKERS > 0
        self.pending: list[tuple[Future, Callable[[], None]]] = []

    def submit(self, task: Callable[[], None]) -> None:
        if self.parallel:
            self.pending.append((_pool().submit(task), task))
        else:
            task()

    def finish(self) -> None:
        """Run here what no pool thread has started (last first), wait for the rest, re-raise an error."""
        for future, task in reversed(self.pending):
            if future.cancel():
                task()
        for future, _ in self.pending:
            if not future.cancelled():
                future.result()

    def __enter__(self) -> Tasks:
        return self

    def __exit__(self, *_exc: object) -> None:
        for future, _ in self.pending:
            future.cancel()
        wait([future for future, _ in self.pending])
