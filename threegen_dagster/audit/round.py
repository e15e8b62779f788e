"""A round's self-audit and duel estimate from its state and this miner's publication: the stems this miner
delivered (``rounds/<N>/publication.json``, the verified ones, as validators regenerate only those), their
prompt URLs and the round's seed (the state repository), the leader's CDN (``leader.json``'s ``cdn_url``, or
the leader's entry in the round's ``submissions.json``, or a configured URL) and the published ``win_margin``
(``config.json``). Every fetch is bounded (bytes, time, tries, no redirects for outputs). No Dagster."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx
from PIL import Image

from ..rounds.comp2_llm import LlmConfig
from ..rounds.prompts import ImageLimits, PromptFetchError, fetch_prompt
from ..rounds.publish import EXTENSIONS, MAX_OUTPUT_BYTES, load_publication
from ..rounds.render import JudgeRenderer, RenderError
from ..rounds.report import fetch_leader_outputs, find_leader
from ..rounds.source import FetchError, RoundSource, fetch_url
from ..storage import Store
from .compare import StemComparison, compare
from .driver import Audit, AuditReport, AuditRules, Event
from .duel import WIN_MARGIN, DuelEstimate, StemDuel, judge_stem, tally
from .renders import Embedder, LazyRenderer, white_views


class RoundAuditError(ValueError):
    """The round cannot be audited (nothing published, no leader CDN); the message says what is missing."""


@dataclass(frozen=True)
class Fetching:
    timeout_s: float = 30.0
    tries: int = 2
    pause_s: float = 1.0


def published(store: Store, number: int) -> dict[str, tuple[str, str]]:
    """stem -> (public URL, sha256) of every verified output this miner published for round ``number``."""
    publication = load_publication(store, number)
    if not publication or "error" in publication:
        raise RoundAuditError(f"round {number}: no publication of this miner's outputs in the store "
                              f"({(publication or {}).get('error', 'rounds/%d/publication.json is missing' % number)})")
    verified = set(publication.get("verified") or [])
    return {s: (publication["urls"][s], publication["sha256"][s]) for s in sorted(verified)
            if s in publication.get("urls", {}) and s in publication.get("sha256", {})}


def output_fetcher(competition: int, fetching: Fetching) -> Callable[[str], bytes]:
    def fetch(url: str) -> bytes:
        return fetch_url(url, max_bytes=MAX_OUTPUT_BYTES[competition], timeout_s=fetching.timeout_s,
                         tries=fetching.tries, pause_s=fetching.pause_s, redirects=False)
    return fetch


def audit_round(source: RoundSource, store: Store, number: int, competition: int, rules: AuditRules,
                pod_url: Callable[[int], str], *, renderer: JudgeRenderer | None = None,
                embedder: Embedder | None = None, max_rendered: int = 32, fetching: Fetching = Fetching(),
                on_event: Event | None = None) -> tuple[AuditReport, list[StemComparison]]:
    mine = published(store, number)
    if not mine:
        raise RoundAuditError(f"round {number}: no verified output was published: nothing to audit")
    urls = {p.stem: p.url for p in source.prompts(number)}
    unknown = sorted(set(mine) - set(urls))
    if unknown:
        raise RoundAuditError(f"round {number}: published stems not in the round's prompts: {', '.join(unknown[:5])}")
    report = Audit({s: urls[s] for s in mine}, source.seed(number), rules, pod_url, on_event).run()
    rows = compare(report.outputs, mine, output_fetcher(competition, fetching), EXTENSIONS[competition], renderer,
                   embedder, max_rendered)
    return report, rows


@dataclass
class RepeatMargin:
    """One repeat's regenerated outputs judged against the published ones (the regenerated side as "ours")."""

    repeat: int
    stems: int
    wins: int = 0
    losses: int = 0
    draws: int = 0
    judged: int = 0  # differing stems a judge decided, or called a draw
    unjudged: int = 0  # differing stems left a draw: no judge configured, not rendered, over max_judged

    @property
    def margin(self) -> float:
        return (self.wins - self.losses) / self.stems if self.stems else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "margin": round(self.margin, 4)}


