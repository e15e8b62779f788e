"""A store opened from the settings, with its versions (``ArtifactStore``) and its ledger: how the CLI
reaches the store without Dagster. The Dagster ``StoreResource`` opens stores with the same
``storage.open_store`` (its S3 client from dagster-aws), so both reach the same objects alike."""

from __future__ import annotations

from .artifacts import ArtifactStore
from .ledger import Ledger
from .settings import Settings
from .storage import Store, open_store


class OpenedStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._artifacts: ArtifactStore | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenedStore:
        return cls(open_store(settings.store, endpoint_url=settings.s3_endpoint, region_name=settings.s3_region))

    def store(self) -> Store:
        return self._store

    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:
            self._artifacts = ArtifactStore(self._store)
        return self._artifacts

    def ledger(self) -> Ledger:
        return Ledger(self._store)
