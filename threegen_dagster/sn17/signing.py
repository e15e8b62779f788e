"""The SN17 submission signature: sr25519 by the miner hotkey over declaration + submit_time + prompt +
validator hotkey + miner hotkey (no separators), base64 on the wire.

Building messages needs nothing beyond the standard library; signing and verifying need
``bittensor-wallet`` (the ``sn17`` extra), imported on first use.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

DECLARATION = (
    "I, as a miner on SN17, have obtained all licenses, rights and consents required to use, reproduce, "
    "modify, display, distribute and make available my submitted results to this subnet and its end users"
)


def submission_message(submit_time_ns: int, prompt: str, validator_hotkey: str, miner_hotkey: str) -> str:
    return f"{DECLARATION}{submit_time_ns}{prompt}{validator_hotkey}{miner_hotkey}"


def sign_submission(
    keypair: Any, submit_time_ns: int, prompt: str, validator_hotkey: str, miner_hotkey: str | None = None
) -> str:
    """Base64 signature by ``keypair`` (a bittensor_wallet Keypair: the miner hotkey)."""
    miner_hotkey = miner_hotkey or keypair.ss58_address
    message = submission_message(submit_time_ns, prompt, validator_hotkey, miner_hotkey)
    return base64.b64encode(keypair.sign(message)).decode("ascii")


def verify_submission(signature_b64: str, message: str | bytes, miner_hotkey_ss58: str) -> bool:
    """What a validator checks; False for a malformed signature or address rather than an exception."""
    from bittensor_wallet import Keypair

    try:
        signature = base64.b64decode(signature_b64.encode("ascii"), validate=True)
        return bool(Keypair(ss58_address=miner_hotkey_ss58).verify(message, signature))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return False


WALLET_NAME, WALLET_HOTKEY, WALLET_PATH = "default", "default", "~/.bittensor/wallets"


def open_wallet(name: str = WALLET_NAME, hotkey: str = WALLET_HOTKEY, path: str = WALLET_PATH) -> Any:
    """The miner's bittensor wallet by name (its keys stay in its files; only names are configuration)."""
    from bittensor_wallet import Wallet

    return Wallet(name=name, hotkey=hotkey, path=path)
