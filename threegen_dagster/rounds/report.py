"""A round as this miner played it, in one record: the prompts (registered, given up and why), the outputs
(passed, failed by rule code, missing), the time used against the generation window, what was published and
verified on the CDN, the commitment's state, and the leader's outputs fetched from its ``cdn_url`` (bounded)
beside ours for judge-style previews. The outputs come from the store (the round's prompt records give each
stem's generation; the artifact store its latest output and the check's verdict in its metadata). No Dagster."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..artifacts import ArtifactStore
from ..storage import StorageError
from .publish import EXTENSIONS, MAX_OUTPUT_BYTES, Output, public_url
from .register import RoundBook
from .source import FetchError, RoundFileError, RoundSource, fetch_url
from .state import iso

OUTPUT_ASSETS = {0: "comp0_splat", 1: "comp1_mesh", 2: "comp2_module"}  # each competition's output asset


@dataclass(frozen=True)
class StemOutput:
    stem: str
    key: str
    written_at: float | None  # None: no output (yet)
    passed: bool
    rules_failed: str


def round_outputs(book: RoundBook, artifacts: ArtifactStore, number: int,
                  competition: int) -> tuple[dict, dict[str, StemOutput], dict[str, str]]:
    """The round's record, each registered stem's latest output (its check's verdict from its metadata), and
    the stems given up or not registered (stem -> why)."""
    record = book.round(number)
    states = book.prompt_states(number)
    asset = OUTPUT_ASSETS[competition]
    outputs, not_registered = {}, {}
    for stem in record["stems"]:
        state = states.get(stem, {})
        key = state.get("key")
        if not key:
            not_registered[stem] = state.get("error", "not registered yet")
            continue
        manifest = artifacts.latest(key, asset)
        if manifest is None:
            outputs[stem] = StemOutput(stem, key, None, False, "")
            continue
        meta = manifest.metadata
        outputs[stem] = StemOutput(stem, key, manifest.written_at, bool(meta.get("passed")),
                                   str(meta.get("rules_failed", "") or ""))
    return record, outputs, not_registered


def to_publish(artifacts: ArtifactStore, outputs: dict[str, StemOutput], competition: int) -> Iterator[Output]:
    """Each output that exists, its bytes read only when it passed (and one at a time: a generator)."""
    for o in outputs.values():
        if o.written_at is None:
            continue
        data = b""
        if o.passed:
            try:
                data = artifacts.load(o.key, OUTPUT_ASSETS[competition])[1]
            except StorageError as exc:
                yield Output(o.stem, b"", False, f"UNREADABLE: {exc}")
                continue
        yield Output(o.stem, data, o.passed, o.rules_failed)


def build_report(record: dict, outputs: dict[str, StemOutput], not_registered: dict[str, str], *,
                 competition: int, publication: dict | None, commitment: dict | None, now: float) -> dict:
    done = [o for o in outputs.values() if o.written_at is not None]
    failed = [o for o in done if not o.passed]
    by_rule = Counter(rule.strip() for o in failed for rule in (o.rules_failed or "UNKNOWN").split(",") if rule.strip())
    seen, deadline = record["seen_at"], record["deadline_at"]
    last = max((o.written_at for o in done), default=None)
    publication = publication or {}
    return {
        "round": record["round"], "competition": competition, "seed": record["seed"],
        "prompts": len(record["stems"]), "registered": len(outputs), "not_registered": not_registered,
        "outputs": len(done), "missing": sorted(o.stem for o in outputs.values() if o.written_at is None),
        "passed": len(done) - len(failed), "failed": len(failed), "failed_by_rule": dict(sorted(by_rule.items())),
        "failed_stems": {o.stem: o.rules_failed for o in failed},
        "window": {"seen_at": iso(seen), "deadline": record["deadline"], "window_s": round(deadline - seen),
                   "last_output_at": iso(last) if last else None,
                   "used_s": round(last - seen) if last else None,
                   "used_fraction": round((last - seen) / (deadline - seen), 4) if last and deadline > seen else None,
                   "seconds_left_now": round(deadline - now)},
        "cdn_url": publication.get("cdn_url"), "published": len(publication.get("urls", {})),
        "verified": len(publication.get("verified", [])), "urls": publication.get("urls", {}),
        "publication_failures": publication.get("failures", {}),
        "commitment": commitment or {"status": "none recorded"},
    }


@dataclass(frozen=True)
class Leader:
    hotkey: str
    cdn_url: str | None
    note: str


def find_leader(source: RoundSource, number: int, lookback: int = 3) -> Leader | None:
    """The first leader of ``leader.json`` and its ``cdn_url``: from its revealed submission in this round's or
    an earlier round's ``submissions.json`` (leader.json itself names no URL)."""
    try:
        leaders = source.leaders().root
    except RoundFileError as exc:
        return Leader("", None, f"leader.json: {exc}")
    if not leaders:
        return None
    hotkey = leaders[0].hotkey
    for back in range(lookback + 1):
        try:
            submission = source.submissions(number - back).root.get(hotkey)
        except RoundFileError:
            continue
        if submission is not None:
            return Leader(hotkey, submission.cdn_url, f"cdn_url from rounds/{number - back}/submissions.json")
    return Leader(hotkey, None, f"no revealed submission of {hotkey} in rounds {number - lookback}-{number}")


def fetch_leader_outputs(cdn_url: str, stems: list[str], competition: int, *, timeout_s: float = 30.0,
                         tries: int = 2, workers: int = 4) -> tuple[dict[str, bytes], dict[str, str]]:
    """The leader's ``{cdn_url}/{stem}.<ext>`` for ``stems``, each at most the competition's size limit, no
    redirects; (stem -> bytes, stem -> why not)."""
    ext = EXTENSIONS[competition]

    def one(stem: str) -> tuple[str, bytes | None, str]:
        try:
            return stem, fetch_url(public_url(cdn_url, stem, ext), max_bytes=MAX_OUTPUT_BYTES[competition],
                                   timeout_s=timeout_s, tries=tries, what=f"leader's {stem}.{ext}",
                                   redirects=False), ""
        except FetchError as exc:
            return stem, None, str(exc)

    got, errors = {}, {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(stems) or 1))) as pool:
        for stem, data, error in pool.map(one, stems):
            if data is None:
                errors[stem] = error
            else:
                got[stem] = data
    return got, errors


def markdown(report: dict) -> str:
    """The report's summary as markdown (asset metadata)."""
    window = report["window"]
    used = f"{window['used_s']} s of {window['window_s']} s ({window['used_fraction'] or 0:.1%})" \
        if window["used_s"] is not None else f"nothing yet of {window['window_s']} s"
    rules = ", ".join(f"{rule} x{n}" for rule, n in report["failed_by_rule"].items()) or "none"
    commitment = report["commitment"]
    lines = [f"**Round {report['round']}** (competition {report['competition']}, seed {report['seed']})", "",
             f"- prompts: {report['prompts']}, registered {report['registered']}, outputs {report['outputs']}, "
             f"missing {len(report['missing'])}",
             f"- checks: {report['passed']} passed, {report['failed']} failed; failed rules: {rules}",
             f"- time used: {used}; deadline {window['deadline']}",
             f"- CDN {report['cdn_url'] or '(not published)'}: {report['published']} published, "
             f"{report['verified']} verified, {len(report['publication_failures'])} failed",
             f"- commitment: {commitment.get('last_attempt', {}).get('status') or commitment.get('status')}"]
    return "\n".join(lines)
