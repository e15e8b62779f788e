"""The batch API's state machine, without Dagster: the request (validated at the edge), the batch, its
per-stem states, the status the validators poll, and the state persisted after every change.

    warming_up ──warm──► ready ──POST──► generating ──last stem──► complete ──POST──► generating ...
        └──warm-up failed──► replace (the reason in the payload; the pod is no use)

A POST is accepted only from ``ready`` or ``complete``. While ``generating``, the same stems with the
same seed again are answered 200 (a retried POST: the batch goes on, nothing restarts); anything else is
409. From ``complete`` every POST starts a new batch, the same stems included: the audit's repeats
regenerate, they are not served from the last batch.

Restart: the batch (id, seed, stems, URLs, each stem's state, output version or failure reason) is saved
after every change. A server started over a saved batch reports ``warming_up`` until its models are
warm, then resumes: stems already done or failed keep their outcome, the rest (the one in progress
when the server died included) are generated again, so ``generating`` goes on to ``complete`` with the
batch's first stems kept. A saved ``complete`` batch is served again by ``GET /results``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ..keys import MAX_SEED
from ..rounds.state import HTTP_URL, STEM

WARMING_UP, READY, GENERATING, COMPLETE, REPLACE = "warming_up", "ready", "generating", "complete", "replace"
PENDING, DONE, FAILED = "pending", "done", "failed"
MAX_URL_CHARS = 2048


@dataclass(frozen=True)
class ServeLimits:
    """What one request and one results ZIP may hold (SN17-NOW.md section 4: 64 MiB, 100 entries, 1 MiB a file)."""

    max_prompts: int = 99  # with _failed.json, at most 100 ZIP entries
    zip_bytes: int = 64 * 2**20
    zip_entries: int = 100
    file_bytes: int = 2**20
    body_bytes: int = 2**20  # a POST /generate body


Stem = Annotated[str, StringConstraints(pattern=STEM.pattern)]


class PromptItem(BaseModel):
    """One prompt of a batch: its stem (the output's file name) and its image's http(s) URL."""

    model_config = ConfigDict(extra="ignore", strict=True)  # a field the orchestrator adds later costs no pod
    stem: Stem
    image_url: Annotated[str, StringConstraints(min_length=1, max_length=MAX_URL_CHARS)]

    @field_validator("image_url")
    @classmethod
    def _http(cls, value: str) -> str:
        """An http(s) URL as the round pipeline takes it (``rounds.state.HTTP_URL``); a scheme's case is
        no matter (RFC 3986), so ``HTTP://`` is taken, written lower."""
        scheme, sep, rest = value.partition("://")
        value = scheme.lower() + sep + rest
        if not HTTP_URL.fullmatch(value):
            raise ValueError(f"not an http(s) URL (with a host, without spaces): {value[:100]!r}")
        return value


class GenerateRequest(BaseModel):
    """``POST /generate``: ``{"prompts": [{"stem", "image_url"}], "seed"}``; a seed is an integer in
    [0, 2**32-1] (never "3", 3.0 or true); stems are unique; the count is checked against the limits."""

    model_config = ConfigDict(extra="ignore", strict=True)
    prompts: list[PromptItem] = Field(min_length=1, max_length=ServeLimits.max_prompts)  # a long list fails at once
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)]

    @field_validator("prompts")
    @classmethod
    def _unique(cls, prompts: list[PromptItem]) -> list[PromptItem]:
        seen: set[str] = set()
        for item in prompts:
            if item.stem in seen:
                raise ValueError(f"the stem {item.stem!r} comes twice")
            seen.add(item.stem)
        return prompts


