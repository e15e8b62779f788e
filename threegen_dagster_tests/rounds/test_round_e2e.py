"""A whole SN17 round end to end on the embedded backends, on loopback: a state folder served over HTTP announces
round 53 with 8 prompt images; the round sensor (``dg.build_sensor_context``) registers them and requests the runs,
which are executed in this process as the daemon would launch them; every comp 2 module passes the Node check;
the outputs are published to the S3 server's public bucket and fetched back by URL; the commitment for the next
round is built, sealed and signed with a real test wallet (the chain call goes to a local chain); every output is
rendered as the judges render it, beside its generation, once (a second run skips them all); and the round's
report counts it all, with our output and the leader's (fetched from its ``cdn_url``) drawn as the judges draw."""

import base64
import hashlib
import json
import urllib.request

import dagster as dg
import pytest
import trimesh
from bittensor_wallet import Keypair

from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.resources import SN17Resource
from threegen_dagster.defs.rounds import RoundsResource, sn17_round_sensor
from threegen_dagster.defs.rounds_publish import sn17_round_publish_sensor
from threegen_dagster.defs.rounds_render import round_renders
from threegen_dagster.rounds.commitment import build_payload
from threegen_dagster.rounds.register import RoundBook
from threegen_dagster.rounds.comp2_check import check_module, checker_ready
from threegen_dagster.rounds.comp2_generate import generate_module
from threegen_dagster.rounds.render import GRAY_VIEWS, WHITE_VIEWS, find_chromium
from threegen_dagster.settings import Settings
from threegen_dagster.storage import LocalStore

from ..s3_server import PUBLIC_BUCKET
from .local_chain import LocalCommitment, make_wallet
from .state_server import ROUND, SCHEDULE, StateServer, build_state

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
REPO, COMMIT = "miner-one/threejs-gen", "0123456789abcdef0123456789abcdef01234567"
LEADER = "5HLeader"

pytestmark = pytest.mark.skipif(not checker_ready(), reason="the comp 2 checker is not installed: run "
                                "scripts/install_node_checker.sh (make test does)")


def leader_module() -> bytes:
    """The leader's output for every stem: a box, written by the same generator."""
    return generate_module(trimesh.creation.box(extents=(0.6, 0.4, 0.3))).data


