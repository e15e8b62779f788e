"""Room ``audit``: the self-audit and the duel estimate per SN17 round (``audit/`` holds the logic). The
self-audit drives the batch API server at ``AuditResource.server_url`` (an image running ``threegen serve``)
as the validators' orchestrator does, with the round's published stems and seed, and compares the
regenerated outputs with the published ones; its blocking check fails when the validators' audit would.
The duel estimate sets this miner's published outputs against the leader's on the judges' renders."""

import json
import warnings
from contextlib import nullcontext

import dagster as dg
from pydantic import Field

from ..audit.client import ZipLimits
from ..audit.compare import summary
from ..audit.driver import AuditRules
from ..audit.duel import DINO_GAP
from ..audit.renders import Embedder, LazyRenderer
from ..audit.round import (
    Fetching, RoundAuditError, audit_round, duel_round, judge_regenerated, leader_cdn_url, output_fetcher, published,
    published_win_margin,
)
from ..catalog import md_cell
from ..rounds.comp2_llm import LlmConfig
from ..rounds.publish import EXTENSIONS
from .resources import StoreResource
from .rounds import RoundsResource, rounds
from .rounds_publish import JudgeRenderResource

GROUP = "sn17_audit"
CHECK = "self_audit_passes"
_RULES = AuditRules()  # the one source of the audit's defaults


class AuditResource(dg.ConfigurableResource):
    """The server audited, the validators' audit settings (defaults: SN17-NOW.md section 4), and the models
    that compare renders."""

    server_url: str = Field("", description="The batch API server to audit (THREEGEN_AUDIT_URL)")
    batch_size: int = Field(_RULES.batch_size, ge=1, description="Stems per POST /generate")
    repeats: int = Field(_RULES.repeats, ge=1, description="Full repeats on one pod")
    pods: int = Field(_RULES.pods, ge=1, description="Pods allowed in all (replacements + 1)")
    poll_interval_s: float = Field(_RULES.poll_interval_s, gt=0, description="Seconds between GET /status")
    poll_failures: int = Field(_RULES.poll_failures, ge=1, description="Failed polls in a row that lose the pod")
    ready_timeout_s: float = Field(_RULES.ready_timeout_s, gt=0, description="Seconds a pod may take to be ready")
    repeat_timeout_s: float = Field(_RULES.repeat_timeout_s, gt=0, description="Seconds a repeat may take")
    max_failed: int = Field(_RULES.max_failed, ge=0, description="Failed stems a repeat may have")
    post_tries: int = Field(_RULES.post_tries, ge=1, description="Tries of a POST before the pod is lost")
    zip_bytes: int = Field(_RULES.zip.zip_bytes, ge=1, description="Largest results ZIP")
    zip_entries: int = Field(_RULES.zip.zip_entries, ge=1, description="Most entries in a results ZIP")
    file_bytes: int = Field(_RULES.zip.file_bytes, ge=1, description="Largest file in a results ZIP")
    max_rendered: int = Field(32, ge=0, description="Differing stems whose renders are compared")
    embed_model: str = Field("", description="DINO-family model for render likeness (THREEGEN_DUEL_EMBED_MODEL)")

    def rules(self) -> AuditRules:
        return AuditRules(batch_size=self.batch_size, repeats=self.repeats, pods=self.pods,
                          poll_interval_s=self.poll_interval_s, poll_failures=self.poll_failures,
                          ready_timeout_s=self.ready_timeout_s, repeat_timeout_s=self.repeat_timeout_s,
                          max_failed=self.max_failed, post_tries=self.post_tries,
                          zip=ZipLimits(self.zip_bytes, self.zip_entries, self.file_bytes))


class DuelResource(dg.ConfigurableResource):
    """The judge the duel estimate asks (a VLM behind an OpenAI-compatible API; unset: none) and the leader."""

    embed_model: str = Field("", description="DINO-family model for the best-view vote (THREEGEN_DUEL_EMBED_MODEL)")
    vlm_url: str = Field("", description="The VLM's API root, e.g. http://127.0.0.1:8000/v1 (THREEGEN_DUEL_VLM_URL)")
    vlm_model: str = Field("", description="The VLM's name (THREEGEN_DUEL_VLM_MODEL)")
    vlm_key: str = Field("", description="Its API key (THREEGEN_DUEL_VLM_KEY, given as an EnvVar: never shown)")
    vlm_timeout_s: float = Field(300.0, gt=0, description="Seconds per VLM request")
    leader_cdn_url: str = Field("", description="The leader's output URL (default: from the round state)")
    win_margin: float | None = Field(None, ge=0, le=1, description="Default: config.json's, else 0.07")
    dino_gap: float = Field(DINO_GAP, ge=0, description="Best-view cosine gap that decides a stem")

    def vlm(self) -> LlmConfig | None:
        if not self.vlm_url:
            return None
        return LlmConfig(self.vlm_url, self.vlm_model, self.vlm_key, attempts=1, timeout_s=self.vlm_timeout_s,
                         max_tokens=512)


