"""The round state read over HTTP from a loopback server and from a folder: the same values both ways;
every file checked against its schema, a bad one refused with one line naming it; every read bounded."""

import hashlib

import pytest

from threegen_dagster.rounds.prompts import ImageLimits, PromptFetchError, fetch_prompt
from threegen_dagster.rounds.source import FetchError, RoundSource, fetch_url
from threegen_dagster.rounds.state import PromptUrl, RoundFileError, deadline_at

from .state_server import ROUND, SCHEDULE, SEED, StateServer, build_state, prompt_png


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    with StateServer(root, delay_s=2.0) as server:
        yield build_state(root, server.url, images=8), server


@pytest.mark.parametrize("where", ["http", "folder"])
def test_every_file_reads_and_validates(served, where):
    folder, server = served
    source = RoundSource(server.url if where == "http" else str(folder.root), tries=1)
    state = source.state()
    assert (state.current_round, state.stage) == (ROUND, "miner_generation")
    assert source.schedule(ROUND).model_dump() == SCHEDULE
    assert source.seed(ROUND) == SEED
    prompts = source.prompts(ROUND)
    assert [p.stem for p in prompts] == folder.stems and len(prompts) == 8
    assert all(p.url.startswith(server.url + "/procgen/") for p in prompts)
    submission = source.submissions(ROUND).root["5F3sa2TJAWMqDhXG6jhV4N8ko9SxwGy8TpaNS1repo9ZbUne"]
    assert submission.repo == "miner-one/threejs-gen" and submission.hardware == ["4xH200"]
    assert source.leaders().root[0].weight == 0.8


BAD = [
    ("state.json", {"current_round": 53, "stage": "generating"}, r"state\.json: does not match its schema: stage: Input should be 'open'"),
    ("state.json", b"{not json", r"state\.json: not JSON"),
    ("state.json", b"\xff\xfe{}", r"state\.json: not UTF-8"),
    ("state.json", {"current_round": "53", "stage": "open"}, r"state\.json: .*current_round: Input should be a valid integer"),
    (f"rounds/{ROUND}/schedule.json", {**SCHEDULE, "latest_reveal_block": 1}, r"schedule\.json: .*blocks out of order"),
    (f"rounds/{ROUND}/seed.json", {"seed": 2**32}, r"seed\.json: .*seed: Input should be less than or equal to 4294967295"),
    (f"rounds/{ROUND}/seed.json", {"seed": -1}, r"seed\.json: .*seed: Input should be greater than or equal to 0"),
    (f"rounds/{ROUND}/prompts.txt", "https://x.org/a.png\nftp://x.org/b.png\n", r"prompts\.txt: line 2 is not an http\(s\) URL"),
    (f"rounds/{ROUND}/prompts.txt", "https://x.org/a.png\nhttps://y.org/a.png\n", r"prompts\.txt: line 2 repeats the stem 'a' of line 1"),
    (f"rounds/{ROUND}/prompts.txt", "https://x.org/../../etc.png\nhttps://x.org/a%2F..png\n", r"prompts\.txt: line 2 is not"),
    (f"rounds/{ROUND}/prompts.txt", "\n\n", r"prompts\.txt: no prompt URLs"),
    (f"rounds/{ROUND}/submissions.json", {"hk": {"repo": "a/b", "commit": "ABC", "cdn_url": "https://c"}}, r"submissions\.json: .*hk\.commit: String should match"),
    (f"rounds/{ROUND}/submissions.json", {"hk": {"repo": "a.b/c", "commit": "0" * 40, "cdn_url": "https://c"}}, r"submissions\.json: .*hk\.repo"),
    ("leader.json", {"hotkey": "x"}, r"leader\.json: does not match its schema: the document: Input should be a valid list"),
]


