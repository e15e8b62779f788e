"""A round's prompts, registered as generations with the round's seed, and what became of each, kept in
the store (so every worker, the round's report and a restarted sensor see the same thing):

- ``rounds/<N>/round.json``: the round as first seen in ``miner_generation`` (seed, schedule, the time it
  was seen and the deadline worked out from it, the stems). Written once (create-only): the deadline
  never moves, whichever process saw the round first.
- ``rounds/<N>/prompts/<stem>.json``: the stem's generation key once registered, or its last error and
  how many tries it has had; after ``max_tries`` it is given up (its error stays there, and is shown).

Each prompt is fetched and registered on its own: a bad one changes nothing for the others. No Dagster."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..ledger import Ledger
from ..storage import Conflict, Store
from .prompts import ImageLimits, PromptFetchError, fetch_prompt
from .state import PromptUrl, Schedule, deadline_at, iso

SOURCE = "sn17-round"


def round_path(number: int) -> str:
    return f"rounds/{number}/round.json"


def prompt_path(number: int, stem: str) -> str:
    return f"rounds/{number}/prompts/{stem}.json"


@dataclass
class Progress:
    """One tick's view of a round: stems registered (stem -> key), given up (stem -> error), failed this
    tick but to be tried again, and how many were not tried yet."""

    record: dict
    registered: dict[str, str] = field(default_factory=dict)
    given_up: dict[str, str] = field(default_factory=dict)
    retrying: dict[str, str] = field(default_factory=dict)
    new: list[str] = field(default_factory=list)
    given_up_now: list[str] = field(default_factory=list)
    untried: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.new or self.retrying or self.given_up_now)


class RoundBook:
    def __init__(self, store: Store) -> None:
        self.store = store

    def open_round(self, number: int, seed: int, schedule: Schedule, prompts: list[PromptUrl], *,
                   seconds_per_block: float, margin_s: float, now: float | None = None) -> dict:
        """The round's record: the one stored, or a new one seen ``now``."""
        seen = time.time() if now is None else now
        deadline = deadline_at(schedule, seen, seconds_per_block, margin_s)
        record = {"round": number, "seed": seed, "schedule": schedule.model_dump(), "seen_at": seen,
                  "deadline_at": deadline, "deadline": iso(deadline), "seconds_per_block": seconds_per_block,
                  "margin_s": margin_s, "stems": {p.stem: p.url for p in prompts}}
        try:
            self.store.write(round_path(number), json.dumps(record, indent=1).encode(), if_absent=True,
                             content_type="application/json")
            return record
        except Conflict:
            return self.round(number)

    def round(self, number: int) -> dict:
        return json.loads(self.store.read(round_path(number)))

    def prompt_states(self, number: int) -> dict[str, dict]:
        states = {}
        for info in self.store.list(f"rounds/{number}/prompts"):
            stem = info.path.rsplit("/", 1)[-1].removesuffix(".json")
            try:
                states[stem] = json.loads(self.store.read(info.path))
            except (OSError, ValueError):
                continue  # unreadable: the stem is tried again and the file rewritten
        return states

    def record_prompt(self, number: int, stem: str, state: dict) -> None:
        self.store.write(prompt_path(number, stem), json.dumps(state, indent=1).encode(),
                         content_type="application/json")


def register_prompts(book: RoundBook, ledger: Ledger, record: dict, *, limits: ImageLimits, per_tick: int,
                     workers: int, max_tries: int) -> Progress:
    """Fetch and register up to ``per_tick`` of the round's stems not yet registered nor given up
    (``workers`` at a time); the progress of the whole round."""
    number, seed = record["round"], record["seed"]
    states = book.prompt_states(number)
    progress = Progress(record)
    todo = []
    for stem, url in record["stems"].items():
        state = states.get(stem, {})
        if state.get("key"):
            progress.registered[stem] = state["key"]
        elif state.get("tries", 0) >= max_tries:
            progress.given_up[stem] = state.get("error", "given up")
        else:
            todo.append((stem, url, state.get("tries", 0)))
    progress.untried = max(0, len(todo) - per_tick)

    def one(item: tuple[str, str, int]) -> tuple[str, str, str]:
        stem, url, _ = item
        try:
            prompt = fetch_prompt(PromptUrl(stem=stem, url=url), limits)
            generation, _ = ledger.add(prompt, seed, source=SOURCE, task_id=f"round-{number}/{stem}")
            return stem, generation.key, ""
        except PromptFetchError as exc:
            return stem, "", str(exc)
        except Exception as exc:  # noqa: BLE001 - the store or the ledger: this stem only, tried again
            return stem, "", f"prompt {stem}: {type(exc).__name__}: {exc}"

    batch = todo[:per_tick]
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(batch) or 1))) as pool:
        results = list(pool.map(one, batch))
    for (stem, url, tries), (_, key, error) in zip(batch, results):
        state = {"stem": stem, "url": url, "tries": tries + 1, "at": time.time()}
        if key:
            progress.registered[stem], state["key"] = key, key
            progress.new.append(stem)
        else:
            state["error"] = error
            if tries + 1 >= max_tries:
                progress.given_up[stem] = error
                progress.given_up_now.append(stem)
            else:
                progress.retrying[stem] = error
        try:
            book.record_prompt(number, stem, state)
        except OSError as exc:  # the store: the stem is fetched again next tick (the ledger keeps its key)
            progress.registered.pop(stem, None)
            progress.new = [s for s in progress.new if s != stem]
            progress.retrying[stem] = f"prompt {stem}: its state could not be stored: {exc}"
    return progress
