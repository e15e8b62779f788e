"""``threegen serve`` as validators drive it, a real process on loopback with the embedded backends and the
comp 2 profile, prompt images from a loopback HTTP server: warming_up -> ready; requests refused at the
edge change nothing; a batch with a failing prompt; an idempotent re-POST and a 409 for another batch
while generating; /results 409 before complete; the process SIGKILLed mid-batch and started again
resumes the saved batch (done stems kept, the killed run marked failed in the Dagster instance); the
ZIP's contents; a third start with a 1,000-byte file limit serves the saved batch with every output
refused as a failure entry, and takes a new batch from ``complete``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from threegen_dagster.rounds.comp2_check import checker_ready
from threegen_dagster_tests.rounds.state_server import StateServer, build_state

from .serve_process import ServeProcess

pytestmark = pytest.mark.skipif(not checker_ready(), reason="the comp 2 checker is not installed "
                                                              "(scripts/install_node_checker.sh)")
SEED = 579720909


@pytest.fixture
def world(tmp_path):
    folder = build_state(tmp_path / "state", "", images=3)
    with StateServer(tmp_path / "state", delay_s=2.0) as images:
        env = {**os.environ, "THREEGEN_STORE": str(tmp_path / "store"), "DAGSTER_HOME": str(tmp_path / "home"),
               "THREEGEN_COMPETITION": "2"}
        yield env, folder.stems, images.url, tmp_path


def _instance(tmp_path: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / "home")))


def _edge_refusals(server: ServeProcess, image_url: str) -> None:
    """Requests refused before they cost anything, each with its one-line reason; the status is unchanged."""
    good = {"stem": "a", "image_url": image_url}
    cases = [
        ({"prompts": [{"stem": f"s{i}", "image_url": image_url} for i in range(100)], "seed": 1}, "at most 99"),
        ({"prompts": [{"stem": "../etc", "image_url": image_url}], "seed": 1}, "prompts.0.stem"),
        ({"prompts": [{"stem": "a", "image_url": "file:///etc/passwd"}], "seed": 1}, "not an http"),
        ({"prompts": [good], "seed": "3"}, "'seed'"),
        ({"prompts": [good], "seed": 2**32}, "'seed'"),
        ({"prompts": [good, good], "seed": 1}, "comes twice"),
        ({"prompts": [], "seed": 1}, "'prompts'"),
    ]
    for body, reason in cases:
        answer = server.client.post("/generate", json=body)
        assert answer.status_code == 400 and reason in answer.json()["error"], (body, answer.text)
    garbled = server.client.post("/generate", content=b"prompts=a&seed=1",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert garbled.status_code == 400 and "the body is not JSON" in garbled.json()["error"], garbled.text
    huge = server.client.post("/generate", content=b"{" + b" " * (2**20 + 10) + b"}",
                              headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and "limit" in huge.json()["error"]
    assert server.status() == {"status": "ready", "progress": 0, "total": 0, "payload": {}}


def test_a_batch_through_warm_up_conflicts_a_restart_and_the_zip_limits(world) -> None:
    env, stems, base, tmp_path = world
    urls = {stem: f"{base}/procgen/{stem}.png" for stem in stems}
    urls[stems[0]] = f"{base}/slow/procgen/{stems[0]}.png"  # the first stem arrives late: the batch is generating
    batch = [{"stem": s, "image_url": urls[s]} for s in stems] + [
        {"stem": "gone", "image_url": f"{base}/procgen/gone.png"}]
    server = ServeProcess(env)
    try:
        assert server.client.get("/health").json() == {"ok": True}
        assert server.status()["status"] == "warming_up"  # the models load in a thread; /health answers already
        early = server.client.post("/generate", json={"prompts": batch, "seed": SEED})
        assert early.status_code == 409 and "warming up" in early.json()["error"]
        assert server.wait_for("ready", timeout_s=300)["total"] == 0
        assert server.client.get("/results").status_code == 409
        _edge_refusals(server, urls[stems[1]])

        bearer = {"Authorization": "Bearer any-token"}  # accepted, never required
        first = server.client.post("/generate", json={"prompts": batch, "seed": SEED}, headers=bearer)
        assert first.status_code == 200 and first.json() == {"accepted": 4}
        for content_type in ("text/plain", None):  # the body is JSON whatever its header says (or without one)
            again = server.client.post("/generate", content=json.dumps({"prompts": list(reversed(batch)), "seed": SEED}),
                                       headers={"Content-Type": content_type} if content_type else {})
            assert again.status_code == 200 and again.json() == {"accepted": 4}  # idempotent: the same stems
        other = server.client.post("/generate", json={"prompts": batch[:2], "seed": SEED})
        assert other.status_code == 409 and "generating" in other.json()["error"]
        reseeded = server.client.post("/generate", json={"prompts": batch, "seed": SEED + 1})
        assert reseeded.status_code == 409
        status = server.status(replacements_remaining=3)
        assert status["status"] == "generating" and status["total"] == 4
        assert status["payload"]["replacements_remaining"] == 3
        batch_id = status["payload"]["batch"]
        not_yet = server.client.get("/results")
        assert not_yet.status_code == 409 and "generating" in not_yet.json()["error"]

        with _instance(tmp_path) as instance:  # one stem done and the next one's run started: then it dies
            while server.status()["progress"] < 1 or not instance.get_runs(dg.RunsFilter(
                    tags={"threegen/serve_batch": batch_id}, statuses=[dg.DagsterRunStatus.STARTED])):
                assert server.process.poll() is None, server.output()
                time.sleep(0.1)
        server.kill()
        saved = json.loads((tmp_path / "store" / "serve" / "batch.json").read_text())
        kept = {s["stem"]: s for s in saved["stems"] if s["state"] != "pending"}
        assert saved["id"] == batch_id and 1 <= len(kept) < 4

        server = ServeProcess(env)  # restarted: the saved batch resumes
        assert "resuming batch " + batch_id in server.output()
        assert server.status()["status"] == "warming_up"
        done = server.wait_for("complete")
        assert done["progress"] == done["total"] == 4 and done["payload"] == {"batch": batch_id, "seed": SEED, "failed": 1}
        again = json.loads((tmp_path / "store" / "serve" / "batch.json").read_text())
        for stem, before in kept.items():  # what was done before the kill is kept, not generated again
            assert next(s for s in again["stems"] if s["stem"] == stem) == before
        archive = server.results()
        assert sorted(archive.namelist()) == sorted([f"{s}.js" for s in stems] + ["_failed.json"])
        for stem in stems:
            assert b"export default function generate(THREE)" in archive.read(f"{stem}.js")
        failed = json.loads(archive.read("_failed.json"))
        assert list(failed) == ["gone"] and "HTTP 404" in failed["gone"]
        with _instance(tmp_path) as instance:
            runs = instance.get_runs(dg.RunsFilter(tags={"threegen/serve_batch": batch_id}))
        by_status = sorted(r.status.value for r in runs)
        assert by_status.count("SUCCESS") == 3 and by_status.count("FAILURE") == 1, by_status  # the killed run
        assert {r.tags["threegen/stem"] for r in runs} == set(stems)
        server.stop()

        server = ServeProcess(env, "--max-file-bytes", "1000")  # the same batch, served under a tighter limit
        assert server.wait_for("complete", timeout_s=300)["payload"]["batch"] == batch_id
        refused = json.loads(server.results().read("_failed.json"))
        assert sorted(refused) == sorted([*stems, "gone"])
        assert all("over the 1,000-byte file limit" in refused[s] for s in stems)
        retry = server.client.post("/generate", json={"prompts": batch[-1:], "seed": 1})  # a new batch from complete
        assert retry.status_code == 200 and retry.json() == {"accepted": 1}
        assert server.wait_for("complete")["payload"]["batch"] != batch_id
        assert server.results().namelist() == ["_failed.json"]
    finally:
        server.stop()