def judge_regenerated(source: RoundSource, number: int, outputs: list[dict[str, bytes]],
                      mine: dict[str, tuple[str, str]], fetch: Callable[[str], bytes], kind: str, *,
                      renderer: JudgeRenderer | LazyRenderer | None, embedder: Embedder | None,
                      vlm: LlmConfig | None, max_judged: int = 32, image_limits: ImageLimits = ImageLimits(),
                      log: Callable[[str], None] = print) -> list[RepeatMargin]:
    """The validators' audit judge, per repeat: the regenerated output of each published stem against the
    published one (SN17-NOW.md section 5: the regenerated margin must stay above -win_margin). Identical bytes
    are a draw, a stem the repeat did not deliver a loss; a differing pair is judged on the white views by the
    VLM and the best-view vote (``judge_stem``), each distinct pair once, at most ``max_judged`` of them; with
    no judge, no renderer or past that, a draw, counted as ``unjudged``."""
    seed, prompts = source.seed(number), {p.stem: p for p in source.prompts(number)}
    decided: dict[tuple[str, str], str | None] = {}  # (stem, regenerated sha256) -> outcome; None: unjudged
    views: dict[str, dict | None] = {}  # sha256 -> white views (None: does not render)
    margins = []
    with httpx.Client(follow_redirects=False, trust_env=False) as client:

        def drawn(data: bytes):
            digest = hashlib.sha256(data).hexdigest()
            if digest not in views:
                try:
                    views[digest] = white_views(renderer, data, kind)
                except RenderError as exc:
                    log(f"audit {number}: an output does not render: {exc}")
                    views[digest] = None
            return views[digest]

        def judge(stem: str, data: bytes) -> str | None:
            if (vlm is None and embedder is None) or renderer is None or len(decided) >= max_judged:
                return None
            try:
                image = Image.open(io.BytesIO(fetch_prompt(prompts[stem], image_limits).image)).convert("RGB")
                theirs = fetch(mine[stem][0])
            except (PromptFetchError, FetchError, KeyError) as exc:
                log(f"audit {number}: {stem}: not judged: {exc}")
                return None
            ours, published_views = drawn(data), drawn(theirs)
            if published_views is None:
                return None
            row = judge_stem(stem, image, ours, published_views, embedder=embedder, vlm=vlm, seed=seed,
                             client=client)
            if row.judge_failed:
                log(f"audit {number}: {stem}: {row.note}")
            return None if row.judge_failed and row.decided_by == "none" else row.outcome

        for index, out in enumerate(outputs, 1):
            margin = RepeatMargin(index, len(mine))
            for stem, (_, digest) in sorted(mine.items()):
                data = out.get(stem)
                if data is None:
                    margin.losses += 1
                    continue
                sha = hashlib.sha256(data).hexdigest()
                if sha == digest:
                    margin.draws += 1
                    continue
                if (stem, sha) not in decided:
                    decided[(stem, sha)] = judge(stem, data)
                outcome = decided[(stem, sha)]
                margin.judged += outcome is not None
                margin.unjudged += outcome is None
                outcome = outcome or "draw"
                margin.wins += outcome == "win"
                margin.losses += outcome == "loss"
                margin.draws += outcome == "draw"
            margins.append(margin)
    return margins


def _raw_json(source: RoundSource, name: str):
    try:
        return json.loads(source.read(name).decode("utf-8"))
    except (FetchError, UnicodeDecodeError, ValueError):
        return None


def leader_cdn_url(source: RoundSource, number: int, configured: str = "") -> str:
    """The leader's public output URL: configured, else leader.json's first entry's ``cdn_url`` (when it has
    one), else its revealed submission's (``report.find_leader``: this round's or an earlier one's)."""
    if configured:
        return configured.rstrip("/")
    raw = _raw_json(source, "leader.json")
    first = raw[0] if isinstance(raw, list) and raw and isinstance(raw[0], dict) else {}
    if isinstance(first.get("cdn_url"), str) and first["cdn_url"].startswith(("http://", "https://")):
        return first["cdn_url"].rstrip("/")
    leader = find_leader(source, number)
    if leader is None or not leader.cdn_url:
        why = leader.note if leader else "leader.json lists no leader"
        raise RoundAuditError(f"round {number}: no leader CDN URL ({why}): configure the leader's CDN URL")
    return leader.cdn_url.rstrip("/")


def published_win_margin(source: RoundSource, default: float = WIN_MARGIN) -> float:
    """``win_margin`` from the state repository's ``config.json`` when it has a number in [0, 1] there."""
    raw = _raw_json(source, "config.json")
    value = raw.get("win_margin") if isinstance(raw, dict) else None
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else default


def duel_round(source: RoundSource, store: Store, number: int, competition: int, leader_cdn: str, *,
               renderer: JudgeRenderer | LazyRenderer, embedder: Embedder | None, vlm: LlmConfig | None,
               win_margin: float,
               fetching: Fetching = Fetching(), image_limits: ImageLimits = ImageLimits(),
               log: Callable[[str], None] = print) -> DuelEstimate:
    """Every prompt of the round: this miner's published output against the leader's, on the judges' renders."""
    ext, fetch = EXTENSIONS[competition], output_fetcher(competition, fetching)
    mine = published(store, number)
    seed, prompts = source.seed(number), source.prompts(number)
    theirs, missing = fetch_leader_outputs(leader_cdn, [p.stem for p in prompts], competition,
                                           timeout_s=fetching.timeout_s, tries=fetching.tries)
    for stem, why in sorted(missing.items()):
        log(f"duel {number}: {stem}: {why}")
    rows = []
    with httpx.Client(follow_redirects=False, trust_env=False) as client:
        for prompt in prompts:
            ours, leader = None, theirs.get(prompt.stem)
            if prompt.stem in mine:
                try:
                    ours = fetch(mine[prompt.stem][0])
                except FetchError as exc:
                    log(f"duel {number}: {prompt.stem}: ours: {exc}")
            if ours is None or leader is None:
                rows.append(judge_stem(prompt.stem, None, ours, leader, embedder=None, vlm=None, seed=seed,
                                       client=None))
                continue
            if ours == leader:
                rows.append(StemDuel(prompt.stem, "draw", "identical", note="the same bytes: a draw"))
                continue
            try:
                image = Image.open(io.BytesIO(fetch_prompt(prompt, image_limits).image)).convert("RGB")
            except PromptFetchError as exc:
                raise RoundAuditError(str(exc)) from None
            views = []
            for side in (ours, leader):
                try:
                    views.append(white_views(renderer, side, ext) if side is not None else None)
                except RenderError as exc:
                    log(f"duel {number}: {prompt.stem}: does not render: {exc}")
                    views.append(None)  # an output the judges cannot render counts as missing
            rows.append(judge_stem(prompt.stem, image, views[0], views[1], embedder=embedder, vlm=vlm, seed=seed,
                                   client=client))
    return tally(number, rows, win_margin)
