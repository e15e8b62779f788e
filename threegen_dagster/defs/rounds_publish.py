"""Room ``rounds_publish``: a round's outputs on the CDN, the on-chain commitment, the round's report
(``rounds/publish.py``, ``commitment.py``, ``report.py`` hold the logic). ``round_publication`` (a partition
per round) uploads every output that passed its check to the CDN prefix as ``{stem}.<ext>`` and reads each
public URL back; ``round_report`` sums the round up, with the leader's outputs beside ours in judge-style
renders; the ``sn17_commit`` job commits ``{repo, commit, cdn_url}`` inside the reveal window."""

import json
import tempfile
import warnings
from pathlib import Path

import dagster as dg
from pydantic import Field

from ..rounds.commitment import (MARGIN_BLOCKS, NETUID, NETWORK, REVEAL_BLOCKS, BittensorChain, Chain,
                                 CommitmentError, Window, build_payload, commit_round, load_commitment, window_for)
from ..rounds.publish import (CDN_PREFIX, CDN_URL, PublishError, check_cdn_url, load_publication, publication_path,
                              upload, verify)
from ..rounds.register import RoundBook
from ..rounds.report import OUTPUT_ASSETS, build_report, markdown, round_outputs, to_publish
from ..rounds.source import FetchError
from ..storage import open_store
from .resources import S3ClientResource, SN17Resource, StoreResource
from .rounds import GROUP, TAG_ROUND, RoundsResource, rounds

CHECK = "cdn_verified"


class CdnResource(dg.ConfigurableResource):
    """Where a round's outputs are published: an S3 prefix (credentials from the standard AWS chain, never
    this config) or a folder, and its public base URL; how each URL is read back."""

    prefix: str = Field(CDN_PREFIX, description="s3://BUCKET[/PREFIX] (or a folder a web server serves)")
    public_url: str = Field(CDN_URL, description="The prefix's public base URL: validators fetch {public_url}/{stem}.js")
    s3: S3ClientResource = Field(default_factory=S3ClientResource, description="Endpoint and region for s3://")
    timeout_s: float = Field(30.0, gt=0, description="Seconds per try of a read-back")
    tries: int = Field(3, ge=1, le=10, description="Tries per read-back")
    workers: int = Field(8, ge=1, le=64, description="Read-backs at once")

    @classmethod
    def from_settings(cls, settings) -> "CdnResource":
        return cls(prefix=settings.cdn_prefix, public_url=settings.cdn_url,
                   s3=S3ClientResource(endpoint_url=settings.s3_endpoint, region_name=settings.s3_region))

    def cdn(self):
        if not self.prefix or not self.public_url:
            raise PublishError("no CDN configured: set THREEGEN_CDN_PREFIX (s3://BUCKET/PREFIX) and THREEGEN_CDN_URL "
                               "(its public https URL), or the cdn resource's prefix and public_url")
        check_cdn_url(self.public_url)
        return open_store(self.prefix, client=self.s3.get_client)


class CommitmentResource(dg.ConfigurableResource):
    """What is committed each round and how: the repository and commit validators build, the CDN URL, the
    chain (bittensor's Subtensor) and the reveal delay. The wallet is the ``sn17`` resource's."""

    repo: str = Field("", description="owner/name of the miner's repository (no dots)")
    commit: str = Field("", description="the full commit hash validators build (40 lowercase hex)")
    cdn_url: str = Field(CDN_URL, description="the public base URL of the round's outputs")
    netuid: int = Field(NETUID, ge=0)
    network: str = Field(NETWORK, description="bittensor network: finney, test, or a ws(s):// endpoint")
    reveal_blocks: int = Field(REVEAL_BLOCKS, ge=1, description="blocks from the call until the reveal")
    margin_blocks: int = Field(MARGIN_BLOCKS, ge=0, description="kept between the reveal and the window's end")

    @classmethod
    def from_settings(cls, settings) -> "CommitmentResource":
        c = settings.commitment
        return cls(repo=c.get("repo", ""), commit=c.get("commit", ""), cdn_url=settings.cdn_url,
                   reveal_blocks=c.get("reveal_blocks", REVEAL_BLOCKS), network=c.get("network", NETWORK))

    def chain(self) -> Chain:
        return BittensorChain(self.network)


