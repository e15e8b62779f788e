"""The round sensor ticked with ``dg.build_sensor_context`` against a state folder served on loopback:
nothing before ``miner_generation``; then every prompt image fetched, checked and registered with the
round's seed and a run requested per prompt, tagged with the round, stem and deadline; bad images are
tried again, then given up, each with its own error, and never hold up the others."""

import io
import json
import time

import dagster as dg
import pytest
from PIL import Image

from threegen_dagster.defs.resources import StoreResource
from threegen_dagster.defs.rounds import RoundsResource, sn17_round_sensor
from threegen_dagster.keys import generation_key
from threegen_dagster.ledger import Ledger
from threegen_dagster.rounds.register import RoundBook
from threegen_dagster.settings import Settings
from threegen_dagster.storage import LocalStore

from .state_server import ROUND, SCHEDULE, SEED, StateServer, build_state, prompt_png

STAND_IN = dg.GraphDefinition("stand_in", node_defs=[dg.op(name="noop")(lambda: None)]).to_job()


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    with StateServer(root, delay_s=10.0) as server:
        yield build_state(root, server.url, images=8), server


def tick(instance, tmp_path, url, **options):
    """One evaluation with the project's resources (a store in tmp_path), the round state at ``url``."""
    from threegen_dagster.definitions import build_definitions

    settings = Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox")
    resources = {**build_definitions(settings).resources,
                 "round_state": RoundsResource(source=url, tries=1, **options)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return sn17_round_sensor(context)


def launch(instance, requests):
    """What the daemon does with the requests: runs carrying their tags and run keys."""
    for request in requests:
        instance.create_run_for_job(STAND_IN, tags={**request.tags, "dagster/run_key": request.run_key})


def test_nothing_happens_before_miner_generation(served, instance, tmp_path):
    folder, server = served
    for stage in ("open", "downloading", "paused"):
        folder.stage(stage)
        result = tick(instance, tmp_path, server.url)
        assert isinstance(result, dg.SkipReason) and f"round {ROUND} is {stage}" in result.skip_message
    assert not any(path.startswith("/procgen/") for path in server.hits)  # no image fetched


def test_a_round_in_miner_generation_launches_every_prompt(served, instance, tmp_path):
    folder, server = served
    before = time.time()
    result = tick(instance, tmp_path, server.url, competition=2)
    assert len(result.run_requests) == 8
    record = json.loads((tmp_path / "store" / "rounds" / str(ROUND) / "round.json").read_text())
    assert before <= record["seen_at"] <= time.time() and record["seed"] == SEED
    # the deadline: 1200 blocks of 12 s after the round was seen, less the announcement margin
    assert record["deadline_at"] == pytest.approx(record["seen_at"] + 1200 * 12.0 - 1800.0)
    ledger = Ledger(LocalStore(tmp_path / "store"))
    for request, stem in zip(sorted(result.run_requests, key=lambda r: r.tags["threegen/stem"]), sorted(folder.stems)):
        image = (folder.root / "procgen" / f"{stem}.png").read_bytes()
        entry = ledger.get(request.partition_key)
        assert entry.seed == SEED and entry.image_sha256 == stem and entry.source == "sn17-round"
        assert ledger.prompt(entry.key).image == image
        assert request.job_name == "sn17_comp2" and request.run_key == f"round:{ROUND}:{stem}"
        assert request.tags["threegen/round"] == str(ROUND) and request.tags["threegen/stem"] == stem
        assert request.tags["threegen/round_deadline"] == record["deadline"]
        assert request.tags["threegen/round_deadline_block"] == str(SCHEDULE["generation_deadline_block"])
    keys = {r.partition_key for r in result.run_requests}
    assert set(result.dynamic_partitions_requests[1].partition_keys) == keys
    assert result.dynamic_partitions_requests[0].partition_keys == [str(ROUND)]
    (event,) = result.asset_events
    assert event.partition == str(ROUND) and event.metadata["registered"].value == 8
    assert event.metadata["deadline"].value == record["deadline"]

    # the daemon launches them; the next tick requests nothing again and fetches no image again
    launch(instance, result.run_requests)
    fetched = sum(n for path, n in server.hits.items() if path.startswith("/procgen/"))
    again = tick(instance, tmp_path, server.url, competition=2)
    assert again.run_requests == [] and again.asset_events == []
    assert sum(n for path, n in server.hits.items() if path.startswith("/procgen/")) == fetched
    # the deadline never moves, whoever reads the round later
    assert RoundBook(LocalStore(tmp_path / "store")).round(ROUND)["deadline_at"] == record["deadline_at"]


def test_prompts_per_tick_bounds_a_tick(served, instance, tmp_path):
    folder, server = served
    counts = []
    for _ in range(3):
        result = tick(instance, tmp_path, server.url, prompts_per_tick=3, fetch_workers=2)
        launch(instance, result.run_requests)
        counts.append(len(result.run_requests))
    assert counts == [3, 3, 2]


def test_the_profile_picks_the_job(served, instance, tmp_path):
    _, server = served
    result = tick(instance, tmp_path, server.url, competition=0)
    assert {r.job_name for r in result.run_requests} == {"sn17_comp0"}
    assert {r.tags["threegen/competition"] for r in result.run_requests} == {"0"}


def _png_header_declaring(width: int, height: int) -> bytes:
    small = io.BytesIO()
    Image.new("RGB", (width, height)).save(small, format="PNG")
    return small.getvalue()


def test_bad_images_are_given_up_alone(served, instance, tmp_path):
    folder, server = served
    good = [folder.image(prompt_png(i)) for i in range(8)]
    stem = good[0].rsplit("/", 1)[-1][:-4]
    bad = {
        "swapped": folder.image(prompt_png(99), stem="a" * 64),
        "missing": f"{server.url}/procgen/{'b' * 64}.png",
        "not-an-image": folder.image(b"<html>hello</html>", stem="not-an-image"),
        "truncated": folder.image(prompt_png(5)[:200], stem="truncated"),
        "too-many-pixels": folder.image(_png_header_declaring(4097, 4097), stem="too-many-pixels"),
        "too-slow": f"{server.url}/slow/procgen/{stem}.png".replace(stem, "too-slow"),
    }
    folder.image(prompt_png(1), stem="too-slow")
    folder.prompts(good + list(bad.values()))
    options = {"prompt_tries": 2, "image_timeout_s": 3.0, "prompts_per_tick": 64}
    first = tick(instance, tmp_path, server.url, **options)
    assert len(first.run_requests) == 8  # the good ones go on
    launch(instance, first.run_requests)
    second = tick(instance, tmp_path, server.url, **options)
    assert second.run_requests == []
    event = second.asset_events[0]
    assert event.metadata["given_up"].value == 6 and event.metadata["registered"].value == 8
    errors = event.metadata["errors"].value
    assert f"prompt {'a' * 64}: the image's sha256 is" in errors
    assert f"prompt {'b' * 64}: " in errors and "not found (HTTP 404)" in errors
    assert "prompt not-an-image: the image prompt is not a PNG, JPEG or WebP file" in errors
    assert "prompt truncated: image prompt refused: the PNG image" in errors
    assert "prompt too-many-pixels: image prompt refused: the image is 4097 x 4097" in errors
    assert "prompt too-slow: " in errors and "timed out" in errors
    states = RoundBook(LocalStore(tmp_path / "store")).prompt_states(ROUND)
    bad_stems = [url.rsplit("/", 1)[-1][:-4] for url in bad.values()]
    assert {s: states[s]["tries"] for s in bad_stems} == dict.fromkeys(bad_stems, 2)
    assert all("error" in states[s] and "key" not in states[s] for s in bad_stems)
    third = tick(instance, tmp_path, server.url, **options)  # given up: never fetched again
    assert third.run_requests == [] and third.asset_events == []


def test_a_bad_round_file_fails_the_tick_naming_it(served, instance, tmp_path):
    folder, server = served
    folder.write(f"rounds/{ROUND}/seed.json", {"seed": "many"})
    with pytest.raises(Exception, match=r"rounds/53/seed\.json: does not match its schema: seed"):
        tick(instance, tmp_path, server.url)
    folder.write("state.json", b"")
    with pytest.raises(Exception, match=r"state\.json: not JSON"):
        tick(instance, tmp_path, server.url)


def test_nothing_starts_after_the_deadline(served, instance, tmp_path):
    _, server = served
    result = tick(instance, tmp_path, server.url, seconds_per_block=0.001, margin_s=10)
    assert isinstance(result, dg.SkipReason) and "its deadline" in result.skip_message and "has passed" in result.skip_message


def test_the_key_is_the_image_and_the_round_seed(served):
    folder, _ = served
    from threegen_dagster.keys import Prompt

    image = (folder.root / "procgen" / f"{folder.stems[0]}.png").read_bytes()
    assert generation_key(Prompt.from_image(image), SEED).endswith(f"{folder.stems[0][:10]}-s{SEED}")


def test_a_requested_run_makes_the_output_and_knows_the_deadline(served, tmp_path):
    """The sensor's request, run as the daemon would run it (its job, partition and tags): the round's
    prompt goes through the embedded pipeline to the comp 1 output, whose metadata shows the deadline."""
    from threegen_dagster.definitions import build_definitions

    _, server = served
    settings = Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox", gaussians=2000)
    with dg.instance_for_test() as instance:
        request = tick(instance, tmp_path, server.url, competition=1, prompts_per_tick=1).run_requests[0]
        instance.add_dynamic_partitions("generations", [request.partition_key])
        result = build_definitions(settings).resolve_job_def(request.job_name).execute_in_process(
            instance=instance, partition_key=request.partition_key, tags=request.tags,
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}})
        assert result.success
        run = instance.get_run_by_id(result.run_id)
        assert run.tags["threegen/round"] == str(ROUND) and run.tags["threegen/stem"] == request.tags["threegen/stem"]
        (check,) = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert check.check_name == "comp1_rules" and check.passed
    meta = StoreResource.from_settings(settings).artifacts().latest(request.partition_key, "comp1_mesh").metadata
    assert meta["deadline"] == request.tags["threegen/round_deadline"] and meta["round"] == str(ROUND)
    assert 0 < meta["seconds_to_deadline"] <= 1200 * 12
