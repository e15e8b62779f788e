"""Which validators to pull from: per-validator records, cooldowns, manual and automatic
blacklists, and the selection rule. Pure logic over plain data; records persist as one JSON
object per validator in the store (``sn17/validators/<hotkey>.json``, compare-and-swap writes,
so the puller and the submission runs never lose each other's updates). No Dagster imports."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ..storage import Store, StorageError

ROOT = "sn17/validators"
BLACKLIST = "sn17/blacklist.json"


@dataclass(frozen=True)
class Neuron:
    """A validator as the metagraph shows it."""

    uid: int
    hotkey: str
    stake: float
    ip: str
    port: int
    validator_permit: bool = True

    @property
    def serving(self) -> bool:
        return self.port > 0 and self.ip not in ("", "0.0.0.0")


@dataclass(frozen=True)
class ValidatorPolicy:
    min_stake: float = 1000.0
    manual_blacklist: frozenset[int] = frozenset({180})  # the seeds' example: UID 180
    min_success_rate: float = 0.3
    max_mean_response_s: float = 120.0
    window: int = 20  # the last N calls decide the automatic blacklist
    min_calls: int = 5  # ... once there are at least this many
    failure_cooldown_s: float = 300.0  # a local pause after a failed call
    max_pending: int = 2
    """Tasks from one validator not yet finished (pulled, running or submitting) before the pull round stops
    asking it until they drain. SN17.md section 5: a validator hands a miner one task at a time (a re-pull
    returns the same one until it is submitted), so one is the protocol and a second covers a validator that
    restarted and forgot the task we are still working on; more is a validator ignoring its own rule (a
    ``cooldown_until`` of 0 and a new task on every pull), which must not fill the queue and the GPUs."""


@dataclass
class ValidatorRecord:
    hotkey: str
    uid: int = -1
    pulls: int = 0
    tasks: int = 0
    failures: int = 0
    submissions: int = 0
    accepted: int = 0
    rejected: int = 0
    empty: int = 0
    scores: list[float] = field(default_factory=list)  # task fidelity scores, newest last
    feedback: list[dict] = field(default_factory=list)  # the validator's feedback, newest last
    calls: list[list] = field(default_factory=list)  # [unix time, seconds, ok], newest last
    cooldown_until: float = 0.0  # the validator's own, from its last answer
    local_cooldown_until: float = 0.0  # ours, after a failure

    KEEP = 50

    def call(self, now: float, seconds: float, ok: bool) -> None:
        self.calls = (self.calls + [[now, round(seconds, 3), ok]])[-self.KEEP:]
        if not ok:
            self.failures += 1

    def success_rate(self, window: int) -> float | None:
        recent = self.calls[-window:]
        return sum(ok for _, _, ok in recent) / len(recent) if recent else None

    def mean_response_s(self, window: int) -> float | None:
        recent = self.calls[-window:]
        return sum(s for _, s, _ in recent) / len(recent) if recent else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> ValidatorRecord:
        return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})


def auto_blacklist_reason(record: ValidatorRecord, policy: ValidatorPolicy) -> str:
    """Why the record's recent calls blacklist it ('' if they do not)."""
    if len(record.calls[-policy.window:]) < policy.min_calls:
        return ""
    rate, mean = record.success_rate(policy.window), record.mean_response_s(policy.window)
    if rate < policy.min_success_rate:
        return f"success {rate:.0%} < {policy.min_success_rate:.0%} over the last {policy.window} calls"
    if mean > policy.max_mean_response_s:
        return f"mean response {mean:.0f} s > {policy.max_mean_response_s:.0f} s over the last {policy.window} calls"
    return ""


AT_CAP = "tasks not finished"  # how a skip for ValidatorPolicy.max_pending reads (the puller logs it once)