class JudgeRenderResource(dg.ConfigurableResource):
    """The Chromium the judge-style renders use (None: Debian's /usr/bin/chromium)."""

    chromium: str | None = Field(None, description="Path to Chromium (THREEGEN_CHROMIUM)")
    timeout_s: float = Field(60.0, gt=0, description="Seconds per page operation")


def _check_spec() -> dg.AssetCheckSpec:
    with warnings.catch_warnings():  # partitioned checks are a "preview" feature; the version is pinned
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.AssetCheckSpec(CHECK, asset="round_publication", partitions_def=rounds,
                                 description="Every published URL answers with the uploaded bytes (sha256)")


def _table(rows: dict[str, str], head: str) -> dg.MetadataValue:
    body = "\n".join(f"| {k} | {str(v).replace('|', '/')[:300]} |" for k, v in sorted(rows.items()))
    return dg.MetadataValue.md(f"| stem | {head} |\n|---|---|\n{body}" if body else "(none)")


@dg.asset(partitions_def=rounds, group_name=GROUP, deps=["sn17_round"], kinds={"s3"}, check_specs=[_check_spec()],
          description="The round's outputs that passed their check, uploaded to the CDN as {stem}.<ext> and read "
                      "back from their public URLs")
def round_publication(context: dg.AssetExecutionContext, store: StoreResource, round_state: RoundsResource,
                      cdn: CdnResource) -> dg.MaterializeResult:
    number, competition = int(context.partition_key), round_state.competition
    try:
        target = cdn.cdn()
    except PublishError as exc:
        raise dg.Failure(str(exc)) from None
    _, outputs, _ = round_outputs(RoundBook(store.store()), store.artifacts(), number, competition)
    publication = upload(target, to_publish(store.artifacts(), outputs, competition), number=number,
                         competition=competition, cdn_url=cdn.public_url)
    verify(publication, timeout_s=cdn.timeout_s, tries=cdn.tries, workers=cdn.workers)
    store.store().write(publication_path(number), publication.to_json(), content_type="application/json")
    for stem, error in sorted(publication.failures.items()):
        context.log.error(f"round {number}: {stem}: {error}")
    ok = not publication.failures and len(publication.verified) == len(publication.urls)
    return dg.MaterializeResult(
        metadata={"cdn_url": publication.cdn_url, "published": len(publication.urls),
                  "verified": len(publication.verified), "failed": len(publication.failures),
                  "not_published": len(publication.skipped), "unchanged": publication.unchanged,
                  "urls": _table(publication.urls, "URL"), "failures": _table(publication.failures, "why"),
                  "skipped": _table(publication.skipped, "why")},
        check_results=[dg.AssetCheckResult(check_name=CHECK, passed=ok, metadata={
            "verified": len(publication.verified), "failed": len(publication.failures)},
            description=None if ok else f"{len(publication.failures)} output(s) not verifiably published")])


class ReportConfig(dg.Config):
    previews: int = Field(4, ge=0, le=32, description="Outputs drawn beside the leader's (judge-style renders)")
    leader: bool = Field(True, description="Fetch the leader's outputs from its cdn_url")