def _check_spec() -> dg.AssetCheckSpec:
    with warnings.catch_warnings():  # partitioned checks are a "preview" feature; the version is pinned
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(CHECK, asset="sn17_self_audit", partitions_def=rounds, blocking=True,
                                 description="The validators' audit would pass: every repeat within its time "
                                             "and its failed-stem limit, on the pods allowed, and its regenerated "
                                             "outputs not judged worse than the published ones by more than "
                                             "win_margin")


def _md(rows: list[dict], columns: list[str]) -> dg.MetadataValue:
    if not rows:
        return dg.MetadataValue.md("(none)")
    lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    lines += [f"| {' | '.join(md_cell(r.get(c, ''), 200) for c in columns)} |" for r in rows]  # the server's words
    return dg.MetadataValue.md("\n".join(lines))


def _renderer(chromium: str | None, timeout_s: float, wanted: bool):
    """The judge-style renderer, started only if an output needs drawing; none when not wanted or no Chromium."""
    from ..rounds.render import find_chromium

    return LazyRenderer(chromium, timeout_s) if wanted and find_chromium(chromium) else nullcontext(None)


@dg.asset(partitions_def=rounds, group_name=GROUP, deps=["round_publication"], kinds={"json"},
          check_specs=[_check_spec()],
          description="The round's published stems regenerated by the audited server as validators do it: time per "
                      "batch and repeat, failures by reason, determinism and likeness to the published outputs")
def sn17_self_audit(context: dg.AssetExecutionContext, store: StoreResource, round_state: RoundsResource,
                    audit: AuditResource, duel: DuelResource, judge_render: JudgeRenderResource) -> dg.MaterializeResult:
    number, competition = int(context.partition_key), round_state.competition
    if not audit.server_url:
        raise dg.Failure("no server to audit: set THREEGEN_AUDIT_URL (or the audit resource's server_url)")

    def on_event(kind: str, detail: dict) -> None:
        if kind in ("batch", "repeat", "pod_lost", "ready", "post_failed"):
            context.log.info(f"round {number}: {kind}: {json.dumps(detail)[:500]}")

    embed_model = audit.embed_model or duel.embed_model
    embedder, vlm = (Embedder(embed_model) if embed_model else None), duel.vlm()
    source = round_state.round_source()
    win_margin = duel.win_margin if duel.win_margin is not None else published_win_margin(source)
    try:
        with _renderer(judge_render.chromium, judge_render.timeout_s, competition in (1, 2) and audit.max_rendered) as r:
            report, rows = audit_round(source, store.store(), number, competition, audit.rules(),
                                       lambda pod: audit.server_url, renderer=r, embedder=embedder,
                                       max_rendered=audit.max_rendered, on_event=on_event)
            margins = judge_regenerated(source, number, report.outputs, published(store.store(), number),
                                        output_fetcher(competition, Fetching()), EXTENSIONS[competition], renderer=r,
                                        embedder=embedder, vlm=vlm, max_judged=audit.max_rendered,
                                        image_limits=round_state.image_limits(), log=context.log.warning)
    except RoundAuditError as exc:
        raise dg.Failure(str(exc)) from None
    passed, reason = report.passed, report.reason
    lost = [m for m in margins if m.margin < -win_margin]
    if passed and lost:
        passed, reason = False, (f"repeat {lost[0].repeat}: the regenerated outputs lost to the published ones by "
                                 f"{-lost[0].margin:.3f}, more than win_margin {win_margin:g} "
                                 f"({lost[0].losses} losses, {lost[0].wins} wins of {lost[0].stems})")
    unjudged = sum(m.unjudged for m in margins)
    judge_note = ("no judge configured (THREEGEN_DUEL_VLM_URL or THREEGEN_DUEL_EMBED_MODEL): differing stems "
                  "counted as draws" if embedder is None and vlm is None else
                  f"{unjudged} differing stem(s) not judged (not rendered, or past max_rendered)" if unjudged else
                  "every differing stem judged")
    document = {**report.to_json(), "passed": passed, "reason": reason, "win_margin": win_margin,
                "margins": [m.to_json() for m in margins], "comparison": [r.to_json() for r in rows],
                "summary": summary(rows)}
    store.store().write(f"rounds/{number}/self_audit.json", json.dumps(document, indent=1).encode(),
                        content_type="application/json")
    reasons = [{"reason": k, "stems": v} for k, v in report.failures_by_reason().most_common()]
    return dg.MaterializeResult(
        metadata={"passed": passed, "reason": reason, "pods_used": report.pods_used,
                  "win_margin": win_margin, "judge": judge_note,
                  "worst_margin": round(min((m.margin for m in margins), default=0.0), 4),
                  "margins": _md([m.to_json() for m in margins],
                                 ["repeat", "stems", "wins", "losses", "draws", "judged", "unjudged", "margin"]),
                  "pod_losses": "; ".join(report.pod_losses)[:2000] or "none", **summary(rows),
                  "repeats": _md([vars(r) for r in report.repeats], ["pod", "repeat", "seconds", "failed", "passed", "reason"]),
                  "batches": _md([{**vars(b), "failed": len(b.failed)} for b in report.batches],
                                 ["pod", "repeat", "index", "stems", "seconds", "failed", "outcome"]),
                  "failures_by_reason": _md(reasons, ["reason", "stems"]),
                  "comparison": _md([r.to_json() for r in rows], ["stem", "regenerated", "deterministic",
                                    "identical_to_published", "pixel_similarity", "embedding_similarity", "note"])},
        check_results=[dg.AssetCheckResult(check_name=CHECK, passed=passed, description=reason[:2000],
                                           metadata={"pods_used": report.pods_used,
                                                     "worst_margin": round(min((m.margin for m in margins),
                                                                               default=0.0), 4)})])


