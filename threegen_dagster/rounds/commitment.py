"""The round's on-chain commitment (``SN17-NOW.md`` section 3): ``{"repo","commit","cdn_url"}`` set with
bittensor's reveal commitment (``subtensor.set_reveal_commitment``: drand timelock-encrypted, revealed after
``blocks_until_reveal`` blocks; validators read ``Commitments.RevealedCommitments``), and only when the
reveal lands inside the round's window ``[earliest_reveal_block, latest_reveal_block]``.

Which round: while the state says ``open``, the current round (its schedule is out); in every later stage
the next one, whose window opened right after this round's ``latest_reveal_block`` and whose own latest
block is at least three days of blocks on (the finalizing rule: the next 08:00 UTC >= 3 days on) when its
schedule is not out yet. The chain is behind ``Chain``: ``BittensorChain`` is bittensor's; the payload is
built, checked, sealed (the same drand encryption the chain call does) and signed by the hotkey before the
call, and the outcome is kept in the store (``rounds/<N>/commitment.json``: no key material, only the hotkey's
address). No Dagster imports."""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ..storage import Store, StorageError
from .state import RoundState, Schedule, iso

NETUID = 17
REVEAL_BLOCKS = 360  # blocks from the call to the reveal (bittensor's default: one tempo)
MARGIN_BLOCKS = 100  # kept between the estimated reveal and the window's end (drand rounds are estimated)
MIN_ROUND_BLOCKS = 21_600  # a round's window is at least 3 days of 12 s blocks
MAX_PAYLOAD_BYTES = 1024  # the commitment field's size (about 1 KB)
NETWORK = "finney"
REPO = re.compile(r"^[\w-]+/[\w-]+$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


class CommitmentError(ValueError):
    """A commitment that cannot be made (a bad payload, outside the window); the message says why and when."""


def build_payload(repo: str, commit: str, cdn_url: str) -> str:
    """The commitment text, exactly as validators parse it: compact JSON, fields in this order."""
    if not REPO.match(repo or ""):
        raise CommitmentError(f"repo {repo!r} is not owner/name (letters, digits, _ and -; no dots)")
    if not COMMIT.match(commit or ""):
        raise CommitmentError(f"commit {commit!r} is not a full commit hash (40 lowercase hex digits)")
    if not re.match(r"^https?://[^\s/?#]+[^\s?#]*$", cdn_url or "") or len(cdn_url) > 512:
        raise CommitmentError(f"cdn_url {cdn_url[:100]!r} is not an http(s) base URL")
    text = json.dumps({"repo": repo, "commit": commit, "cdn_url": cdn_url.rstrip("/")}, separators=(",", ":"))
    if len(text.encode()) > MAX_PAYLOAD_BYTES:
        raise CommitmentError(f"the payload is {len(text.encode())} bytes; a commitment holds {MAX_PAYLOAD_BYTES}")
    return text


@dataclass(frozen=True)
class Window:
    """Round ``round``'s reveal window, in blocks; ``latest_known`` False: a lower bound (no schedule yet)."""

    round: int
    earliest: int
    latest: int
    latest_known: bool = True


def window_for(state: RoundState, schedule_of) -> Window:
    """The window the next commitment is for: ``schedule_of(n)`` is round n's Schedule or None (not out)."""
    number = state.current_round
    if state.stage == "open":
        schedule = schedule_of(number)
        if schedule is None:
            raise CommitmentError(f"round {number} is open but its schedule.json is not out")
        return Window(number, schedule.earliest_reveal_block, schedule.latest_reveal_block)
    current = schedule_of(number)
    if current is None:
        raise CommitmentError(f"round {number} is {state.stage} but its schedule.json is not out")
    following: Schedule | None = schedule_of(number + 1)
    if following is not None:
        return Window(number + 1, following.earliest_reveal_block, following.latest_reveal_block)
    earliest = current.latest_reveal_block + 1
    return Window(number + 1, earliest, earliest - 1 + MIN_ROUND_BLOCKS, latest_known=False)


@dataclass(frozen=True)
class Plan:
    ok: bool
    message: str
    reveal_block: int  # the block the reveal is expected at if committed now
    opens_at_block: int  # the first block a call may be made
    closes_after_block: int  # the last one


def plan(window: Window, block: int, *, reveal_blocks: int = REVEAL_BLOCKS, margin_blocks: int = MARGIN_BLOCKS,
         seconds_per_block: float = 12.0, now: float | None = None) -> Plan:
    """Whether a commitment made at ``block`` reveals inside ``window`` (with ``margin_blocks`` before its end),
    and if not, when it could be made (block and estimated time)."""
    now = time.time() if now is None else now
    opens, closes = window.earliest - reveal_blocks, window.latest - reveal_blocks - margin_blocks
    reveal = block + reveal_blocks
    bound = "" if window.latest_known else " (at least: its schedule is not out)"
    where = f"round {window.round}'s reveal window is blocks {window.earliest}-{window.latest}{bound}"
    if closes < opens:
        return Plan(False, f"{where}: too short for a reveal {reveal_blocks} blocks on with a "
                           f"{margin_blocks}-block margin", reveal, opens, closes)
    if block < opens:
        wait = (opens - block) * seconds_per_block
        return Plan(False, f"{where}; a commitment revealed {reveal_blocks} blocks on may be made from block "
                           f"{opens} (in {opens - block} blocks, about {iso(now + wait)}); the chain is at {block}",
                    reveal, opens, closes)
    if block > closes:
        return Plan(False, f"{where}; the last block to commit with a {reveal_blocks}-block reveal and a "
                           f"{margin_blocks}-block margin was {closes}; the chain is at {block}: wait for the next "
                           f"round's window", reveal, opens, closes)
    return Plan(True, f"{where}; committing at block {block}, revealed about block {reveal}", reveal, opens, closes)


class Chain(Protocol):
    """The two chain calls a commitment needs (``BittensorChain``: bittensor's Subtensor)."""

    def current_block(self) -> int: ...

    def set_reveal_commitment(self, wallet: Any, netuid: int, data: str, blocks_until_reveal: int,
                              block_time: float) -> tuple[bool, int]: ...


class BittensorChain:
    """The real chain: bittensor's ``Subtensor`` on ``network`` (finney, test, or a ws:// endpoint)."""

    def __init__(self, network: str = NETWORK) -> None:
        import bittensor as bt  # the sn17 extra; imported only when the chain is used

        self.subtensor = bt.Subtensor(network=network)

    def current_block(self) -> int:
        return int(self.subtensor.get_current_block())

    def set_reveal_commitment(self, wallet: Any, netuid: int, data: str, blocks_until_reveal: int,
                              block_time: float) -> tuple[bool, int]:
        ok, reveal_round = self.subtensor.set_reveal_commitment(
            wallet, netuid=netuid, data=data, blocks_until_reveal=blocks_until_reveal, block_time=block_time)
        return bool(ok), int(reveal_round)


@dataclass(frozen=True)
class Sealed:
    """The payload as the chain call seals it (drand timelock) and as the hotkey signs it, made offline."""

    payload: str
    encrypted_bytes: int
    reveal_round: int  # the drand round it opens at
    hotkey: str  # ss58 address
    signature: str  # base64 sr25519 signature of the payload by the hotkey


def seal(payload: str, hotkey: Any, *, reveal_blocks: int = REVEAL_BLOCKS, block_time: float = 12.0) -> Sealed:
    """Encrypt ``payload`` as ``set_reveal_commitment`` does (bittensor_drand, no network) and sign it with
    ``hotkey`` (a bittensor_wallet Keypair): the commitment checked as far as it goes without the chain."""
    from bittensor_drand import get_encrypted_commitment

    encrypted, reveal_round = get_encrypted_commitment(payload, reveal_blocks, block_time)
    signature = base64.b64encode(hotkey.sign(payload.encode())).decode("ascii")
    return Sealed(payload, len(encrypted), int(reveal_round), hotkey.ss58_address, signature)


def commitment_path(number: int) -> str:
    return f"rounds/{number}/commitment.json"


def load_commitment(store: Store, number: int) -> dict | None:
    try:
        return json.loads(store.read(commitment_path(number)))
    except StorageError:
        return None
    except ValueError:
        return {"error": f"{commitment_path(number)} is not JSON"}


def _record(store: Store, number: int, attempt: dict) -> dict:
    state = load_commitment(store, number) or {}
    state = {"round": number, **{k: v for k, v in state.items() if k in ("committed",)}, "last_attempt": attempt}
    if attempt["status"] == "committed":
        state["committed"] = attempt
    store.write(commitment_path(number), json.dumps(state, indent=1, sort_keys=True).encode(),
                content_type="application/json")
    return state


def commit_round(chain: Chain, wallet: Any, store: Store, window: Window, payload: str, *, netuid: int = NETUID,
                 reveal_blocks: int = REVEAL_BLOCKS, margin_blocks: int = MARGIN_BLOCKS,
                 seconds_per_block: float = 12.0, force: bool = False) -> dict:
    """Commit ``payload`` for ``window``'s round if the chain's block allows it, else CommitmentError saying
    when it opens; a commitment of the same payload already made for the round is not made again unless
    ``force``. Every attempt is recorded; the state is returned."""
    block = chain.current_block()
    attempt = {"payload": payload, "block": block, "at": iso(time.time()), "window": asdict(window),
               "reveal_blocks": reveal_blocks, "netuid": netuid}
    done = (load_commitment(store, window.round) or {}).get("committed")
    if done and done.get("payload") == payload and not force:
        return _record(store, window.round, {**attempt, "status": "already committed",
                                             "message": f"committed at block {done['block']}; not made again"})
    decision = plan(window, block, reveal_blocks=reveal_blocks, margin_blocks=margin_blocks,
                    seconds_per_block=seconds_per_block)
    attempt.update(opens_at_block=decision.opens_at_block, closes_after_block=decision.closes_after_block)
    if not decision.ok:
        _record(store, window.round, {**attempt, "status": "refused", "message": decision.message})
        raise CommitmentError(decision.message)
    sealed = seal(payload, wallet.hotkey, reveal_blocks=reveal_blocks, block_time=seconds_per_block)
    attempt.update(hotkey=sealed.hotkey, signature=sealed.signature, expected_reveal_block=decision.reveal_block)
    try:
        ok, reveal_round = chain.set_reveal_commitment(wallet, netuid, payload, reveal_blocks, seconds_per_block)
    except Exception as exc:  # noqa: BLE001 - recorded, then raised to the caller as one line
        _record(store, window.round, {**attempt, "status": "failed", "message": f"{type(exc).__name__}: {exc}"})
        raise CommitmentError(f"round {window.round}: the commitment call failed: {type(exc).__name__}: {exc}") from exc
    if not ok:
        _record(store, window.round, {**attempt, "status": "failed", "message": "the chain did not accept it"})
        raise CommitmentError(f"round {window.round}: the chain did not accept the commitment (block {block})")
    return _record(store, window.round, {**attempt, "status": "committed", "reveal_round": reveal_round,
                                         "message": decision.message})
