"""Room ``search``: the ``search_generations`` job. Its Launchpad form is a search (``search.py``'s
``SearchQuery``: words of the prompt, status, score and date ranges, how many to show; and an image to rank
by similarity, by path or URL, when the scorer's models are configured); its one step
shows the matches in its output's metadata (Runs > the run > ``find_generations`` > the output event):
their count and a markdown table of key, prompt, seed, status, score, created and a link to each one's
viewer on ``threegen view``. A bad field fails the step with one line naming it. Nothing is written."""

from typing import Optional

import dagster as dg
from pydantic import Field

from ..catalog import md_cell
from ..keys import Prompt, PromptError
from ..prompt_requests import fetch_image
from ..search import (
    DEFAULT_LIMIT, MAX_LIMIT, MAX_TEXT_CHARS, STATUSES, NoEmbedder, SearchError, SearchQuery, load_rows,
    rank_by_image, search,
)
from ..viewer.publish import server_url
from .resources import ScoreResource, StoreResource

COLUMNS = ("key", "prompt", "seed", "status", "score", "created")


class SearchConfig(dg.Config):
    text: str = Field("", max_length=MAX_TEXT_CHARS,
                      description="Words that must all be in the prompt, in any case (empty: any prompt)")
    whole_words: bool = Field(False, description="Match whole words only ('cup' does not find 'cupboard')")
    status: str = Field("", description=f"One of {', '.join(STATUSES)} (empty: any)")
    min_score: Optional[float] = Field(None, ge=0, le=1, description="Score at least this")
    max_score: Optional[float] = Field(None, ge=0, le=1, description="Score at most this")
    since: str = Field("", description="Created on or after (2026-11-30 or 2026-11-30T14:00, UTC)")
    until: str = Field("", description="Created on or before (a bare date includes that day)")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="At most this many rows in the table")
    image: str = Field("", max_length=2048, description="An image's path or http(s) URL: rank the matches by how "
                       "alike their prompt image is (needs the scorer's models: THREEGEN_SCORER=models)")


def matches_table(rows: list[dict], columns: tuple[str, ...] = COLUMNS) -> str:
    """The matches as markdown: every cell escaped (``md_cell``), the viewer link built from the key."""
    if not rows:
        return "(no matches)"
    lines = ["| " + " | ".join(columns) + " | viewer |", "|" + "---|" * (len(columns) + 1)]
    for row in rows:
        cells = " | ".join(md_cell(row.get(c) if row.get(c) is not None else "") for c in columns)
        link = f"[open]({server_url(row['key'])})" if row.get("status") != "unreadable" else ""
        lines.append(f"| {cells} | {link} |")
    return "\n".join(lines)


@dg.op(out=dg.Out(dg.Nothing), description="Find generations in the store; the matches are this step's metadata")
def find_generations(context: dg.OpExecutionContext, config: SearchConfig, store: StoreResource, score: ScoreResource):
    problems: list[str] = []
    try:
        query = SearchQuery(text=config.text, whole_words=config.whole_words, status=config.status,
                            min_score=config.min_score, max_score=config.max_score, since=config.since or None,
                            until=config.until or None, limit=config.limit)
        image = _query_image(config.image) if config.image else None
        rows = load_rows(store.artifacts(), store.ledger())
        if image is None:
            page = search(rows, query)
            shown, total = page.rows, page.total
        else:
            shown, total = rank_by_image(store.store(), store.artifacts(), rows, image, query, score.backend,
                                         score.options, problems)
    except (SearchError, PromptError, NoEmbedder) as exc:
        raise dg.Failure(description=f"search: {exc}") from None
    for line in problems:
        context.log.warning(f"search: {line}")
    context.log.info(f"{total} generation(s) match; showing {len(shown)}")
    columns = COLUMNS + (("similarity",) if image is not None else ())
    yield dg.Output(None, metadata={"matches": total, "shown": len(shown), "keys": [row["key"] for row in shown],
                                    "generations": dg.MetadataValue.md(matches_table(shown, columns))})


def _query_image(source: str):
    """The query image from a path or URL, bounded and checked as an image prompt is."""
    from ..codecs import stored_image

    return stored_image(Prompt.from_image(fetch_image(source)).image)


@dg.job(name="search_generations", description="Find generations by prompt words, status, score and date: "
        "fill in the config in the Launchpad; the matches are the step's output metadata")
def search_job() -> None:
    find_generations()
