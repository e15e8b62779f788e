"""Typed Dagster resources: the store, one resource per model stage (keyed by the stage's name,
``backends/stages.py``), the splat settings, the SN17 validator policy and identity.

A stage resource names its backend (one of the registry's) and the backend's options; the
embedded CPU backends are the defaults (no weights, no GPU), the model backends sit behind the
same typed call.
"""


import time
from contextlib import contextmanager
from typing import Any, Iterator, Literal

import dagster as dg
import trimesh
from PIL import Image
from pydantic import Field, PrivateAttr, model_validator

from ..artifacts import ArtifactStore
from ..backends import registry
from ..backends.gpu import BackendError, free_gpu_memory, peak_gpu_memory
from ..backends.registry import STAGE_BACKENDS
from ..backends.stages import Engine
from ..keys import Prompt
from ..ledger import Ledger
from ..settings import DEFAULT_POLICY, Settings, gpu_run_tags
from ..sn17.signing import WALLET_HOTKEY, WALLET_NAME, WALLET_PATH, open_wallet
from ..sn17.validators import ValidatorPolicy
from ..splats import GaussianCloud
from ..splats.mesh import mesh_to_gaussians
from ..splats.validate import normalize_for_validator
from ..workers import WorkerPool
from ..storage import MULTIPART_THRESHOLD, S3_MAX_ATTEMPTS, Store, open_store


class S3ClientResource(dg.ConfigurableResource):
    """Endpoint, region and retries of the S3 client for ``s3://`` stores: dagster-aws's ``S3Resource``
    builds the client, imported (with boto3) only when an ``s3://`` store is opened, so a local store
    never pays for it."""

    endpoint_url: str | None = Field(None, description="An S3-compatible server's URL (empty: AWS)")
    region_name: str | None = Field(None, description="The bucket's region (empty: boto3's chain)")
    max_attempts: int = Field(S3_MAX_ATTEMPTS, ge=1, description="Attempts per call (standard retry mode)")

    def get_client(self):
        from dagster_aws.s3 import S3Resource

        return S3Resource(endpoint_url=self.endpoint_url, region_name=self.region_name,
                          max_attempts=self.max_attempts).get_client()


class StoreResource(dg.ConfigurableResource):
    """Blobs, versions, the ledger and the catalog under one root: a directory or an S3 bucket.

    On S3 the client comes from dagster-aws ``S3Resource``: credentials from the standard AWS
    chain (environment, profile, instance role), never from this config, so they are never
    shown in the UI or written to the run's config.
    """

    uri: str = Field(description="A directory, or s3://BUCKET[/PREFIX]")
    s3: S3ClientResource = Field(default_factory=S3ClientResource,
                                 description="Endpoint, region and retries for s3:// stores")
    presign_seconds: int = Field(Settings.presign_seconds, ge=60, le=604_800,
                                 description="Lifetime of the download links in metadata")
    multipart_threshold_mb: int = Field(MULTIPART_THRESHOLD // 2**20, ge=5, description="Objects larger than this go up as multipart uploads")

    _opened: Store | None = PrivateAttr(default=None)
    _artifacts: ArtifactStore | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings) -> "StoreResource":
        return cls(uri=settings.store, presign_seconds=settings.presign_seconds,
                   s3=S3ClientResource(endpoint_url=settings.s3_endpoint, region_name=settings.s3_region))

    def store(self) -> Store:
        if self._opened is None:  # the pure opener, with dagster-aws's client for s3://
            self._opened = open_store(self.uri, client=self.s3.get_client,
                                      multipart_threshold=self.multipart_threshold_mb * 2**20)
        return self._opened

    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:
            self._artifacts = ArtifactStore(self.store())
        return self._artifacts

    def ledger(self) -> Ledger:
        return Ledger(self.store())