class Refused(Exception):
    """A request the server cannot take now: the HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class StemState:
    stem: str
    url: str
    state: str = PENDING
    key: str = ""  # the generation key (its partition in Dagster)
    version: int = 0  # the output's stored version this batch made
    reason: str = ""  # why it failed
    seconds: float = 0.0


@dataclass
class Batch:
    id: str
    seed: int
    stems: dict[str, StemState]
    created: float = field(default_factory=time.time)
    finished: float | None = None

    @property
    def done(self) -> int:
        return sum(s.state != PENDING for s in self.stems.values())

    @property
    def complete(self) -> bool:
        return self.done == len(self.stems)

    def same_request(self, request: GenerateRequest) -> bool:
        return self.seed == request.seed and set(self.stems) == {p.stem for p in request.prompts}

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "seed": self.seed, "created": self.created, "finished": self.finished,
                "stems": [asdict(s) for s in self.stems.values()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Batch:
        """A saved batch; fields this version does not know are left out. KeyError, TypeError or ValueError
        for a document that is not one."""
        known = {f.name for f in fields(StemState)}
        stems = {s["stem"]: StemState(**{k: v for k, v in s.items() if k in known}) for s in data["stems"]}
        return cls(str(data["id"]), int(data["seed"]), stems, float(data["created"]), data.get("finished"))


def batch_id(request: GenerateRequest, now: float) -> str:
    """A readable, unique name for a batch: when it arrived, and a hash of its stems and seed."""
    digest = hashlib.sha256(repr((sorted(p.stem for p in request.prompts), request.seed)).encode()).hexdigest()
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-{digest[:8]}"


class BatchBook:
    """The server's one batch and its status; thread-safe. ``save`` persists the batch (a JSON document)
    after every change; ``saved`` is the batch found at start (None: none)."""

    def __init__(self, save: Callable[[dict], None], saved: dict | None = None,
                 limits: ServeLimits = ServeLimits(), log: Callable[[str], None] = print) -> None:
        self._save, self.limits, self._log = save, limits, log
        self._lock = threading.Condition()
        self.batch: Batch | None = None
        try:
            self.batch = Batch.from_json(saved) if saved else None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            log(f"threegen serve: the saved batch is not one ({type(exc).__name__}: {exc}); starting without it")
        self.warm = False
        self.broken = ""  # why the server cannot serve (warm-up failed): status `replace`
        self.resumed = bool(self.batch and not self.batch.complete)

    # -- status
    def status(self, replacements_remaining: int | None = None) -> dict[str, Any]:
        with self._lock:
            batch = self.batch
            state = (REPLACE if self.broken else WARMING_UP if not self.warm else READY if batch is None
                     else COMPLETE if batch.complete else GENERATING)
            payload: dict[str, Any] = {}
            if self.broken:
                payload["reason"] = self.broken
            if batch is not None:
                payload.update(batch=batch.id, seed=batch.seed,
                               failed=sum(s.state == FAILED for s in batch.stems.values()))
            if replacements_remaining is not None:
                payload["replacements_remaining"] = replacements_remaining
            return {"status": state, "progress": batch.done if batch else 0, "total": len(batch.stems) if batch else 0,
                    "payload": payload}

    def set_warm(self) -> None:
        with self._lock:
            self.warm = True
            self._lock.notify_all()

    def set_broken(self, reason: str) -> None:
        with self._lock:
            self.broken = " ".join(reason.split())[:1000] or "the warm-up failed"
            self._lock.notify_all()

    # -- POST /generate
    def submit(self, request: GenerateRequest, now: float | None = None) -> int:
        """Take a batch; the number accepted. Refused (409/503, with why) when the server cannot."""
        if len(request.prompts) > self.limits.max_prompts:
            raise Refused(400, f"{len(request.prompts)} prompts: at most {self.limits.max_prompts} a batch "
                               f"(the results ZIP holds at most {self.limits.zip_entries} entries)")
        with self._lock:
            state = self.status()["status"]
            if state == GENERATING:
                if self.batch.same_request(request):
                    return len(request.prompts)  # a retried POST: the batch goes on
                raise Refused(409, f"batch {self.batch.id} is generating ({self.batch.done}/{len(self.batch.stems)} "
                                   f"done): a different batch (other stems or seed) is refused until it completes")
            if state == REPLACE:
                raise Refused(503, f"this server cannot generate: {self.broken}")
            if state == WARMING_UP:
                raise Refused(409, "warming up: the models are loading; POST when GET /status says ready")
            now = time.time() if now is None else now
            self.batch = Batch(batch_id(request, now), request.seed,
                               {p.stem: StemState(p.stem, p.image_url) for p in request.prompts}, created=now)
            self._persist()
            self._lock.notify_all()
            return len(request.prompts)

    # -- the generation loop's side
    def next_pending(self, timeout_s: float | None = None) -> tuple[str, int, StemState] | None:
        """(batch id, seed, a copy of the next pending stem), waiting up to ``timeout_s`` for one."""
        with self._lock:
            found = self._lock.wait_for(self._pending, timeout=timeout_s)
            if not found:
                return None
            stem = found
            return self.batch.id, self.batch.seed, StemState(**asdict(stem))

    def _pending(self) -> StemState | None:
        if not self.warm or self.broken or self.batch is None:
            return None
        return next((s for s in self.batch.stems.values() if s.state == PENDING), None)

    def finish(self, batch: str, stem: str, *, key: str = "", version: int = 0, reason: str = "",
               seconds: float = 0.0) -> None:
        """Record one stem's outcome: its output's version, or the reason it failed."""
        with self._lock:
            if self.batch is None or self.batch.id != batch or stem not in self.batch.stems:
                return  # a batch that was replaced meanwhile (cannot happen while generating; kept safe)
            entry = self.batch.stems[stem]
            entry.state, entry.key, entry.version, entry.seconds = (FAILED if reason else DONE), key, version, seconds
            entry.reason = " ".join(reason.split())[:500]
            if self.batch.complete:
                self.batch.finished = time.time()
            self._persist()

    def completed(self) -> Batch:
        """The complete batch for GET /results; Refused(409) otherwise."""
        with self._lock:
            state = self.status()["status"]
            if state != COMPLETE:
                raise Refused(409, f"no results: the status is {state}" + (
                    f" ({self.batch.done}/{len(self.batch.stems)} done)" if state == GENERATING else ""))
            return Batch.from_json(self.batch.to_json())

    def _persist(self) -> None:
        """Save the batch. A save that fails (a full disk, the store down) is logged and made again with the
        next change: the batch goes on in memory, and only a restart before a save succeeds loses it."""
        try:
            self._save(self.batch.to_json())
        except Exception as exc:  # noqa: BLE001 - the pod must go on serving the batch it took
            self._log(f"threegen serve: batch {self.batch.id} could not be saved ({type(exc).__name__}: {exc}); "
                      "it goes on in memory")


class Generator:
    """What the loop drives (``pipeline.PipelineGenerator``; anything with these two methods)."""

    def warm(self) -> None: ...

    def generate(self, batch: str, stem: str, url: str, seed: int) -> tuple[str, int]:
        """(generation key, output version); GenerationFailed with a one-line reason otherwise."""
        raise NotImplementedError


class GenerationFailed(Exception):
    """One prompt that produced no output: the reason goes to ``_failed.json``."""


def run_loop(book: BatchBook, generator: Generator, log: Callable[[str], None] = print,
             stop: threading.Event | None = None) -> None:
    """Warm the generator, then generate every pending stem, one at a time, until ``stop`` is set.
    A warm-up failure turns the status to ``replace``; a stem's failure is that stem's, never the loop's."""
    try:
        generator.warm()
    except Exception as exc:  # noqa: BLE001 - any failure to warm means this server is no use
        book.set_broken(f"warm-up failed: {type(exc).__name__}: {exc}")
        log(f"threegen serve: {book.broken}")
        return
    book.set_warm()
    log("threegen serve: warm" + (f"; resuming batch {book.batch.id}" if book.resumed else ""))
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            _next(book, generator, log)
        except Exception as exc:  # noqa: BLE001 - nothing ends the loop: the status would stay `generating`
            log(f"threegen serve: the generation loop: {type(exc).__name__}: {exc}")
            stop.wait(1.0)


def _next(book: BatchBook, generator: Generator, log: Callable[[str], None]) -> None:
    """Generate the next pending stem, if one comes within a second; its failure is its own."""
    item = book.next_pending(timeout_s=1.0)
    if item is None:
        return
    batch, seed, stem = item
    started = time.perf_counter()
    try:
        key, version = generator.generate(batch, stem.stem, stem.url, seed)
    except Exception as exc:  # noqa: BLE001 - one prompt's failure is recorded, the batch goes on
        reason = str(exc) if isinstance(exc, GenerationFailed) else f"{type(exc).__name__}: {exc}"
        book.finish(batch, stem.stem, reason=reason or "failed", seconds=round(time.perf_counter() - started, 2))
        log(f"threegen serve: batch {batch}: {stem.stem} failed: {reason}")
        return
    book.finish(batch, stem.stem, key=key, version=version, seconds=round(time.perf_counter() - started, 2))
