"""Fixtures shared by the SN17 tests."""

import gc

import pytest
from bittensor.utils import networking

from .local_validator import HOST, make_wallet


@pytest.fixture
def miner(tmp_path, monkeypatch):
    """The miner's wallet; the Dendrite's external-IP lookup answers loopback (no such network here)."""
    monkeypatch.setattr(networking, "get_external_ip", lambda: HOST)
    yield make_wallet(tmp_path / "wallets", "miner")
    gc.collect()