class StageResource(dg.ConfigurableResource):
    """A model stage (``backends/stages.py``), under its name as resource key: run in this process on
    the configured backend (loaded once per process), or sent to a warm GPU worker (`threegen worker`):
    to a free one of ``workers`` (``workers.py``: a dead one is skipped and the stage sent to another).
    ``options`` are the backend's own (checked by name here; unset ones
    keep the backend's defaults)."""

    stage: str = Field(description="The stage: text_to_image, background, image_to_mesh, refine or score")
    backend: str = Field(description="One of the stage's backends (backends/registry.py); the first is the "
                                     "embedded CPU one")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="The backend's options (e.g. flux: model, revision, steps, size, "
                                                "dtype, device); unset ones keep its defaults")
    workers: list[str] = Field(default_factory=list, description="URLs of the running `threegen worker`s (one per "
                               "card); each call goes to a free one; empty: run in this process")
    worker_timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for the worker's answer")
    free_gpu_between_stages: bool = Field(False, description="Return cached GPU memory after the stage")

    _last: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> "StageResource":
        try:
            known = registry.backend_class(self.stage, self.backend).option_names()
        except BackendError as exc:
            raise ValueError(str(exc)) from None
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ValueError(f"{self.stage} backend {self.backend!r} has no option {', '.join(unknown)} "
                             f"(its options: {', '.join(known) or 'none'})")
        return self

    @classmethod
    def from_settings(cls, settings, stage: str, **overrides: Any) -> "StageResource":
        backend, options = settings.models.get(stage, (STAGE_BACKENDS[stage][0], {}))
        return cls(stage=stage, backend=backend, options=options, workers=list(settings.worker_urls),
                   worker_timeout_s=settings.worker_timeout_s,
                   free_gpu_between_stages=settings.free_gpu_between_stages, **overrides)

    def engine(self) -> Engine:
        return registry.engine(self.stage, self.backend, self.options)

    def run(self, *args: Any) -> Any:
        """The stage's call, typed by its contract (``TextToImage``: (prompt, seed) -> image, ...), on
        the worker or here."""
        if self.workers and registry.backend_class(self.stage, self.backend).on_worker:
            pool = WorkerPool(self.workers, self.worker_timeout_s, log=dg.get_dagster_logger().warning)
            result, self._last = pool.call(self.stage, *args)
            return result
        eng = self.engine()
        with peak_gpu_memory() as memory:
            result = eng(*args)
        if self.free_gpu_between_stages:
            free_gpu_memory()
        self._last = {**eng.describe(), "gpu_peak_mb": memory.get("gpu_peak_mb", 0.0), "where": "in-process"}
        return result

    def describe(self) -> dict[str, Any]:
        """What ran the last call (backend, model, revision, device, peak GPU MB, where), for metadata."""
        if self._last:
            return {k: v for k, v in self._last.items() if isinstance(v, (str, int, float, bool)) and k != "seconds"}
        return {"backend": self.backend}


def gpu_tagged(requests: list[dg.RunRequest]) -> list[dg.RunRequest]:
    """Generation run requests with the tags THREEGEN_GPU_RUN_TAGS names (deploy/run-tags.gpu.yaml:
    ``dagster-k8s/config`` asking for a GPU on a GPU node, read by K8sRunLauncher, ignored by a local
    launcher): the one place every sensor that launches generations takes them from. A tag a request
    sets itself wins; none unset."""
    tags = gpu_run_tags()
    return [r.with_replaced_attrs(tags={**tags, **r.tags}) for r in requests] if tags else list(requests)


class SplatResource(dg.ConfigurableResource):
    """How a mesh becomes the splat a validator receives."""

    gaussians: int = Field(Settings.gaussians, ge=1, le=10_000_000)
    max_extent: float = Field(1.5, gt=0, description="Largest bounding-box side after normalisation")
    frame: Literal["y_up", "y_down"] = Field("y_up", description="Output frame the validator renders in")
    remove_floaters: bool = False

    def splat(self, mesh: trimesh.Trimesh, seed: int) -> GaussianCloud:
        cloud = mesh_to_gaussians(mesh, self.gaussians, seed=seed)
        return normalize_for_validator(cloud, max_extent=self.max_extent, frame=self.frame,
                                       remove_floaters=self.remove_floaters)


