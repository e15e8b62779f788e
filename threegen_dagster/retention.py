"""Retention: which generations are old enough to go, and removing them from the store.
No Dagster imports (the cleanup job also drops their dynamic partitions)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .ledger import Generation, Ledger
from .storage import LocalStore


@dataclass
class RetentionPlan:
    expired: list[Generation] = field(default_factory=list)
    kept: list[Generation] = field(default_factory=list)  # old enough, but marked keep
    young: int = 0


def plan_retention(entries: list[Generation], now: float, max_age_hours: float) -> RetentionPlan:
    plan = RetentionPlan()
    cutoff = now - max_age_hours * 3600
    for entry in entries:
        if entry.created_at >= cutoff:
            plan.young += 1
        elif entry.keep:
            plan.kept.append(entry)
        else:
            plan.expired.append(entry)
    return plan


def generation_bytes(store: LocalStore, key: str) -> int:
    return sum(store.size(path) for path in store.list(f"generations/{key}"))


def remove_generation(store: LocalStore, ledger: Ledger, key: str) -> int:
    """Delete a generation's files, then its ledger entry; the bytes freed."""
    return store.delete(f"generations/{key}") + ledger.remove(key)
