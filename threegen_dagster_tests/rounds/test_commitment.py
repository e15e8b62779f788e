"""The round commitment up to the chain call: the payload exactly as validators parse it, the reveal window in
blocks (which round, when it opens, when it closes), the payload sealed with bittensor's drand timelock and signed
by a real hotkey (a bittensor wallet made in a temp dir), and the ``sn17_commit`` job against a local chain that
records the call it gets (the real one, ``BittensorChain``, is bittensor's Subtensor: it needs the network)."""

import base64
import json

import dagster as dg
import pytest
from bittensor_wallet import Keypair

from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.resources import SN17Resource
from threegen_dagster.defs.rounds import RoundsResource
from threegen_dagster.rounds.commitment import (CommitmentError, Window, build_payload, commit_round, load_commitment,
                                                plan, seal, window_for)
from threegen_dagster.rounds.state import RoundState, Schedule
from threegen_dagster.settings import Settings
from threegen_dagster.storage import LocalStore

from .local_chain import LocalChain, LocalCommitment, make_wallet
from .state_server import ROUND, SCHEDULE, build_state

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CDN = "https://cdn.example.org/miner/r54"
PAYLOAD = '{"repo":"miner-one/threejs-gen","commit":"0123456789abcdef0123456789abcdef01234567",' \
          '"cdn_url":"https://cdn.example.org/miner/r54"}'


@pytest.fixture
def wallet(tmp_path):
    return make_wallet(tmp_path / "wallets")


def test_the_payload_is_the_spec_json_exactly():
    assert build_payload("miner-one/threejs-gen", COMMIT, CDN + "/") == PAYLOAD
    assert list(json.loads(PAYLOAD)) == ["repo", "commit", "cdn_url"]
    with pytest.raises(CommitmentError, match=r"repo 'miner\.one/gen' is not owner/name .*no dots"):
        build_payload("miner.one/gen", COMMIT, CDN)
    with pytest.raises(CommitmentError, match="not a full commit hash"):
        build_payload("a/b", COMMIT.upper(), CDN)
    with pytest.raises(CommitmentError, match="not a full commit hash"):
        build_payload("a/b", COMMIT[:7], CDN)
    with pytest.raises(CommitmentError, match="is not an http.s. base URL"):
        build_payload("a/b", COMMIT, "ftp://cdn.example.org/x")
    with pytest.raises(CommitmentError, match="a commitment holds 1024"):
        build_payload("a/" + "b" * 1000, COMMIT, CDN)


def test_which_window_by_stage():
    schedules = {ROUND: Schedule(**SCHEDULE)}
    opened = window_for(RoundState(current_round=ROUND, stage="open"), schedules.get)
    assert opened == Window(ROUND, SCHEDULE["earliest_reveal_block"], SCHEDULE["latest_reveal_block"])
    # once the round is generating, the next round's window is open: from this one's latest block on, at
    # least three days of blocks long until its schedule says
    following = window_for(RoundState(current_round=ROUND, stage="miner_generation"), schedules.get)
    assert following == Window(ROUND + 1, SCHEDULE["latest_reveal_block"] + 1,
                               SCHEDULE["latest_reveal_block"] + 21_600, latest_known=False)
    schedules[ROUND + 1] = Schedule(earliest_reveal_block=9251387, latest_reveal_block=9275000,
                                    generation_deadline_block=9276200)
    assert window_for(RoundState(current_round=ROUND, stage="duels"), schedules.get) == Window(ROUND + 1, 9251387, 9275000)
    with pytest.raises(CommitmentError, match=f"round {ROUND + 2} is open but its schedule.json is not out"):
        window_for(RoundState(current_round=ROUND + 2, stage="open"), schedules.get)


def test_the_window_in_blocks():
    window = Window(54, 10_000, 20_000)
    early = plan(window, 9_000, reveal_blocks=360, margin_blocks=100, now=1_800_000_000.0)
    assert not early.ok and early.opens_at_block == 9_640 and early.closes_after_block == 19_540
    # when it opens: the block, and the time at 12 s a block (640 blocks: 7680 s after now)
    assert "may be made from block 9640 (in 640 blocks, about 2027-01-15T10:08:00+00:00)" in early.message
    assert plan(window, 9_639, reveal_blocks=360, margin_blocks=100).ok is False
    assert plan(window, 9_640, reveal_blocks=360, margin_blocks=100).ok
    assert plan(window, 19_540, reveal_blocks=360, margin_blocks=100).ok
    late = plan(window, 19_541, reveal_blocks=360, margin_blocks=100)
    assert not late.ok and "the last block to commit with a 360-block reveal and a 100-block margin was 19540" in late.message
    short = plan(Window(54, 10_000, 10_050), 9_700, reveal_blocks=360, margin_blocks=100)
    assert not short.ok and "too short" in short.message


