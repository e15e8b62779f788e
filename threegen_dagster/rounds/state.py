"""The round state files of SN17's state repository (404-active-competition; schemas in the subnet's
``shared/subnet_common/competition/``, summarised in ``SN17-NOW.md`` section 2), each parsed and checked
against its schema: a bad file is one ``RoundFileError`` naming the file and what is wrong, nothing else.
Also the block clock that turns the round's deadline block into a time. No Dagster imports."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints, ValidationError, model_validator

STAGES = ("open", "miner_generation", "downloading", "duels", "finalizing", "finished", "paused")
SECONDS_PER_BLOCK = 12.0  # Bittensor's block time (SN17-NOW.md: dates from blocks at 12 s/block)
# the state repository's collector wakes every 120-1800 s, so a round may be announced up to this long
# after its latest reveal block: taken off the deadline worked out from the time it was seen
ROUND_MARGIN_S = 1800.0
COMPETITION = 2  # the current competition (threejs, since 2026-04-29)
MAX_PROMPTS = 1024  # a round has 128; far more is not a round file
STEM = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
SHA256_STEM = re.compile(r"^[0-9a-f]{64}$")

Block = Annotated[int, Field(ge=0, le=2**63 - 1, strict=True)]
HTTP_URL = re.compile(r"^https?://[^\s/?#]+[^\s]*$")
HttpUrl = Annotated[str, StringConstraints(pattern=HTTP_URL.pattern, max_length=2048)]


class RoundFileError(ValueError):
    """A round state file that cannot be used; the message names the file and the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RoundState(_Model):
    """``state.json``: which round, and its stage."""

    current_round: Block
    stage: Literal[STAGES]  # type: ignore[valid-type]
    next_stage_eta: datetime | None = None


class Schedule(_Model):
    """``rounds/N/schedule.json``: the reveal window and the generation deadline, as block heights."""

    earliest_reveal_block: Block
    latest_reveal_block: Block
    generation_deadline_block: Block

    @model_validator(mode="after")
    def _ordered(self) -> Schedule:
        if not self.earliest_reveal_block <= self.latest_reveal_block <= self.generation_deadline_block:
            raise ValueError("blocks out of order: earliest_reveal_block <= latest_reveal_block <= "
                             "generation_deadline_block must hold")
        return self


class Seed(_Model):
    """``rounds/N/seed.json``: the round's seed, a uint32."""

    seed: Annotated[int, Field(ge=0, le=2**32 - 1, strict=True)]


class Submission(_Model):
    repo: Annotated[str, StringConstraints(pattern=r"^[\w-]+/[\w-]+$", max_length=200)]
    commit: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}$")]
    cdn_url: HttpUrl
    revealed_at_block: Block | None = None
    round: str = ""
    hardware: list[str] | None = None


class Submissions(RootModel[dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], Submission]]):
    """``rounds/N/submissions.json``: hotkey -> its revealed submission."""


class Leader(_Model):
    hotkey: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    repo: str
    commit: str
    docker: str = ""
    hardware: list[str] | None = None
    weight: float
    effective_block: Block


class Leaders(RootModel[list[Leader]]):
    """``leader.json``: the leaders, in order."""


class PromptUrl(_Model):
    """One line of ``prompts.txt``: an image URL; its stem is the file name without the extension."""

    stem: str
    url: HttpUrl


def _one_line(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "the document"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse(model: type[BaseModel], data: bytes, name: str) -> Any:
    """``data`` (the bytes of file ``name``) as ``model``, or RoundFileError naming the file."""
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RoundFileError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RoundFileError(f"{name}: not JSON ({exc})") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise RoundFileError(f"{name}: does not match its schema: {_one_line(exc)}") from None


def parse_prompts(data: bytes, name: str, max_prompts: int = MAX_PROMPTS) -> list[PromptUrl]:
    """``prompts.txt``: one http(s) image URL a line (blank lines ignored); stems unique and path-safe."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RoundFileError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    prompts, seen = [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        path = urlsplit(line).path if line.startswith(("http://", "https://")) else ""
        stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if not STEM.match(stem):
            raise RoundFileError(f"{name}: line {number} is not an http(s) URL of a file with a plain name "
                                 f"([A-Za-z0-9_-]): {line[:120]!r}")
        if stem in seen:
            raise RoundFileError(f"{name}: line {number} repeats the stem {stem!r} of line {seen[stem]}")
        try:
            prompts.append(PromptUrl(stem=stem, url=line))
        except ValidationError as exc:
            raise RoundFileError(f"{name}: line {number}: {_one_line(exc)}") from None
        seen[stem] = number
        if len(prompts) > max_prompts:
            raise RoundFileError(f"{name}: more than {max_prompts} prompts")
    if not prompts:
        raise RoundFileError(f"{name}: no prompt URLs")
    return prompts


def deadline_at(schedule: Schedule, seen_at: float, seconds_per_block: float = SECONDS_PER_BLOCK,
                margin_s: float = 0.0) -> float:
    """When the round's generation deadline block comes, as unix time: the round turns to
    ``miner_generation`` once ``latest_reveal_block`` has passed, so the time it was first seen so is
    taken for that block (a little later than the truth: ``margin_s`` is taken off for the state
    repository's delay in publishing it) and each block after it lasts ``seconds_per_block``."""
    blocks = schedule.generation_deadline_block - schedule.latest_reveal_block
    return seen_at + blocks * seconds_per_block - margin_s


def iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds")