class ScoreResource(StageResource):
    """The ``score`` stage, judged: pre-validation of the SPZ a validator would receive (the embedded
    proxy, SN17's scoring models in process or on the worker, or a running SN17 validation server)
    against the blocking check's threshold."""

    stage: str = "score"
    threshold: float = Field(Settings.score_threshold, ge=0, le=1, description="Scores below this fail the blocking check")

    def score(self, spz: bytes, foreground: Image.Image | None = None,
              prompt: Prompt | None = None) -> tuple[dict, bytes]:
        """The score as JSON-ready parts (``parts``: what it is made of), and a PNG of the 16-view ring."""
        text = prompt.text if prompt is not None and prompt.kind == "text" else ""
        image = prompt.image if prompt is not None and prompt.kind == "image" else None
        out, ring = self.run(spz, foreground, text, image)
        return {**out, "threshold": self.threshold, "passed": out["score"] >= self.threshold}, ring


class ValidatorPolicyResource(dg.ConfigurableResource):
    """Which SN17 validators to pull from (see ``sn17/validators.py``)."""

    min_stake: float = Field(DEFAULT_POLICY.min_stake, ge=0, description="Skip validators with less stake")
    blacklist: list[int] = Field(sorted(DEFAULT_POLICY.manual_blacklist),
                                 description="UIDs never pulled from (the CLI can add and remove)")
    min_success_rate: float = Field(DEFAULT_POLICY.min_success_rate, ge=0, le=1,
                                    description="Auto-blacklist below this success rate")
    max_mean_response_s: float = Field(DEFAULT_POLICY.max_mean_response_s, gt=0,
                                       description="Auto-blacklist above this mean response time")
    window: int = Field(DEFAULT_POLICY.window, ge=1, description="Calls the automatic blacklist looks back over")
    max_pending: int = Field(DEFAULT_POLICY.max_pending, ge=1,
                             description="Tasks from one validator not yet finished before it is not asked again")

    @classmethod
    def from_policy(cls, policy: ValidatorPolicy) -> "ValidatorPolicyResource":
        return cls(min_stake=policy.min_stake, blacklist=sorted(policy.manual_blacklist),
                   min_success_rate=policy.min_success_rate, max_mean_response_s=policy.max_mean_response_s,
                   window=policy.window, max_pending=policy.max_pending)

    def policy(self) -> ValidatorPolicy:
        return ValidatorPolicy(min_stake=self.min_stake, manual_blacklist=frozenset(self.blacklist),
                               min_success_rate=self.min_success_rate,
                               max_mean_response_s=self.max_mean_response_s, window=self.window,
                               max_pending=self.max_pending)


class SN17Resource(dg.ConfigurableResource):
    """The miner's identity and how tasks become generations. The wallet's keys stay in its files;
    only the names are configuration."""

    wallet_name: str = Field(WALLET_NAME, description="bittensor wallet (coldkey) name")
    wallet_hotkey: str = Field(WALLET_HOTKEY, description="the miner hotkey that signs submissions")
    wallet_path: str = Field(WALLET_PATH, description="folder holding the wallets")
    variants: int = Field(1, ge=1, le=8, description="seeds per task; the best-scoring one is submitted")
    max_per_tick: int = Field(8, ge=1, description="tasks the sensor turns into runs per tick")
    submit_timeout_s: float = Field(300.0, gt=0, description="SubmitResults timeout (the protocol's 300 s)")
    submit_retries: int = Field(2, ge=0, le=10, description="retries of a SubmitResults that provably never "
                                "left (connection refused); any other failure is never sent again")
    submit_retry_delay_s: float = Field(10.0, ge=0, description="seconds between those retries")

    def wallet(self):
        return open_wallet(self.wallet_name, self.wallet_hotkey, self.wallet_path)




@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]``."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = round(time.perf_counter() - start, 3)