@pytest.mark.parametrize("where", ["http", "folder"])
@pytest.mark.parametrize("name, body, error", BAD, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD)])
def test_a_bad_file_is_one_clear_error(served, where, name, body, error):
    folder, server = served
    folder.write(name, body)
    source = RoundSource(server.url if where == "http" else str(folder.root), tries=1)
    read = {"state.json": source.state, "leader.json": source.leaders}.get(name) or {
        "schedule.json": source.schedule, "seed.json": source.seed, "prompts.txt": source.prompts,
        "submissions.json": source.submissions}[name.rsplit("/", 1)[-1]].__call__
    with pytest.raises(RoundFileError, match=error) as caught:
        read() if name in ("state.json", "leader.json") else read(ROUND)
    assert "\n" not in str(caught.value)
    if name != "state.json":  # the other files are unaffected
        assert source.state().current_round == ROUND


@pytest.mark.parametrize("where", ["http", "folder"])
def test_reads_are_bounded(served, where):
    folder, server = served
    folder.write("state.json", b" " * 5000 + b'{"current_round": 1, "stage": "open"}')
    source = RoundSource(server.url if where == "http" else str(folder.root), max_bytes=4096, tries=1)
    with pytest.raises(FetchError, match=r"state\.json: (more than 4,096|5,0\d\d) bytes.*the limit is 4,096"):
        source.state()
    with pytest.raises(FetchError, match=r"rounds/54/seed\.json: not found"):
        source.seed(54)


def test_a_folder_source_never_reads_outside_itself(served, tmp_path):
    folder, _ = served
    (tmp_path / "secret.json").write_text('{"seed": 1}')
    (folder.root / "rounds" / "9").mkdir(parents=True)
    (folder.root / "rounds" / "9" / "seed.json").symlink_to(tmp_path / "secret.json")
    with pytest.raises(FetchError, match="outside the state folder"):
        RoundSource(str(folder.root)).seed(9)


def test_timeouts_and_retries(served):
    folder, server = served
    with pytest.raises(FetchError, match=r"unreachable after 2 tries \(.*timed out"):
        fetch_url(f"{server.url}/slow/state.json", max_bytes=10_000, timeout_s=0.3, tries=2, pause_s=0.01)
    # a 503 is tried again; a 404 is not
    assert b"miner_generation" in fetch_url(f"{server.url}/flaky/state.json", max_bytes=10_000, timeout_s=5,
                                            tries=2, pause_s=0.01)
    with pytest.raises(FetchError, match="not found"):
        fetch_url(f"{server.url}/nothing.json", max_bytes=10_000, timeout_s=5, tries=3, pause_s=0.01)
    assert server.hits["/flaky/state.json"] == 2 and server.hits["/nothing.json"] == 1
    with pytest.raises(FetchError, match="not an http"):
        fetch_url(f"file://{folder.root}/state.json", max_bytes=10_000, timeout_s=1)


def test_prompt_images_are_checked_against_their_name(served):
    folder, server = served
    good = prompt_png(3)
    stem = hashlib.sha256(good).hexdigest()
    prompt = fetch_prompt(PromptUrl(stem=stem, url=folder.image(good)), ImageLimits(tries=1))
    assert prompt.kind == "image" and prompt.image == good
    # not a hash: taken as it is
    assert fetch_prompt(PromptUrl(stem="chair-01", url=folder.image(good, "chair-01")), ImageLimits(tries=1)).image == good
    # a file swapped under its name
    swapped = folder.image(prompt_png(4), stem)
    with pytest.raises(PromptFetchError, match=rf"prompt {stem}: the image's sha256 is [0-9a-f]{{64}}, not its name"):
        fetch_prompt(PromptUrl(stem=stem, url=swapped), ImageLimits(tries=1))


def test_the_deadline_follows_the_blocks():
    from threegen_dagster.rounds.state import Schedule

    schedule = Schedule(**SCHEDULE)
    assert deadline_at(schedule, 1000.0) == 1000.0 + 1200 * 12.0
    assert deadline_at(schedule, 1000.0, seconds_per_block=6.0, margin_s=600) == 1000.0 + 1200 * 6.0 - 600