def test_sealed_and_signed_offline(wallet):
    sealed = seal(PAYLOAD, wallet.hotkey, reveal_blocks=10)
    later = seal(PAYLOAD, wallet.hotkey, reveal_blocks=110)
    assert sealed.hotkey == wallet.hotkey.ss58_address and sealed.encrypted_bytes > len(PAYLOAD)
    # drand quicknet: a round every 3 s, so 100 blocks of 12 s later is 400 rounds later
    assert later.reveal_round - sealed.reveal_round in (399, 400, 401)
    signature = base64.b64decode(sealed.signature)
    assert Keypair(ss58_address=sealed.hotkey).verify(PAYLOAD.encode(), signature)
    assert not Keypair(ss58_address=sealed.hotkey).verify(PAYLOAD.replace("r54", "r55").encode(), signature)


def test_commit_inside_the_window_once(wallet, tmp_path):
    store, window = LocalStore(tmp_path / "store"), Window(54, 10_000, 20_000)
    chain = LocalChain(block=12_000)
    state = commit_round(chain, wallet, store, window, PAYLOAD, reveal_blocks=30)
    (call,) = chain.calls
    assert call == {"hotkey": wallet.hotkey.ss58_address, "netuid": 17, "data": PAYLOAD, "blocks_until_reveal": 30,
                    "block_time": 12.0}
    committed = load_commitment(store, 54)["committed"]
    assert committed == state["committed"] and committed["status"] == "committed"
    assert committed["block"] == 12_000 and committed["expected_reveal_block"] == 12_030
    assert committed["reveal_round"] == 123456 and committed["payload"] == PAYLOAD
    assert Keypair(ss58_address=committed["hotkey"]).verify(PAYLOAD.encode(), base64.b64decode(committed["signature"]))
    stored = (tmp_path / "store" / "rounds" / "54" / "commitment.json").read_text()
    assert "secret" not in stored.lower() and wallet.coldkeypub.ss58_address not in stored  # the hotkey's address only
    # the same payload again: not sent again (unless forced)
    again = commit_round(chain, wallet, store, window, PAYLOAD, reveal_blocks=30)
    assert again["last_attempt"]["status"] == "already committed" and len(chain.calls) == 1
    commit_round(chain, wallet, store, window, PAYLOAD, reveal_blocks=30, force=True)
    assert len(chain.calls) == 2


def test_outside_the_window_nothing_is_sent(wallet, tmp_path):
    store, chain = LocalStore(tmp_path / "store"), LocalChain(block=5_000)
    with pytest.raises(CommitmentError, match=r"may be made from block 9970 \(in 4970 blocks, about "):
        commit_round(chain, wallet, store, Window(54, 10_000, 20_000), PAYLOAD, reveal_blocks=30)
    assert chain.calls == []
    state = load_commitment(store, 54)
    assert state["last_attempt"]["status"] == "refused" and "committed" not in state


@pytest.mark.parametrize("chain, message", [(LocalChain(12_000, accept=False), "the chain did not accept"),
                                            (LocalChain(12_000, error="ws closed"), "call failed: ConnectionError: ws closed")])
def test_a_failed_call_is_recorded(wallet, tmp_path, chain, message):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(CommitmentError, match=message):
        commit_round(chain, wallet, store, Window(54, 10_000, 20_000), PAYLOAD, reveal_blocks=30)
    assert load_commitment(store, 54)["last_attempt"]["status"] == "failed"


def _run_commit_job(tmp_path, wallet, block, **config):
    state = build_state(tmp_path / "state", "http://127.0.0.1:9", images=1)
    settings = Settings(store=str(tmp_path / "store"), inbox=tmp_path / "inbox")
    resources = {**build_definitions(settings).resources,
                 "round_state": RoundsResource(source=str(state.root)),
                 "sn17": SN17Resource(wallet_name="miner", wallet_hotkey="default", wallet_path=str(tmp_path / "wallets")),
                 "commitment": LocalCommitment(repo="miner-one/threejs-gen", commit=COMMIT, cdn_url=CDN,
                                               reveal_blocks=30, block=block)}
    job = build_definitions(settings).resolve_job_def("sn17_commit")
    with dg.instance_for_test() as instance:
        return job.execute_in_process(instance=instance, resources=resources, raise_on_error=False,
                                      run_config={"ops": {"commit_round_op": {"config": config}}} if config else None)


def test_the_commit_job(wallet, tmp_path):
    # round 53 is generating: round 54's window opened at 53's latest reveal block + 1
    result = _run_commit_job(tmp_path, wallet, SCHEDULE["latest_reveal_block"] + 500)
    assert result.success
    (call,) = LocalCommitment.last.calls
    assert call["data"] == PAYLOAD
    assert load_commitment(LocalStore(tmp_path / "store"), ROUND + 1)["committed"]["block"] == 9251886


def test_the_commit_job_refuses_before_the_window(wallet, tmp_path):
    result = _run_commit_job(tmp_path, wallet, SCHEDULE["earliest_reveal_block"] - 1000, round=ROUND)
    assert not result.success and LocalCommitment.last.calls == []
    failure = result.failure_data_for_node("commit_round_op")
    assert "round 53's reveal window is blocks 9229787-9251386; a commitment revealed 30 blocks on may be made " \
           "from block 9229757 (in 970 blocks, about" in failure.error.message
