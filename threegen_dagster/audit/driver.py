"""The validators' audit run (SN17-NOW.md section 4) against any server of the miner batch API: wait until
it is ready (bounded), then for each of ``repeats`` full repeats POST every batch of ``batch_size`` stems with
the round's seed, poll ``/status`` every ``poll_interval_s`` (``poll_failures`` failed polls in a row lose the
pod, as does a POST that still fails after its tries, 409 included), GET ``/results`` within the ZIP limits,
and count the failed stems. A repeat fails past ``repeat_timeout_s`` or ``max_failed`` failed stems, and the
audit stops there (PR #64's early exit). A lost pod, or ``replace``, moves to the next pod (``pods`` in all)
and the repeats start over there: the three repeats run on one pod. ``replace`` with no replacement left
ends the run. Every default is ``AuditRules``'s. No Dagster imports."""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .client import ApiError, BatchClient, ZipLimits, ZipRefused


@dataclass(frozen=True)
class AuditRules:
    batch_size: int = 32
    repeats: int = 3
    pods: int = 4
    poll_interval_s: float = 10.0
    poll_failures: int = 18
    ready_timeout_s: float = 4 * 3600.0
    repeat_timeout_s: float = 7200.0
    max_failed: int = 12
    post_tries: int = 3
    request_timeout_s: float = 30.0
    zip: ZipLimits = ZipLimits()

    def __post_init__(self) -> None:
        for name in ("batch_size", "repeats", "pods", "poll_failures", "post_tries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_failed < 0 or self.poll_interval_s <= 0 or self.repeat_timeout_s <= 0:
            raise ValueError("max_failed must be >= 0, poll_interval_s and repeat_timeout_s > 0")


@dataclass
class BatchRecord:
    repeat: int
    index: int
    pod: int
    stems: int
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # stem -> reason
    outcome: str = "ok"  # ok | failed | pod lost: ... | timeout


@dataclass
class RepeatRecord:
    repeat: int
    pod: int
    seconds: float = 0.0
    failed: int = 0
    passed: bool = False
    reason: str = ""


@dataclass
class AuditReport:
    passed: bool = False
    reason: str = ""
    pods_used: int = 0
    pod_losses: list[str] = field(default_factory=list)
    repeats: list[RepeatRecord] = field(default_factory=list)
    batches: list[BatchRecord] = field(default_factory=list)
    outputs: list[dict[str, bytes]] = field(default_factory=list)  # per repeat of the final pod: stem -> bytes

    def failures_by_reason(self) -> Counter:
        """How many stems failed for each reason, with the stem, URLs and run ids taken out."""
        return Counter(reason_kind(r, s) for b in self.batches for s, r in b.failed.items())

    def sha256(self) -> list[dict[str, str]]:
        return [{s: hashlib.sha256(d).hexdigest() for s, d in sorted(out.items())} for out in self.outputs]

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("outputs")
        data["sha256"] = self.sha256()
        data["failures_by_reason"] = dict(self.failures_by_reason())
        return data


_URL = re.compile(r"https?://\S*[^\s:,;.)]")
_RUN = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def reason_kind(reason: str, stem: str) -> str:
    """A failure reason as a kind: its stem, URLs and run ids replaced, so like failures count together."""
    kind = _RUN.sub("<run>", _URL.sub("<url>", reason)).replace(stem, "<stem>")
    return kind.strip()[:200] or "failed"


class PodLost(Exception):
    """The orchestrator gives this pod up (failed polls, a POST refused after its tries, ``replace``)."""


class RunEnded(Exception):
    """The audit run ends here (``replace`` with no replacement left, never ready)."""


Event = Callable[[str, dict], None]


def batches(stems: list[str], size: int) -> list[list[str]]:
    return [stems[i:i + size] for i in range(0, len(stems), size)]


class Audit:
    """One audit run: ``Audit(prompts, seed, rules, pod_url).run()``; ``pod_url(n)`` is pod n's base URL
    (a fixed server: the same URL every time). ``on_event(kind, detail)`` hears every step."""

    def __init__(self, prompts: dict[str, str], seed: int, rules: AuditRules, pod_url: Callable[[int], str],
                 on_event: Event | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        if not prompts:
            raise ValueError("no stems to audit")
        self.prompts, self.seed, self.rules, self.pod_url = dict(prompts), seed, rules, pod_url
        self.on_event = on_event or (lambda kind, detail: None)
        self.sleep = sleep
        self.report = AuditReport()

    def run(self) -> AuditReport:
        for pod in range(1, self.rules.pods + 1):
            self.report.pods_used = pod
            self.report.repeats, self.report.outputs = [], []  # the repeats start over on each pod
            client = BatchClient(self.pod_url(pod), self.rules.request_timeout_s)
            try:
                self._pod(client, pod)
                return self.report
            except PodLost as exc:
                self.report.pod_losses.append(f"pod {pod}: {exc}")
                self.on_event("pod_lost", {"pod": pod, "reason": str(exc)})
            except RunEnded as exc:
                return self._end(str(exc))
            finally:
                client.close()
        return self._end(f"every pod ({self.rules.pods}) was lost; last: {self.report.pod_losses[-1]}")

    def _end(self, reason: str) -> AuditReport:
        self.report.passed, self.report.reason = False, reason
        return self.report

    def _remaining(self, pod: int) -> int:
        return self.rules.pods - pod

    def _pod(self, client: BatchClient, pod: int) -> None:
        self._wait_ready(client, pod)
        for repeat in range(1, self.rules.repeats + 1):
            record = self._repeat(client, pod, repeat)
            if not record.passed:
                self._end(f"repeat {repeat} failed: {record.reason}")
                return
        self.report.passed = True
        self.report.reason = f"{self.rules.repeats} repeats passed on pod {pod}"

    def _wait_ready(self, client: BatchClient, pod: int) -> None:
        started, failures = time.monotonic(), 0
        while True:
            try:
                state = client.status(self._remaining(pod))["status"]
                failures = 0
            except ApiError as exc:
                state, failures = "", failures + 1
                if failures >= self.rules.poll_failures:
                    raise PodLost(f"{failures} failed polls in a row while waiting for ready ({exc})") from None
            if state in ("ready", "complete"):
                self.on_event("ready", {"pod": pod, "seconds": round(time.monotonic() - started, 2)})
                return
            self._replace(state, pod)
            if time.monotonic() - started > self.rules.ready_timeout_s:
                raise RunEnded(f"pod {pod} was not ready within {self.rules.ready_timeout_s:g} s (status {state!r})")
            self.sleep(self.rules.poll_interval_s)

    def _replace(self, state: str, pod: int) -> None:
        if state == "replace":
            if self._remaining(pod) == 0:
                raise RunEnded(f"pod {pod} answered replace with no replacement left")
            raise PodLost("the server answered replace")

    def _repeat(self, client: BatchClient, pod: int, repeat: int) -> RepeatRecord:
        record, outputs = RepeatRecord(repeat, pod), {}
        self.report.repeats.append(record)
        self.report.outputs.append(outputs)
        started = time.monotonic()
        deadline = started + self.rules.repeat_timeout_s
        for index, stems in enumerate(batches(sorted(self.prompts), self.rules.batch_size), start=1):
            batch = BatchRecord(repeat, index, pod, len(stems))
            self.report.batches.append(batch)
            t0 = time.monotonic()
            try:
                self._batch(client, pod, stems, batch, outputs, deadline)
            finally:
                batch.seconds = round(time.monotonic() - t0, 3)
                record.seconds = round(time.monotonic() - started, 3)
                record.failed = sum(len(b.failed) for b in self.report.batches if b.repeat == repeat and b.pod == pod)
            self.on_event("batch", asdict(batch))
            if batch.outcome == "timeout":
                record.reason = f"over {self.rules.repeat_timeout_s:g} s (batch {index} unfinished)"
                return record
            if record.failed > self.rules.max_failed:
                record.reason = f"{record.failed} failed stems, over {self.rules.max_failed}"
                return record
        record.passed = True
        self.on_event("repeat", asdict(record))
        return record

    def _batch(self, client: BatchClient, pod: int, stems: list[str], batch: BatchRecord,
               outputs: dict[str, bytes], deadline: float) -> None:
        prompts = [{"stem": s, "image_url": self.prompts[s]} for s in stems]
        self._post(client, prompts, batch)
        failures = 0
        while True:
            if time.monotonic() > deadline:
                batch.outcome = "timeout"
                return
            self.sleep(self.rules.poll_interval_s)
            try:
                state = client.status(self._remaining(pod))["status"]
                failures = 0
            except ApiError as exc:
                failures += 1
                self.on_event("poll_failed", {"pod": pod, "in_a_row": failures, "error": str(exc)})
                if failures >= self.rules.poll_failures:
                    batch.outcome = f"pod lost: {failures} failed polls"
                    raise PodLost(f"{failures} failed polls in a row ({exc})") from None
                continue
            if state == "complete":
                break
            if state == "ready":  # a server that forgot the batch: asked again (POST is idempotent)
                self._post(client, prompts, batch)
            try:
                self._replace(state, pod)
            except (PodLost, RunEnded):
                batch.outcome = "pod lost: replace"
                raise
        try:
            results = client.results(self.rules.zip)
        except ZipRefused as exc:
            batch.outcome = "failed"
            batch.failed.update({s: f"results ZIP refused: {exc}" for s in stems})
            return
        except ApiError as exc:
            batch.outcome = f"pod lost: {exc}"
            raise PodLost(str(exc)) from None
        for stem in stems:
            if stem in results.files:
                outputs[stem] = results.files[stem]
            else:
                batch.failed[stem] = results.failed.get(stem, "missing from the results ZIP")
        if not results.files:
            batch.failed.update({s: batch.failed.get(s) or "empty results ZIP" for s in stems})
        batch.outcome = "failed" if batch.failed else "ok"

    def _post(self, client: BatchClient, prompts: list[dict], batch: BatchRecord) -> None:
        last = ""
        for attempt in range(1, self.rules.post_tries + 1):
            try:
                code, text = client.generate(prompts, self.seed)
            except ApiError as exc:
                code, text = 0, str(exc)
            if code == 200:
                return
            last = f"HTTP {code}: {text}" if code else text
            self.on_event("post_failed", {"attempt": attempt, "answer": last})
            if attempt < self.rules.post_tries:
                self.sleep(self.rules.poll_interval_s)
        batch.outcome = f"pod lost: POST /generate {last[:200]}"
        raise PodLost(f"POST /generate failed {self.rules.post_tries} times; last {last[:300]}")


def run_audit(base_url: str, prompts: dict[str, str], seed: int, rules: AuditRules = AuditRules(),
              on_event: Event | None = None) -> AuditReport:
    """An audit of the server at ``base_url`` (every pod is that server: a replacement waits for it again)."""
    return Audit(prompts, seed, rules, lambda pod: base_url, on_event).run()
