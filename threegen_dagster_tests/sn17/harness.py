"""What the SN17 fault tests share: a miner's settings and wallet, pulling from LocalValidators with the
real puller, sensor ticks through ``dg.build_sensor_context``, and a store that counts what it is asked."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import bittensor as bt
import dagster as dg

from threegen_dagster.definitions import build_definitions
from threegen_dagster.defs.resources import StoreResource
from threegen_dagster.settings import Settings
from threegen_dagster.sn17.client import MinerClient
from threegen_dagster.sn17.puller import TaskQueue, pull_once
from threegen_dagster.sn17.validators import Neuron, ValidatorBook, ValidatorPolicy
from threegen_dagster.defs.sn17 import INDEXED
from threegen_dagster.storage import LocalStore, S3Store, parse_s3_uri

from .local_validator import HOST

POLICY = ValidatorPolicy(min_stake=0.0, manual_blacklist=frozenset())


def miner_settings(root: Path, store: str | None = None, s3_endpoint: str | None = None, **sn17) -> Settings:
    return Settings(store=store or str(root / "store"), inbox=root / "inbox", gaussians=8000, s3_endpoint=s3_endpoint,
                    s3_region="us-east-1" if s3_endpoint else None,
                    sn17={"wallet_name": "miner", "wallet_path": str(root / "wallets"), **sn17})


def neurons(validators) -> list[Neuron]:
    return [Neuron(n, v.hotkey, 1000.0, HOST, v.port) for n, v in enumerate(validators)]


def pull(settings: Settings, miner, validators) -> dict:
    """One round of the real puller against ``validators``, queueing into the settings' store."""
    store = StoreResource.from_settings(settings).store()

    async def main():
        async with MinerClient(miner, ValidatorBook(store), POLICY, dendrite=bt.Dendrite(wallet=miner)) as client:
            return await pull_once(client, neurons(validators), TaskQueue(store))

    return asyncio.run(main())


def resources(settings: Settings, store: StoreResource | None = None) -> dict:
    definitions = build_definitions(settings)
    return {"store": store or definitions.resources["store"], "sn17": definitions.resources["sn17"]}


def tick(sensor, instance, resources: dict, cursor: str | None = INDEXED):
    """One evaluation of ``sensor`` as the daemon makes it; its run requests (a list either way)."""
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as context:
        result = sensor(context)
    return result.run_requests if isinstance(result, dg.SensorResult) else list(result or [])


def queue_of(settings: Settings) -> TaskQueue:
    return TaskQueue(StoreResource.from_settings(settings).store())


def write_old_record(store, task_id: str, prompt: str, state: str = "pulled", pulled_at: float | None = None) -> str:
    """A task record as the puller before the active index wrote it: under its raw id, with no marker;
    pulled just now unless ``pulled_at`` says otherwise (past the deadline, a pulled task expires)."""
    path = f"sn17/tasks/{task_id}.json"
    store.write(path, json.dumps({
        "task_id": task_id, "type": "text", "prompt": prompt, "validator_uid": 0, "validator_hotkey": "5Old",
        "validator_ip": HOST, "validator_port": 1, "validation_threshold": 0.6,
        "pulled_at": time.time() if pulled_at is None else pulled_at, "state": state, "reason": ""}).encode())
    return path


# --- a store that records what it is asked (a real LocalStore or S3Store underneath)
CALLS: list[tuple[str, str]] = []  # (operation, path or prefix); module-level: Dagster may copy the resource


class _Counting:
    """Records each outermost call (S3Store.read calls read_tagged: one request, counted once)."""

    _depth = 0

    def _count(self, operation: str, relative: str, call):
        if self._depth == 0:
            CALLS.append((operation, relative))
        self._depth += 1
        try:
            return call()
        finally:
            self._depth -= 1

    def read_tagged(self, relative, max_bytes=None):
        return self._count("read", relative, lambda: super(_Counting, self).read_tagged(relative, max_bytes))

    def read(self, relative, max_bytes=None):
        return self._count("read", relative, lambda: super(_Counting, self).read(relative, max_bytes))

    def stat(self, relative):
        return self._count("stat", relative, lambda: super(_Counting, self).stat(relative))

    def list(self, prefix):
        return self._count("list", prefix, lambda: super(_Counting, self).list(prefix))


class CountingLocalStore(_Counting, LocalStore):
    pass


class CountingS3Store(_Counting, S3Store):
    pass


class CountingStoreResource(StoreResource):
    def store(self):
        if self.uri.startswith("s3://"):
            bucket, prefix = parse_s3_uri(self.uri)
            return CountingS3Store(self.s3.get_client(), bucket, prefix)
        return CountingLocalStore(self.uri)