def checks_passed(result) -> list[bool]:
    return [e.event_specific_data.passed for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION" and e.event_specific_data.check_name == "comp2_rules"]


def test_a_round_end_to_end(tmp_path, s3_server, monkeypatch):
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    root = tmp_path / "state"
    root.mkdir()
    with StateServer(root) as server:
        folder = build_state(root, server.url, images=8)
        # the leader revealed this cdn_url; its outputs are served beside the state
        folder.write(f"rounds/{ROUND}/submissions.json", {LEADER: {
            "repo": "lead/gen", "commit": "f" * 40, "cdn_url": f"{server.url}/leader-cdn", "revealed_at_block": 9240000,
            "round": "threejs-52"}})
        theirs = leader_module()
        for stem in folder.stems:
            folder.write(f"leader-cdn/{stem}.js", theirs)
        cdn_url = s3_server.public_url("e2e/r53")
        settings = Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox", s3_endpoint=s3_server.endpoint,
                            cdn_prefix=f"s3://{PUBLIC_BUCKET}/e2e/r53", cdn_url=cdn_url,
                            commitment={"repo": REPO, "commit": COMMIT, "reveal_blocks": 30})
        definitions = build_definitions(settings)
        round_state = RoundsResource(source=server.url, tries=1)
        resources = {**definitions.resources, "round_state": round_state}
        with dg.instance_for_test() as instance:
            # the sensor sees the round in miner_generation and requests one run per prompt
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                tick = sn17_round_sensor(context)
            assert len(tick.run_requests) == 8
            for request in tick.dynamic_partitions_requests:
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            # the runs, as the daemon launches them (their tags and run keys), executed here
            for request in tick.run_requests:
                run = definitions.resolve_job_def(request.job_name).execute_in_process(
                    instance=instance, partition_key=request.partition_key, run_config=QUIET,
                    tags={**request.tags, "dagster/run_key": request.run_key})
                assert run.success and checks_passed(run) == [True]

            # the next round's commitment (round 53 is generating: round 54's window is open)
            make_wallet(tmp_path / "wallets")
            commit = definitions.resolve_job_def("sn17_commit").execute_in_process(instance=instance, resources={
                **resources, "sn17": SN17Resource(wallet_name="miner", wallet_path=str(tmp_path / "wallets")),
                "commitment": LocalCommitment(repo=REPO, commit=COMMIT, cdn_url=cdn_url, reveal_blocks=30,
                                              block=SCHEDULE["latest_reveal_block"] + 100)}, run_config=QUIET)
            assert commit.success

            # every run of the round has ended: the publish sensor asks for the round's publication and report
            with dg.build_sensor_context(instance=instance, resources=resources) as context:
                request = sn17_round_publish_sensor(context)
            assert isinstance(request, dg.RunRequest) and request.partition_key == str(ROUND)
            assert request.run_key.startswith(f"publish:{ROUND}:8:")  # the round's 8 runs, all ended
            published = definitions.resolve_job_def("sn17_round_publish").execute_in_process(
                instance=instance, partition_key=request.partition_key, resources=resources,
                run_config={**QUIET, "ops": {"round_report": {"config": {"previews": 1}}}})
            assert published.success
            (drawn,) = published.asset_materializations_for_node("round_renders")
            # again: every output's renders exist for the same bytes, nothing is drawn (no browser page opened)
            again = dg.materialize([round_renders], partition_key=str(ROUND), instance=instance,
                                   resources=resources, run_config=QUIET)
            (redrawn,) = again.asset_materializations_for_node("round_renders")

    store = LocalStore(tmp_path / "store")
    publication = json.loads(store.read(f"rounds/{ROUND}/publication.json"))
    assert sorted(publication["verified"]) == sorted(folder.stems) and publication["failures"] == {}
    for stem, url in publication["urls"].items():
        assert url == f"{cdn_url}/{stem}.js"
        with urllib.request.urlopen(url, timeout=10) as answer:  # as a validator fetches it: unsigned
            module = answer.read()
        assert hashlib.sha256(module).hexdigest() == publication["sha256"][stem]
        assert check_module(module).ok  # what is served passes the Node check

    # the commitment: the payload exactly, sealed and signed by the wallet's hotkey, sent once
    payload = build_payload(REPO, COMMIT, cdn_url)
    (call,) = LocalCommitment.last.calls
    assert call["data"] == payload == json.dumps({"repo": REPO, "commit": COMMIT, "cdn_url": cdn_url},
                                                  separators=(",", ":"))
    report = json.loads(store.read(f"rounds/{ROUND}/report.json"))
    committed = report["next_commitment"]["committed"]
    assert committed["payload"] == payload and committed["hotkey"] == call["hotkey"]
    assert Keypair(ss58_address=committed["hotkey"]).verify(payload.encode(), base64.b64decode(committed["signature"]))

    # the report
    assert (report["prompts"], report["registered"], report["outputs"], report["passed"], report["failed"]) == (8, 8, 8, 8, 0)
    assert report["published"] == report["verified"] == 8 and report["failed_by_rule"] == {}
    assert 0 < report["window"]["used_s"] <= report["window"]["window_s"] == 1200 * 12 - 1800
    assert report["previews"]["leader_fetched"] == 1 and "submissions.json" in report["previews"]["leader_note"]
    if find_chromium() is None:
        assert report["previews"]["render_note"] == "no renders: no Chromium"
        assert drawn.metadata["note"].value.startswith("not rendered: no Chromium at /usr/bin/chromium")
        assert drawn.metadata["rendered"].value == 0
        return
    # round_renders: every passed output drawn once, beside its generation; the second run skipped them all
    names = [f"white/{v.name}.png" for v in WHITE_VIEWS] + [f"gray/{v.name}.png" for v in GRAY_VIEWS] + ["grid.png"]
    assert len(names) == 13
    assert [(m.metadata["rendered"].value, m.metadata["skipped"].value, m.metadata["failed"].value)
            for m in (drawn, redrawn)] == [(8, 0, 0), (0, 8, 0)]
    keys = {stem: state["key"] for stem, state in RoundBook(store).prompt_states(ROUND).items()}
    assert sorted(keys) == sorted(folder.stems)
    for stem, key in keys.items():
        assert sorted(i.path for i in store.list(f"generations/{key}/judge")) == sorted(
            [f"generations/{key}/judge/{name}" for name in names] + [f"generations/{key}/judge/renders.json"])
        for name in names:
            assert store.read(f"generations/{key}/judge/{name}").startswith(b"\x89PNG")
        record = json.loads(store.read(f"generations/{key}/judge/renders.json"))
        assert record["sha256"] == publication["sha256"][stem] and record["three"] == "183"
        assert f"| {key} |" in drawn.metadata["renders"].value
    assert drawn.metadata["renders"].value.count("![grid](data:image/png;base64,") == 8  # a thumbnail a row
    (stem,) = report["previews"]["rendered"]
    assert report["previews"]["rendered"][stem] == ["ours", "leader"]
    # the report drew only the leader's side: ours are round_renders'
    assert report["previews"]["ours_at"] == {stem: f"generations/{keys[stem]}/judge"}
    assert not store.exists(f"rounds/{ROUND}/renders/{stem}/ours/grid.png")
    for name in names:
        assert store.read(f"rounds/{ROUND}/renders/{stem}/leader/{name}").startswith(b"\x89PNG")
