"""A pool of GPU workers behind one code location: N ``threegen worker`` processes, one per card, each
at its own URL (THREEGEN_WORKERS), serving one deployment. No Dagster imports.

How a stage call finds a card: every worker's ``GET /load`` is read at once (busy, queue, calls
served); the call goes to an idle worker, fewest calls served first, sent *if idle*: the worker takes
its GPU lock without waiting or answers 409, so two runs that both saw the same worker idle never
share it (the lock is the lease: held for the call, gone with the worker). When every worker is busy
it looks again a few times over about a second (a card freed just now is taken at once rather than
queued behind a busy one), then (more runs than cards: the ``gpu`` pool's limit is above the workers
that are up) waits in the queue of the least loaded one. A worker that does not answer its probe (refused, hung), or whose
connection breaks while it runs the stage (killed, crashed, reset), is skipped with one log line and
the stage is sent to another: each worker at most once per call, so retries are bounded by the pool's
size. Stages are pure functions of their inputs, so running one again elsewhere is safe. Answers
that are the stage's own (a 4xx verdict, a timeout) are not retried: another card would say the same.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .backends.gpu import BackendError
from .worker import WorkerBusy, WorkerDown
from .worker_client import WorkerClient

PROBE_TIMEOUT_S = 5.0  # a worker that cannot say how busy it is within this is skipped for the call
SETTLE_PROBES, SETTLE_S = 4, 0.25  # every worker busy: look again this often, this far apart, before queueing
_log = logging.getLogger("threegen.workers")


@dataclass(frozen=True)
class Load:
    """One worker as a stage call sees it: up or not, and how busy."""

    url: str
    up: bool
    busy: bool = False
    queue: int = 0
    served: int = 0
    error: str = ""


class WorkerPool:
    """The model stages of one run, sent to whichever worker of ``urls`` is free."""

    def __init__(self, urls: Sequence[str], timeout_s: float = 600.0, probe_timeout_s: float = PROBE_TIMEOUT_S,
                 log: Callable[[str], None] | None = None) -> None:
        if not urls:
            raise ValueError("a pool needs at least one worker URL")
        self.urls = tuple(u.rstrip("/") for u in urls)
        self.timeout_s, self.probe_timeout_s = timeout_s, probe_timeout_s
        self.log = log or _log.warning

    def client(self, url: str) -> WorkerClient:
        return WorkerClient(url, self.timeout_s)

    def loads(self, urls: Sequence[str] | None = None) -> list[Load]:
        """Every worker's load, probed at once (a dead one costs one probe timeout, not one per worker)."""
        urls = list(self.urls if urls is None else urls)

        def probe(url: str) -> Load:
            try:
                out = WorkerClient(url).load(timeout_s=self.probe_timeout_s)
            except BackendError as exc:
                return Load(url, False, error=str(exc))
            return Load(url, True, bool(out.get("busy")), int(out.get("queue", 0)), int(out.get("served", 0)))

        with ThreadPoolExecutor(max_workers=min(16, len(urls) or 1)) as threads:
            return list(threads.map(probe, urls))

    def call(self, stage: str, *args: Any) -> tuple[Any, dict]:
        """The stage on a free worker: (its result, the worker's meta with ``worker``, the URL it ran on,
        and ``worker_call_start``/``_end``, when this run sent it and had the answer, epoch seconds; the
        worker's own ``gpu_lock_start``/``_end`` say when it held the card)."""
        if len(self.urls) == 1:  # one worker: its own queue orders the calls, its own errors say what failed
            try:
                return self._on(self.urls[0], stage, args, if_idle=False)
            except WorkerDown as exc:  # nowhere else to send it: the step fails, saying why
                raise BackendError(str(exc)) from None
        skipped: dict[str, str] = {}
        looks_left = SETTLE_PROBES
        while len(skipped) < len(self.urls):
            loads = self.loads([u for u in self.urls if u not in skipped])
            for load in loads:
                if not load.up:
                    skipped[load.url] = load.error
                    self.log(f"{load.error}: skipped; {stage} goes to another worker")
            up = [load for load in loads if load.up]
            order = {url: i for i, url in enumerate(self.urls)}
            idle = sorted((w for w in up if not w.busy and not w.queue), key=lambda w: (w.served, order[w.url]))
            least = sorted(up, key=lambda w: (w.busy + w.queue, w.served, order[w.url]))
            queue_on = [] if looks_left else least[:1]
            for load, if_idle in [(w, True) for w in idle] + [(w, False) for w in queue_on]:
                try:
                    return self._on(load.url, stage, args, if_idle)
                except WorkerBusy:
                    continue  # taken since its probe: the next one
                except WorkerDown as exc:
                    skipped[load.url] = str(exc)
                    left = len(self.urls) - len(skipped)
                    self.log(f"{exc}: {stage} is sent again to another worker ({left} left)" if left else
                             f"{exc}: no worker left for {stage}")
                    break
            else:  # every worker that is up is busy: look again shortly before queueing on one
                looks_left -= 1
                time.sleep(SETTLE_S)
        raise BackendError(f"no GPU worker could run {stage}: " + "; ".join(skipped[u] for u in self.urls))

    def _on(self, url: str, stage: str, args: tuple, if_idle: bool) -> tuple[Any, dict]:
        start = time.time()
        result, meta = self.client(url).call(stage, *args, if_idle=if_idle)
        return result, {**meta, "worker": url, "worker_call_start": round(start, 3),
                        "worker_call_end": round(time.time(), 3)}

    def status(self) -> list[dict[str, Any]]:
        """Every worker for people: URL, up or down, busy, queue, calls served, models loaded, card, last
        error (the worker's own last failed call, or why it cannot be reached)."""

        def one(url: str) -> dict[str, Any]:
            try:
                out = WorkerClient(url).status(timeout_s=max(self.probe_timeout_s, 5.0))
            except BackendError as exc:
                return {"url": url, "up": False, "busy": False, "queue": 0, "served": 0, "models": [],
                        "card": "", "last_error": str(exc)}
            models = [f"{stage}:{m.get('backend', '?')}" for stage, m in out.get("models", {}).items()
                      if m.get("loaded")]
            return {"url": url, "up": True, "busy": bool(out.get("busy")), "queue": int(out.get("queue", 0)),
                    "served": sum(out.get("served", {}).values()), "models": models, "card": out.get("device", ""),
                    "last_error": out.get("last_error", "")}

        with ThreadPoolExecutor(max_workers=min(16, len(self.urls))) as threads:
            return list(threads.map(one, self.urls))
