"""The duel estimate on the judges' renders: this miner's published comp 2 modules against the leader's
(served on loopback as CDNs), a tiny random DINOv3 built here for the best-view vote, and a loopback VLM asked
in both orders; identical and missing outputs decided without rendering; the Dagster asset's margin."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest
from PIL import Image

from threegen_dagster.audit.duel import judge_stem
from threegen_dagster.audit.renders import Embedder
from threegen_dagster.audit.round import (
    Fetching, RoundAuditError, duel_round, judge_regenerated, leader_cdn_url, output_fetcher, published,
    published_win_margin,
)
from threegen_dagster.rounds.comp2_llm import LlmConfig
from threegen_dagster.rounds.publish import Publication, publication_path
from threegen_dagster.rounds.source import RoundSource
from threegen_dagster.storage.local import LocalStore
from threegen_dagster_tests.rounds.state_server import ROUND, StateServer, build_state

from .conftest import BOX, SPHERE
from .vlm_server import VlmServer


@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    folder = tmp_path_factory.mktemp("dinov3")
    torch.manual_seed(0)
    config = DINOv3ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=16, image_size=64, num_register_tokens=4)
    DINOv3ViTModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture
def round_world(tmp_path):
    state = build_state(tmp_path / "state", "", images=4)
    with StateServer(tmp_path / "state") as server:
        state.base_url = server.url
        state.prompts([f"{server.url}/procgen/{s}.png" for s in state.stems])
        s0, s1, s2, s3 = state.stems
        ours = {s0: BOX, s1: BOX, s2: BOX}  # s3: we published nothing
        theirs = {s0: BOX, s1: SPHERE, s3: SPHERE}  # s2: the leader has nothing
        for stem, data in ours.items():
            state.write(f"ours/{stem}.js", data)
        for stem, data in theirs.items():
            state.write(f"leader/{stem}.js", data)
        store = LocalStore(tmp_path / "store")
        publication = Publication(ROUND, 2, f"{server.url}/ours", verified=sorted(ours),
                                  urls={s: f"{server.url}/ours/{s}.js" for s in ours},
                                  sha256={s: hashlib.sha256(d).hexdigest() for s, d in ours.items()},
                                  sizes={s: len(d) for s, d in ours.items()})
        store.write(publication_path(ROUND), publication.to_json())
        leaders = [{"hotkey": "5HLeader", "repo": "lead/gen", "commit": "f" * 40, "weight": 0.8,
                    "effective_block": 9100000, "cdn_url": f"{server.url}/leader"}]
        state.write("leader.json", leaders)
        state.write("config.json", {"win_margin": 0.3})
        yield state, server, store


def test_the_duel_against_the_leader(round_world, tiny_dino, judge_renderer):
    state, server, store = round_world
    s0, s1, s2, s3 = state.stems
    source = RoundSource(str(state.root))
    leader = leader_cdn_url(source, ROUND)
    assert leader == f"{server.url}/leader" and published_win_margin(source) == 0.3
    with VlmServer("colour") as vlm:
        config = LlmConfig(vlm.url, "glm-4.6v-flash", api_key="sk-duel", attempts=1)
        estimate = duel_round(source, store, ROUND, 2, leader, renderer=judge_renderer,
                              embedder=Embedder(tiny_dino), vlm=config, win_margin=0.3, log=lambda line: None)
    rows = {r.stem: r for r in estimate.rows}
    assert (rows[s0].outcome, rows[s0].decided_by) == ("draw", "identical")
    assert (rows[s1].outcome, rows[s1].decided_by) == ("win", "vlm") and rows[s1].vlm_delta == 4.0
    assert (rows[s2].outcome, rows[s2].decided_by) == ("win", "missing")
    assert (rows[s3].outcome, rows[s3].decided_by) == ("loss", "missing")
    assert -1 <= rows[s1].ours_best <= 1 and -1 <= rows[s1].leader_best <= 1
    # only the one stem with two different outputs was asked, in both orders, at temperature 0 with the seed
    assert len(vlm.questions) == 2 and all(q["images"] == 9 and q["temperature"] == 0 and q["seed"] == 579720909
                                           and q["auth"] == "Bearer sk-duel" for q in vlm.questions)
    assert (estimate.wins, estimate.losses, estimate.draws) == (2, 1, 1)
    assert estimate.margin == 0.25 and not estimate.would_win  # against the published 0.3
    assert estimate.to_json()["margin"] == 0.25


def test_the_audit_judges_each_repeats_regenerated_outputs_against_the_published_ones(round_world, judge_renderer):
    """The validators' audit margin: an identical output a draw, a stem not delivered a loss, a differing one
    judged on the renders (the colour VLM prefers the published blue box to a regenerated red sphere), each
    distinct pair asked once; with no judge the differing stem is a draw, counted as unjudged."""
    state, server, store = round_world
    s0, s1, s2, _ = state.stems
    source, mine = RoundSource(str(state.root)), published(store, ROUND)  # s0, s1, s2: the box
    outputs = [{s0: BOX, s1: SPHERE, s2: BOX}, {s0: BOX, s1: SPHERE}]  # repeat 2 did not deliver s2
    fetch = output_fetcher(2, Fetching())
    with VlmServer("colour") as vlm:
        margins = judge_regenerated(source, ROUND, outputs, mine, fetch, "js", renderer=judge_renderer, embedder=None,
                                    vlm=LlmConfig(vlm.url, "glm-4.6v-flash", attempts=1), log=lambda line: None)
        assert len(vlm.questions) == 2  # the one differing pair, in both orders, once for both repeats
    assert [(m.wins, m.losses, m.draws, m.judged, m.unjudged) for m in margins] == [(0, 1, 2, 1, 0), (0, 2, 1, 1, 0)]
    assert margins[0].margin == pytest.approx(-1 / 3) and margins[1].to_json()["margin"] == round(-2 / 3, 4)
    blind = judge_regenerated(source, ROUND, outputs, mine, fetch, "js", renderer=judge_renderer, embedder=None,
                              vlm=None, log=lambda line: None)
    assert [(m.wins, m.losses, m.draws, m.judged, m.unjudged) for m in blind] == [(0, 0, 3, 0, 1), (0, 1, 2, 0, 1)]


def test_orders_that_disagree_leave_it_to_the_best_view(tiny_dino):
    blue, red = Image.new("RGB", (64, 64), (40, 60, 200)), Image.new("RGB", (64, 64), (200, 40, 40))
    views = {n: blue for n in ("front_left", "front_right", "front_below", "front_above")}
    other = {n: red for n in views}
    embedder = Embedder(tiny_dino)
    with VlmServer("biased") as vlm, httpx.Client() as client:
        config = LlmConfig(vlm.url, "judge", attempts=1)
        row = judge_stem("s", blue, views, other, embedder=None, vlm=config, seed=1, client=client)
        assert (row.outcome, row.decided_by, row.note) == ("draw", "none", "the two orders disagree on every angle")
        row = judge_stem("s", blue, views, other, embedder=embedder, vlm=config, seed=1, client=client, dino_gap=0.0)
    assert row.decided_by == "best_view" and row.ours_best == pytest.approx(1.0, abs=1e-4)  # the prompt itself
    assert row.outcome == ("win" if row.ours_best > row.leader_best else "loss")
    assert np.allclose(np.linalg.norm(embedder.embed([blue, red]), axis=1), 1.0)


def test_a_judge_that_answers_prose_leaves_the_stem_to_the_best_view_or_unjudged(tiny_dino):
    """One stem the judge model cannot answer fails neither the duel nor the audit (hours of regeneration):
    the best-view vote decides it, or with no embedder it counts as unjudged."""
    blue, red = Image.new("RGB", (64, 64), (40, 60, 200)), Image.new("RGB", (64, 64), (200, 40, 40))
    views = {n: blue for n in ("front_left", "front_right", "front_below", "front_above")}
    other = {n: red for n in views}
    with VlmServer("prose") as vlm, httpx.Client() as client:
        config = LlmConfig(vlm.url, "judge", attempts=1)
        row = judge_stem("s", blue, views, other, embedder=None, vlm=config, seed=1, client=client)
        assert row.judge_failed and (row.outcome, row.decided_by) == ("draw", "none")
        assert row.note.startswith("the judge failed: the judge model's answer has no penalties for A")
        row = judge_stem("s", blue, views, other, embedder=Embedder(tiny_dino), vlm=config, seed=1, client=client,
                         dino_gap=0.0)
    assert row.judge_failed and row.decided_by == "best_view" and row.outcome == "win"


def test_no_leader_url_says_what_to_configure(round_world):
    state, server, store = round_world
    state.write("leader.json", [{"hotkey": "5HLeader", "repo": "lead/gen", "commit": "f" * 40, "weight": 0.8,
                                 "effective_block": 9100000}])
    source = RoundSource(str(state.root))
    with pytest.raises(RoundAuditError, match="no leader CDN URL .*no revealed submission of 5HLeader.*configure"):
        leader_cdn_url(source, ROUND)
    assert leader_cdn_url(source, ROUND, "https://cdn.example.org/lead/") == "https://cdn.example.org/lead"


def test_the_duel_asset_reports_the_margin(round_world, tmp_path):
    import dagster as dg

    from threegen_dagster.defs.audit import DuelResource, sn17_duel_estimate
    from threegen_dagster.defs.resources import StoreResource
    from threegen_dagster.settings import Settings
    from threegen_dagster.defs.rounds import RoundsResource
    from threegen_dagster.defs.rounds_publish import JudgeRenderResource

    state, server, store = round_world
    s0, s1, s2, s3 = state.stems
    state.write(f"leader/{s1}.js", BOX)  # every pair identical or missing: decided without rendering
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("sn17_rounds", [str(ROUND)])
        definitions = dg.Definitions(assets=[sn17_duel_estimate], resources={
            "store": StoreResource.from_settings(Settings(store=str(tmp_path / "store"), inbox=tmp_path)),
            "round_state": RoundsResource(source=str(state.root)), "duel": DuelResource(),
            "judge_render": JudgeRenderResource()})
        result = definitions.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, partition_key=str(ROUND))
        metadata = result.asset_materializations_for_node("sn17_duel_estimate")[0].metadata
    assert metadata["margin"].value == 0.0 and metadata["win_margin"].value == 0.3  # 1 win, 1 loss, 2 draws
    assert not metadata["would_win"].value and f"| {s1} | draw | identical |" in metadata["stems"].value
    assert f"| {s2} | win | missing |" in metadata["stems"].value
    assert (tmp_path / "store" / f"rounds/{ROUND}/duel_estimate.json").is_file()