def _previews(config: ReportConfig, store: StoreResource, round_state: RoundsResource,
              judge: JudgeRenderResource, number: int, outputs: dict) -> dict:
    """The leader's outputs for a few of our passed stems, and both sides' judge-style renders (the leader's in
    the store under rounds/<N>/renders/<stem>/leader/; ours from round_renders, generations/<key>/judge/, drawn
    here only where those are missing), as markdown rows."""
    from ..rounds.comp2_check import CheckerError, check_module
    from ..rounds.judge_renders import render_prefix, stored_renders
    from ..rounds.render import find_chromium, preview_markdown
    from ..rounds.report import fetch_leader_outputs, find_leader

    competition = round_state.competition
    stems = sorted(s for s, o in outputs.items() if o.passed)[:config.previews]
    leader = find_leader(round_state.round_source(), number) if config.leader else None
    theirs, errors = {}, {}
    if leader and leader.cdn_url and stems:
        theirs, errors = fetch_leader_outputs(leader.cdn_url, stems, competition, timeout_s=round_state.timeout_s)
    result = {"leader": leader.hotkey if leader else "", "leader_note": leader.note if leader else "no leader",
              "leader_fetched": len(theirs), "leader_errors": errors, "rendered": {}, "ours_at": {}, "rows": []}
    kind = {1: "glb", 2: "js"}.get(competition)
    if not stems or kind is None or find_chromium(judge.chromium) is None:
        result["render_note"] = "no renders: " + ("no passed output" if not stems else "no Chromium" if kind else
                                                  "comp 0 splats are not drawn by the judge page")
        return result
    from ..rounds.render import JudgeRenderer

    with tempfile.TemporaryDirectory(prefix="round-report-") as tmp, JudgeRenderer(judge.chromium, judge.timeout_s) as r:
        for stem in stems:
            cells = []
            manifest, ours = store.artifacts().load(outputs[stem].key, OUTPUT_ASSETS[competition])
            kept = stored_renders(store.store(), outputs[stem].key, manifest.sha256, Path(tmp) / stem / "kept")
            sides = {"ours": kept or ours}
            if stem in theirs:
                try:  # another miner's code runs in our browser only if it passes the rules
                    verdict = check_module(theirs[stem], round_state.comp2_rules.limits()) if competition == 2 else None
                except CheckerError as exc:
                    verdict = exc
                if verdict is None or getattr(verdict, "ok", False):
                    sides["leader"] = theirs[stem]
                else:
                    why = verdict.summary() if hasattr(verdict, "summary") else str(verdict)
                    result["leader_errors"][stem] = f"not drawn: its rules check: {why[:300]}"
            for side, data in sides.items():
                try:
                    rendered = data if not isinstance(data, bytes) else r.render(data, kind, Path(tmp) / stem / side)
                except Exception as exc:  # noqa: BLE001 - this output's preview only
                    cells.append(f"{side}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                if rendered is kept:  # round_renders drew it: not again, not copied
                    result["ours_at"][stem] = render_prefix(outputs[stem].key)
                for path in ([] if rendered is kept else rendered.paths()):
                    relative = path.relative_to(Path(tmp)).as_posix()
                    store.store().write(f"rounds/{number}/renders/{relative}", path.read_bytes(),
                                        content_type="image/png")
                result["rendered"].setdefault(stem, []).append(side)
                cells.append(preview_markdown(rendered, thumb_px=96).replace("\n\n", " "))
            result["rows"].append(f"| {stem[:16]} | " + " | ".join(cells) + " |")
    return result


@dg.asset(partitions_def=rounds, group_name=GROUP, deps=["round_publication", "round_renders"], kinds={"json"},
          description="The round summed up: prompts, checks passed and failed by rule, time used against the window, "
                      "published and verified URLs, the commitment, and our outputs beside the leader's")
def round_report(context: dg.AssetExecutionContext, config: ReportConfig, store: StoreResource,
                 round_state: RoundsResource, judge_render: JudgeRenderResource) -> dg.MaterializeResult:
    import time

    number, competition = int(context.partition_key), round_state.competition
    record, outputs, not_registered = round_outputs(RoundBook(store.store()), store.artifacts(), number, competition)
    report = build_report(record, outputs, not_registered, competition=competition,
                          publication=load_publication(store.store(), number),
                          commitment=load_commitment(store.store(), number), now=time.time())
    previews = _previews(config, store, round_state, judge_render, number, outputs)
    report["next_commitment"] = load_commitment(store.store(), number + 1) or {"status": "none recorded"}
    report["previews"] = {k: v for k, v in previews.items() if k != "rows"}
    store.store().write(f"rounds/{number}/report.json", json.dumps(report, indent=1, sort_keys=True).encode(),
                        content_type="application/json")
    table = "| stem | ours | leader |\n|---|---|---|\n" + "\n".join(previews["rows"]) if previews["rows"] else \
        previews.get("render_note", "(no previews)")
    return dg.MaterializeResult(metadata={
        "summary": dg.MetadataValue.md(markdown(report)), "prompts": report["prompts"], "passed": report["passed"],
        "failed": report["failed"], "failed_by_rule": json.dumps(report["failed_by_rule"]) or "{}",
        "published": report["published"], "verified": report["verified"],
        "used_s": report["window"]["used_s"] or 0, "window_s": report["window"]["window_s"],
        "commitment": json.dumps(report["commitment"].get("last_attempt", report["commitment"]))[:2000],
        "leader": previews["leader_note"], "previews": dg.MetadataValue.md(table)})


publish_job = dg.define_asset_job(
    "sn17_round_publish", selection=dg.AssetSelection.assets(round_publication, "round_renders", round_report),
    description="Publish a round's checked outputs to the CDN, verify every URL, render every output as the judges "
                "do (round_renders), and write the round's report")


FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


@dg.sensor(job=publish_job, minimum_interval_seconds=120, default_status=dg.DefaultSensorStatus.STOPPED,
           description="Publishes the latest round (sn17_round_publish) once every run it launched has ended; again "
                       "when more of its runs have ended since")
def sn17_round_publish_sensor(context: dg.SensorEvaluationContext):
    numbers = sorted(int(k) for k in context.instance.get_dynamic_partitions(rounds.name) if k.isdigit())
    if not numbers:
        return dg.SkipReason("no round taken up yet")
    number = numbers[-1]
    runs = context.instance.get_run_records(dg.RunsFilter(tags={TAG_ROUND: str(number)}))
    if not runs:
        return dg.SkipReason(f"round {number}: no runs yet")
    going = [r for r in runs if r.dagster_run.status not in FINISHED]
    if going:
        return dg.SkipReason(f"round {number}: {len(going)} of {len(runs)} runs not ended yet")
    ended = max(r.end_time or 0.0 for r in runs)
    return dg.RunRequest(run_key=f"publish:{number}:{len(runs)}:{ended:.0f}", partition_key=str(number))


class CommitConfig(dg.Config):
    round: int | None = Field(None, description="The round to commit for (default: the one whose window is open "
                                                "or opens next, from state.json)")
    force: bool = Field(False, description="Commit again even if this payload was committed for the round")


def _schedule_of(source):
    def schedule(number: int):
        try:
            return source.schedule(number)
        except FetchError as exc:
            if "not found" in str(exc):
                return None
            raise
    return schedule


@dg.op(description="Commit {repo, commit, cdn_url} with bittensor's reveal commitment inside the round's reveal "
                   "window; refuses outside it, saying when it opens; the outcome is kept in rounds/<N>/commitment.json")
def commit_round_op(context: dg.OpExecutionContext, config: CommitConfig, store: StoreResource,
                    round_state: RoundsResource, sn17: SN17Resource, commitment: CommitmentResource) -> dict:
    source = round_state.round_source()
    schedule_of = _schedule_of(source)
    try:
        if config.round is not None:
            schedule = schedule_of(config.round)
            if schedule is None:
                raise CommitmentError(f"rounds/{config.round}/schedule.json is not out: no window to commit in")
            window = Window(config.round, schedule.earliest_reveal_block, schedule.latest_reveal_block)
        else:
            window = window_for(source.state(), schedule_of)
        payload = build_payload(commitment.repo, commitment.commit, commitment.cdn_url)
        state = commit_round(commitment.chain(), sn17.wallet(), store.store(), window, payload,
                             netuid=commitment.netuid, reveal_blocks=commitment.reveal_blocks,
                             margin_blocks=commitment.margin_blocks, seconds_per_block=round_state.seconds_per_block,
                             force=config.force)
    except CommitmentError as exc:
        raise dg.Failure(description=str(exc)) from None
    attempt = state["last_attempt"]
    context.log.info(f"round {window.round}: {attempt['status']}: {attempt.get('message', '')}")
    return state


@dg.job(description="Commit this miner's {repo, commit, cdn_url} for the round whose reveal window is open")
def sn17_commit():
    commit_round_op()


ASSETS = [round_publication, round_report]
JOBS = [publish_job, sn17_commit]
SENSORS = [sn17_round_publish_sensor]
