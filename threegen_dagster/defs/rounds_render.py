"""Room ``rounds_render``: ``round_renders`` (a partition per round) draws every output of the round that passed
its check as the judges draw it (8 white views, 4 gray, the 2x2 grid; ``rounds/judge_renders.py``) and keeps the
PNGs beside its generation (``generations/<key>/judge/``). ``sn17_round_publish`` materializes it with the round's
publication and report; the report reuses these renders for our side."""

import dagster as dg
from pydantic import Field

from ..rounds.judge_renders import render_round
from ..rounds.register import RoundBook
from ..rounds.report import round_outputs
from .resources import StoreResource
from .rounds import GROUP, RoundsResource, rounds
from .rounds_publish import JudgeRenderResource


class RendersConfig(dg.Config):
    thumbs: int = Field(16, ge=0, le=128, description="Rows of the table that carry the grid's thumbnail")


@dg.asset(partitions_def=rounds, group_name=GROUP, deps=["sn17_round"], kinds={"chromium"},
          description="Every passed output of the round rendered as the judges render it (three r183 in headless "
                      "Chromium), kept in the store under generations/<key>/judge/ (white/, gray/, grid.png); "
                      "outputs whose renders exist for the same bytes are skipped")
def round_renders(context: dg.AssetExecutionContext, config: RendersConfig, store: StoreResource,
                  round_state: RoundsResource, judge_render: JudgeRenderResource) -> dg.MaterializeResult:
    """All of the round's outputs in ONE browser and one page (``JudgeRenderer``): on CPU (software WebGL) the
    page's start, with the studio rig's environment map, costs far more than each output drawn after it
    (about 100 s against 15 s per output on a 2-core machine), so a browser per output would multiply it."""
    number, competition = int(context.partition_key), round_state.competition
    _, outputs, _ = round_outputs(RoundBook(store.store()), store.artifacts(), number, competition)
    result = render_round(store.store(), store.artifacts(), outputs, competition, chromium=judge_render.chromium,
                          timeout_s=judge_render.timeout_s, thumbs=config.thumbs, log=context.log.info)
    for stem, why in sorted(result.failed.items()):
        context.log.error(f"round {number}: {stem}: not rendered: {why}")
    if result.note:
        context.log.warning(f"round {number}: {result.note}")
    failures = "\n".join(f"| {stem[:16]} | {why.replace('|', '/')} |" for stem, why in sorted(result.failed.items()))
    return dg.MaterializeResult(metadata={
        "rendered": len(result.rendered), "skipped": len(result.skipped), "failed": len(result.failed),
        "note": result.note or "ok", "renders": dg.MetadataValue.md(result.table()),
        "failures": dg.MetadataValue.md(f"| stem | why |\n|---|---|\n{failures}" if failures else "(none)")})


ASSETS = [round_renders]