@dg.asset(partitions_def=rounds, group_name=GROUP, deps=["round_publication"], kinds={"json"},
          description="An estimate of the round's duel: this miner's published outputs against the leader's on the "
                      "judges' renders (DINO best view, and a VLM asked in both orders), the margin against win_margin")
def sn17_duel_estimate(context: dg.AssetExecutionContext, store: StoreResource, round_state: RoundsResource,
                       duel: DuelResource, judge_render: JudgeRenderResource) -> dg.MaterializeResult:
    number, competition = int(context.partition_key), round_state.competition
    if competition not in (1, 2):
        raise dg.Failure(f"competition {competition}: the judges' page draws comp 1 and comp 2 outputs only")
    source = round_state.round_source()
    try:
        leader = leader_cdn_url(source, number, duel.leader_cdn_url)
        margin = duel.win_margin if duel.win_margin is not None else published_win_margin(source)
        with LazyRenderer(judge_render.chromium, judge_render.timeout_s) as renderer:
            estimate = duel_round(source, store.store(), number, competition, leader, renderer=renderer,
                                  embedder=Embedder(duel.embed_model) if duel.embed_model else None, vlm=duel.vlm(),
                                  win_margin=margin, fetching=Fetching(timeout_s=round_state.timeout_s),
                                  image_limits=round_state.image_limits(), log=context.log.warning)
    except RoundAuditError as exc:
        raise dg.Failure(str(exc)) from None
    document = estimate.to_json()
    store.store().write(f"rounds/{number}/duel_estimate.json", json.dumps(document, indent=1).encode(),
                        content_type="application/json")
    return dg.MaterializeResult(metadata={
        "margin": round(estimate.margin, 4), "win_margin": estimate.win_margin, "would_win": estimate.would_win,
        "wins": estimate.wins, "losses": estimate.losses, "draws": estimate.draws, "leader_cdn_url": leader,
        "ext": EXTENSIONS[competition], "vlm": duel.vlm_model or "none", "embed_model": duel.embed_model or "none",
        "stems": _md(document["rows"], ["stem", "outcome", "decided_by", "ours_best", "leader_best", "vlm_delta", "note"])})


audit_job = dg.define_asset_job("sn17_self_audit_job", selection=dg.AssetSelection.assets(sn17_self_audit),
                                description="Audit the server at THREEGEN_AUDIT_URL on a round, as validators do")
duel_job = dg.define_asset_job("sn17_duel_estimate_job", selection=dg.AssetSelection.assets(sn17_duel_estimate),
                               description="Estimate a round's duel against the leader")
ASSETS = [sn17_self_audit, sn17_duel_estimate]
JOBS = [audit_job, duel_job]
