"""The self-audit against a real ``threegen serve`` process on loopback (embedded backends, comp 2), driven
as the validators' orchestrator drives it: a full audit through a failing prompt in ``_failed.json``, the
server SIGKILLed mid-batch and started again on its port, and another client's batch that makes the audit's
POST answer 409 (the pod is given up, the repeats start over on the next); then verdicts: too many failed
stems, a repeat over its time, a results ZIP over the file limit, polls that never answer, ``replace``."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import pytest

from threegen_dagster.audit.client import BatchClient, ZipLimits, ZipRefused
from threegen_dagster.audit.compare import compare, summary
from threegen_dagster.audit.driver import Audit, AuditRules, run_audit
from threegen_dagster.rounds.comp2_check import checker_ready
from threegen_dagster_tests.rounds.state_server import SEED, StateServer, build_state
from threegen_dagster_tests.serve.serve_process import ServeProcess

from .conftest import BOX

pytestmark = pytest.mark.skipif(not checker_ready(), reason="the comp 2 checker is not installed")
FAST = dict(poll_interval_s=0.25, request_timeout_s=30.0)


class World:
    def __init__(self, env, urls, images) -> None:
        self.env, self.urls, self.images = env, urls, images
        self.server = ServeProcess(env)

    def restart(self) -> None:
        """SIGKILL the server and start it again on the same port, over the same store."""
        port = self.server.url.rsplit(":", 1)[1]
        self.server.kill()
        self.server = ServeProcess(self.env, "--port", port)

    def settle(self) -> None:
        """Wait until the server holds no running batch (a test that walked away from one)."""
        self.server.wait_for("ready", "complete", timeout_s=600)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    folder = build_state(tmp / "state", "", images=2)
    with StateServer(tmp / "state") as images:
        urls = {stem: f"{images.url}/procgen/{stem}.png" for stem in folder.stems}
        folder.prompts([urls[s] for s in folder.stems])  # the round's prompts.txt, with the served URLs
        urls["zz-missing"] = f"{images.url}/procgen/zz-missing.png"  # a 404: a failing prompt
        env = {**os.environ, "THREEGEN_STORE": str(tmp / "store"), "DAGSTER_HOME": str(tmp / "home"),
               "THREEGEN_COMPETITION": "2"}
        (tmp / "home").mkdir()
        world = World(env, urls, images)
        world.folder = folder
        yield world
        world.server.stop()


def test_full_self_audit_through_a_restart_a_conflict_and_a_failing_prompt(world, judge_renderer):
    good, other = sorted(s for s in world.urls if s != "zz-missing")
    prompts = {good: world.urls[good], "zz-missing": world.urls["zz-missing"]}
    rules = AuditRules(batch_size=1, repeats=2, pods=3, post_tries=2, poll_failures=120, **FAST)
    events: list[tuple[str, dict]] = []
    killed = threading.Event()

    def kill_mid_batch() -> None:  # the server dies while it generates the audit's first stem
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = world.server.status()
            if status["status"] == "generating" and status["progress"] == 0:
                world.restart()
                killed.set()
                return
            time.sleep(0.1)

    def on_event(kind: str, detail: dict) -> None:
        events.append((kind, detail))
        if kind == "repeat" and detail["pod"] == 1 and detail["repeat"] == 1:
            # another client's batch lands between the repeats: the audit's next POST is answered 409
            answer = world.server.client.post("/generate", json={
                "prompts": [{"stem": other, "image_url": world.urls[other]}], "seed": 7})
            assert answer.status_code == 200, answer.text

    killer = threading.Thread(target=kill_mid_batch, daemon=True)
    killer.start()
    report = Audit(prompts, SEED, rules, lambda pod: world.server.url, on_event).run()
    killer.join(timeout=5)

    assert killed.is_set()
    assert any(kind == "poll_failed" for kind, _ in events)  # the restart was seen, and survived
    assert report.passed, report.to_json()
    assert report.pods_used == 2 and len(report.pod_losses) == 1
    assert "POST /generate failed 2 times" in report.pod_losses[0] and "HTTP 409" in report.pod_losses[0]
    assert [(r.pod, r.repeat, r.passed, r.failed) for r in report.repeats] == [(2, 1, True, 1), (2, 2, True, 1)]
    pod1 = [b for b in report.batches if b.pod == 1]
    assert pod1[0].outcome == "ok" and pod1[-1].outcome.startswith("pod lost: POST /generate HTTP 409")
    for batch in report.batches:
        if batch.pod == 2:
            assert batch.failed == ({} if batch.index == 1 else {"zz-missing": batch.failed["zz-missing"]})
    reasons = report.failures_by_reason()
    assert reasons == {"prompt <stem>: <url>: not found (HTTP 404)": 3}, reasons  # pod 1's and pod 2's
    assert all(b.seconds > 0 for b in report.batches) and all(r.seconds > 0 for r in report.repeats)

    # determinism: every repeat gave the same module; the published copy differs only in a comment
    modules = [out[good] for out in report.outputs]
    assert len(modules) == 2 and modules[0] == modules[1] and b"export default function generate" in modules[0]
    copy = modules[0] + b"\n// published copy\n"
    box_digest = hashlib.sha256(BOX).hexdigest()
    published = {good: ("http://cdn.invalid/a.js", hashlib.sha256(copy).hexdigest()),
                 "zz-missing": ("http://cdn.invalid/b.js", box_digest)}
    rows = compare(report.outputs, published, {"http://cdn.invalid/a.js": copy}.__getitem__, "js", judge_renderer)
    by_stem = {r.stem: r for r in rows}
    assert by_stem[good].deterministic and not by_stem[good].identical_to_published
    assert by_stem[good].pixel_similarity > 0.999, by_stem[good]
    assert by_stem["zz-missing"].regenerated == 0 and by_stem["zz-missing"].pixel_similarity == 0.0
    assert summary(rows)["deterministic"] == 1

    # a different published object renders differently
    rows = compare(report.outputs, {good: ("http://cdn.invalid/box.js", box_digest)},
                   {"http://cdn.invalid/box.js": BOX}.__getitem__, "js", judge_renderer)
    assert rows[0].pixel_similarity < 0.99, rows[0]

    # the same outputs as published: identical, nothing rendered
    same = {good: ("http://cdn.invalid/a.js", hashlib.sha256(modules[0]).hexdigest())}
    rows = compare(report.outputs, same, lambda url: pytest.fail("fetched"), "js", None)
    assert rows[0].identical_to_published and rows[0].pixel_similarity == 1.0


def test_too_many_failed_stems_fail_the_first_repeat_and_stop(world):
    world.settle()
    report = run_audit(world.server.url, {"zz-missing": world.urls["zz-missing"]}, SEED,
                       AuditRules(max_failed=0, **FAST))
    assert not report.passed and report.reason == "repeat 1 failed: 1 failed stems, over 0"
    assert len(report.repeats) == 1 and len(report.batches) == 1  # the early exit: no second repeat
    assert "HTTP 404" in report.batches[0].failed["zz-missing"]


def test_a_repeat_over_its_time_fails(world):
    world.settle()
    good = sorted(world.urls)[0]
    report = run_audit(world.server.url, {good: world.urls[good]}, SEED, AuditRules(repeat_timeout_s=0.5, **FAST))
    assert not report.passed and report.reason == "repeat 1 failed: over 0.5 s (batch 1 unfinished)"
    assert report.batches[0].outcome == "timeout"


def test_a_results_zip_over_a_limit_is_refused(world):
    world.settle()
    good = sorted(world.urls)[0]
    prompts = {good: world.urls[good], "zz-missing": world.urls["zz-missing"]}
    rules = AuditRules(max_failed=1, zip=ZipLimits(file_bytes=1000), **FAST)
    report = run_audit(world.server.url, prompts, SEED, rules)
    assert not report.passed and report.reason == "repeat 1 failed: 2 failed stems, over 1"
    reason = report.batches[0].failed[good]
    assert reason.startswith(f"results ZIP refused: {good}.js is ") and "over the 1,000-byte file limit" in reason
    # the same complete batch, against the entry limit (the module and _failed.json are two entries)
    with BatchClient(world.server.url) as client:
        with pytest.raises(ZipRefused, match="holds 2 entries, over the 1-entry limit"):
            client.results(ZipLimits(zip_entries=1))
        with pytest.raises(ZipRefused, match="over the 100-byte limit"):
            client.results(ZipLimits(zip_bytes=100))
        assert client.results(ZipLimits()).failed["zz-missing"]


def test_polls_that_never_answer_lose_every_pod(world):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = run_audit(f"http://127.0.0.1:{port}", {"a": "http://127.0.0.1:1/a.png"}, SEED,
                       AuditRules(pods=2, poll_failures=3, poll_interval_s=0.01))
    assert not report.passed and report.pods_used == 2
    assert report.reason.startswith("every pod (2) was lost; last: pod 2: 3 failed polls in a row while waiting")


def test_a_server_that_cannot_warm_up_answers_replace_until_none_is_left(world, tmp_path):
    env = {**world.env, "THREEGEN_TEXT_TO_IMAGE": "flux", "THREEGEN_FLUX_MODEL": str(tmp_path / "no-such-model"),
           "THREEGEN_STORE": str(tmp_path / "store")}
    broken = ServeProcess(env)
    try:
        broken.wait_for("replace", timeout_s=300)
        seen = []
        report = Audit({"a": world.urls[sorted(world.urls)[0]]}, SEED, AuditRules(pods=2, **FAST),
                       lambda pod: broken.url, lambda kind, detail: seen.append(kind)).run()
    finally:
        broken.stop()
    assert not report.passed and report.pods_used == 2
    assert report.pod_losses == ["pod 1: the server answered replace"]
    assert report.reason == "pod 2 answered replace with no replacement left"


def test_the_dagster_asset_audits_a_round_and_its_check_is_the_verdict(world, tmp_path):
    import dagster as dg

    from threegen_dagster.defs.audit import AuditResource, DuelResource, sn17_self_audit
    from threegen_dagster.defs.resources import StoreResource
    from threegen_dagster.settings import Settings
    from threegen_dagster.defs.rounds import RoundsResource
    from threegen_dagster.defs.rounds_publish import JudgeRenderResource
    from threegen_dagster.rounds.publish import Publication, publication_path
    from threegen_dagster.storage.local import LocalStore
    from threegen_dagster_tests.rounds.state_server import ROUND

    world.settle()
    good = sorted(world.urls)[0]
    world.folder.write(f"cdn/{good}.js", BOX)  # what was published: not what the server makes
    store = LocalStore(tmp_path / "store")
    store.write(publication_path(ROUND), Publication(
        ROUND, 2, f"{world.images.url}/cdn", urls={good: f"{world.images.url}/cdn/{good}.js"},
        sha256={good: hashlib.sha256(BOX).hexdigest()}, sizes={good: len(BOX)}, verified=[good]).to_json())

    def audit(**config):
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("sn17_rounds", [str(ROUND)])
            result = dg.materialize([sn17_self_audit], partition_key=str(ROUND), instance=instance, raise_on_error=False,
                                    resources={"store": StoreResource.from_settings(Settings(store=str(tmp_path / "store"), inbox=tmp_path)),
                                               "round_state": RoundsResource(source=str(world.folder.root)),
                                               "duel": DuelResource(),
                                               "judge_render": JudgeRenderResource(), "audit": AuditResource(
                                                   server_url=world.server.url, poll_interval_s=0.25, max_rendered=0,
                                                   **config)})
            check = result.get_asset_check_evaluations()[0]
            return result.asset_materializations_for_node("sn17_self_audit")[0].metadata, check

    metadata, check = audit(repeats=1)
    assert check.passed and check.description == "1 repeats passed on pod 1"
    assert metadata["passed"].value and metadata["identical_to_published"].value == 0
    assert "differs from the published bytes; not rendered" in metadata["comparison"].value
    assert "| 1 | 1 | 1 | 1 |" in metadata["batches"].value  # pod, repeat, batch, stems
    assert metadata["judge"].value.startswith("no judge configured") and metadata["worst_margin"].value == 0.0
    assert "| 1 | 1 | 0 | 0 | 1 | 0 | 1 | 0.0 |" in metadata["margins"].value  # the differing stem: an unjudged draw
    saved = json.loads((tmp_path / "store" / f"rounds/{ROUND}/self_audit.json").read_text())
    assert saved["passed"] and list(saved["sha256"][0]) == [good]

    world.settle()
    metadata, check = audit(repeats=1, repeat_timeout_s=0.5)
    assert not check.passed and check.description == "repeat 1 failed: over 0.5 s (batch 1 unfinished)"
    assert metadata["reason"].value == check.description
    world.settle()

    with dg.instance_for_test() as instance:  # nothing to audit against: one line saying what to set
        instance.add_dynamic_partitions("sn17_rounds", [str(ROUND)])
        result = dg.materialize([sn17_self_audit], partition_key=str(ROUND), instance=instance, raise_on_error=False,
                                resources={"store": StoreResource.from_settings(Settings(store=str(tmp_path / "store"), inbox=tmp_path)),
                                           "round_state": RoundsResource(source=str(world.folder.root)),
                                           "duel": DuelResource(),
                                           "judge_render": JudgeRenderResource(), "audit": AuditResource()})
    assert "no server to audit: set THREEGEN_AUDIT_URL" in result.failure_data_for_node("sn17_self_audit").error.message