def select(neurons: list[Neuron], records: dict[str, ValidatorRecord], policy: ValidatorPolicy,
           blacklisted: set[int], now: float, pending: Mapping[str, int] | None = None,
           ) -> tuple[list[Neuron], dict[int, str]]:
    """The validators to pull from now (most stake first), and for every other one why not.
    ``blacklisted``: the manual blacklist in effect (``ValidatorBook.blacklist``); ``pending``: per validator
    hotkey, its tasks not yet finished (``ValidatorPolicy.max_pending``)."""
    pending = pending or {}
    chosen, skipped = [], {}
    for n in sorted(neurons, key=lambda n: -n.stake):
        record = records.get(n.hotkey) or ValidatorRecord(n.hotkey, n.uid)
        if n.uid in blacklisted:
            skipped[n.uid] = "blacklisted by hand"
        elif not n.validator_permit:
            skipped[n.uid] = "no validator permit"
        elif not n.serving:
            skipped[n.uid] = "not serving an axon"
        elif n.stake < policy.min_stake:
            skipped[n.uid] = f"stake {n.stake:,.0f} < {policy.min_stake:,.0f}"
        elif reason := auto_blacklist_reason(record, policy):
            skipped[n.uid] = f"blacklisted automatically: {reason}"
        elif pending.get(n.hotkey, 0) >= policy.max_pending:
            skipped[n.uid] = (f"{pending[n.hotkey]} of its {AT_CAP} (at most {policy.max_pending}): "
                              "not asked until they drain")
        elif record.cooldown_until > now:
            skipped[n.uid] = f"its cooldown runs {record.cooldown_until - now:.0f} s more"
        elif record.local_cooldown_until > now:
            skipped[n.uid] = f"our cooldown after a failure runs {record.local_cooldown_until - now:.0f} s more"
        else:
            chosen.append(n)
    return chosen, skipped


class ValidatorBook:
    """Validator records and the manual blacklist, in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, hotkey: str) -> ValidatorRecord:
        try:
            return ValidatorRecord.from_dict(json.loads(self.store.read(f"{ROOT}/{hotkey}.json")))
        except StorageError:
            return ValidatorRecord(hotkey)

    def update(self, hotkey: str, change) -> ValidatorRecord:
        """Apply ``change(record)`` (mutating) without losing a concurrent writer's update."""
        def apply(current: dict | None) -> dict:
            record = ValidatorRecord.from_dict(current) if current else ValidatorRecord(hotkey)
            change(record)
            return record.to_dict()

        return ValidatorRecord.from_dict(self.store.update_json(f"{ROOT}/{hotkey}.json", apply))

    def all(self) -> dict[str, ValidatorRecord]:
        return {r.hotkey: r for r in (ValidatorRecord.from_dict(json.loads(self.store.read(i.path)))
                                      for i in self.store.list(ROOT) if i.path.endswith(".json"))}

    def _lists(self) -> dict[str, list[int]]:
        try:
            return json.loads(self.store.read(BLACKLIST))
        except StorageError:
            return {"added": [], "removed": []}

    def blacklist(self, policy: ValidatorPolicy) -> set[int]:
        """The configured list, plus UIDs added by hand, minus UIDs taken off by hand."""
        lists = self._lists()
        return (set(policy.manual_blacklist) | set(lists["added"])) - set(lists["removed"])

    def set_blacklisted(self, uid: int, blacklisted: bool) -> None:
        def change(current: dict | None) -> dict:
            added, removed = set((current or {}).get("added", [])), set((current or {}).get("removed", []))
            (added if blacklisted else removed).add(uid)
            (removed if blacklisted else added).discard(uid)
            return {"added": sorted(added), "removed": sorted(removed)}

        self.store.update_json(BLACKLIST, change)


def records_table(book: ValidatorBook, policy: ValidatorPolicy, now: float) -> list[dict[str, Any]]:
    """One row per known validator: counts, rates, cooldowns and blacklist state, for the CLI and the UI."""
    manual = book.blacklist(policy)
    rows = []
    for record in sorted(book.all().values(), key=lambda r: (r.uid, r.hotkey)):
        rate, mean = record.success_rate(policy.window), record.mean_response_s(policy.window)
        auto = auto_blacklist_reason(record, policy)
        rows.append({
            "uid": record.uid, "hotkey": record.hotkey, "pulls": record.pulls, "tasks": record.tasks,
            "submissions": record.submissions, "accepted": record.accepted, "rejected": record.rejected,
            "empty": record.empty, "failures": record.failures,
            "success_rate": None if rate is None else round(rate, 3),
            "mean_response_s": None if mean is None else round(mean, 2),
            "mean_score": round(sum(record.scores) / len(record.scores), 4) if record.scores else None,
            "cooldown_s": max(0, round(max(record.cooldown_until, record.local_cooldown_until) - now)),
            "blacklisted": "by hand" if record.uid in manual else (f"auto: {auto}" if auto else ""),
        })
    return rows
