"""A local chain for the commitment tests: it stands at a fixed block and records each reveal commitment it is
asked for (bittensor's Subtensor, ``BittensorChain``, needs the network), and the commitment resource on it."""

from threegen_dagster.defs.rounds_publish import CommitmentResource


class LocalChain:
    """A chain at a fixed block that records each reveal commitment it is asked for (and can refuse one)."""

    def __init__(self, block: int, accept: bool = True, error: str = "") -> None:
        self.block, self.accept, self.error, self.calls = block, accept, error, []

    def current_block(self) -> int:
        return self.block

    def set_reveal_commitment(self, wallet, netuid, data, blocks_until_reveal, block_time):
        self.calls.append({"hotkey": wallet.hotkey.ss58_address, "netuid": netuid, "data": data,
                           "blocks_until_reveal": blocks_until_reveal, "block_time": block_time})
        if self.error:
            raise ConnectionError(self.error)
        return self.accept, 123456


class LocalCommitment(CommitmentResource):
    """The commitment resource on a local chain at ``block`` (the job's wiring, bittensor's call left out)."""

    block: int = 0

    def chain(self):
        type(self).last = LocalChain(self.block)
        return type(self).last


def make_wallet(path, name: str = "miner"):
    """A real bittensor wallet (coldkey and hotkey, no password) in ``path``."""
    from bittensor_wallet import Wallet

    made = Wallet(name=name, hotkey="default", path=str(path))
    made.create_new_coldkey(use_password=False, overwrite=True, suppress=True)
    made.create_new_hotkey(use_password=False, overwrite=True, suppress=True)
    return made
