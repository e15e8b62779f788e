"""Typed Dagster resources: the store, one resource per model stage (keyed by the stage's name,
``backends/stages.py``), the splat settings, the SN17 validator policy and identity.

A stage resource names its backend (one of the registry's) and the backend's options; the
embedded CPU backends are the defaults (no weights, no GPU), the model backends sit behind the
same typed call.
"""


import time
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Literal

import dagster as dg
import trimesh
from PIL import Image
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr, model_validator

from .artifacts import ArtifactStore
from .backends import registry
from .backends.gpu import free_gpu_memory, peak_gpu_memory
from .backends.registry import STAGE_BACKENDS
from .backends.stages import Engine
from .codecs import stored_image
from .keys import Prompt
from .ledger import Ledger
from .settings import DEFAULT_POLICY, Settings
from .sn17.validators import ValidatorPolicy
from .splats import GaussianCloud
from .splats.mesh import mesh_to_gaussians
from .splats.validate import normalize_for_validator
from .worker import WorkerClient
from .storage import LocalStore, S3Store, Store, parse_s3_uri


class StoreResource(dg.ConfigurableResource):
    """Blobs, versions, the ledger and the catalog under one root: a directory or an S3 bucket.

    On S3 the client comes from dagster-aws ``S3Resource``: credentials from the standard AWS
    chain (environment, profile, instance role), never from this config, so they are never
    shown in the UI or written to the run's config.
    """

    uri: str = Field(description="A directory, or s3://BUCKET[/PREFIX]")
    s3: S3Resource = Field(default_factory=lambda: S3Resource(max_attempts=3),
                           description="Endpoint, region and retries for s3:// stores")
    presign_seconds: int = Field(Settings.presign_seconds, ge=60, le=604_800, description="Lifetime of the download links in metadata")
    multipart_threshold_mb: int = Field(64, ge=5, description="Objects larger than this go up as multipart uploads")

    _opened: Store | None = PrivateAttr(default=None)
    _artifacts: ArtifactStore | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(cls, settings) -> "StoreResource":
        return cls(uri=settings.store, presign_seconds=settings.presign_seconds,
                   s3=S3Resource(endpoint_url=settings.s3_endpoint, region_name=settings.s3_region, max_attempts=3))

    def store(self) -> Store:
        if self._opened is None:
            if self.uri.startswith("s3://"):
                bucket, prefix = parse_s3_uri(self.uri)
                self._opened = S3Store(self.s3.get_client(), bucket, prefix,
                                       multipart_threshold=self.multipart_threshold_mb * 2**20)
            else:
                self._opened = LocalStore(self.uri)
        return self._opened

    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:
            self._artifacts = ArtifactStore(self.store())
        return self._artifacts

    def ledger(self) -> Ledger:
        return Ledger(self.store())


class _StageResource(dg.ConfigurableResource):
    """A model stage (``backends/stages.py``): run in this process on the configured backend (loaded
    once per process), or sent to a warm GPU worker (`threegen worker`) when ``worker_url`` is set.
    The resource key is the stage's name; ``options`` are the backend's own (its class's options,
    checked by name here; unset ones keep the backend's defaults)."""

    options: dict[str, Any] = Field(default_factory=dict,
                                    description="The backend's options (e.g. flux: model, revision, steps, size, "
                                                "dtype, device); unset ones keep its defaults")
    worker_url: str = Field("", description="URL of a running `threegen worker`; empty: run in this process")
    worker_timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for the worker's answer")
    free_gpu_between_stages: bool = Field(False, description="Return cached GPU memory after the stage")

    _last: dict = PrivateAttr(default_factory=dict)
    stage: ClassVar[str] = ""
    backend: str

    @model_validator(mode="after")
    def _known_options(self) -> "_StageResource":
        known = registry.backend_class(self.stage, self.backend).option_names()
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ValueError(f"{self.stage} backend {self.backend!r} has no option {', '.join(unknown)} "
                             f"(its options: {', '.join(known) or 'none'})")
        return self

    @classmethod
    def from_settings(cls, settings, **overrides: Any) -> "_StageResource":
        backend, options = settings.models.get(cls.stage, (STAGE_BACKENDS[cls.stage][0], {}))
        return cls(backend=backend, options=options, worker_url=settings.worker_url,
                   worker_timeout_s=settings.worker_timeout_s,
                   free_gpu_between_stages=settings.free_gpu_between_stages, **overrides)

    def engine(self) -> Engine:
        return registry.engine(self.stage, self.backend, self.options)

    def _run(self, *args: Any) -> Any:
        """The stage's call (the contract's arguments), on the worker or here."""
        if self.worker_url and registry.backend_class(self.stage, self.backend).on_worker:
            result, self._last = WorkerClient(self.worker_url, self.worker_timeout_s).call(self.stage, *args)
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


def _backends(stage: str) -> Any:
    """The stage's backend names as a Literal (the UI offers them), from the registry."""
    return Literal[STAGE_BACKENDS[stage]]


class TextToImageResource(_StageResource):
    stage: ClassVar[str] = "text_to_image"
    backend: _backends("text_to_image") = Field("procedural", description="'procedural' (embedded CPU) or 'flux'")

    def generate(self, prompt: str, seed: int) -> Image.Image:
        return self._run(prompt, seed)


class BackgroundResource(_StageResource):
    stage: ClassVar[str] = "background"
    backend: _backends("background") = Field("flood_fill", description="'flood_fill' (embedded CPU) or 'rembg'")

    def remove(self, image: Image.Image) -> Image.Image:
        return self._run(image)


class ImageToMeshResource(_StageResource):
    stage: ClassVar[str] = "image_to_mesh"
    backend: _backends("image_to_mesh") = Field("inflate", description="'inflate' (embedded CPU) or 'hunyuan'")

    def mesh(self, foreground: Image.Image, seed: int) -> trimesh.Trimesh:
        return self._run(foreground, seed)


class RefineResource(_StageResource):
    stage: ClassVar[str] = "refine"
    backend: _backends("refine") = Field("decimate", description="'decimate' (embedded CPU) or 'bpt' (not installable)")

    def refine(self, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        return self._run(mesh)


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


class ScoreResource(_StageResource):
    """Pre-validation of the SPZ a validator would receive: the embedded proxy, SN17's scoring
    models in process (or on the worker), or a running SN17 validation server."""

    stage: ClassVar[str] = "score"
    backend: _backends("score") = Field(
        "proxy", description="'proxy': checks + geometric proxy, no models; 'models': OpenCLIP + DINOv2 as the "
                             "validator scores; 'validation_server': SN17's own server")
    threshold: float = Field(Settings.score_threshold, ge=0, le=1, description="Scores below this fail the blocking check")

    def score(self, spz: bytes, foreground: Image.Image | None = None,
              prompt: Prompt | None = None) -> tuple[dict, bytes]:
        """The score as JSON-ready parts (``parts``: what it is made of), and a PNG of the 16-view ring."""
        text = prompt.text if prompt is not None and prompt.kind == "text" else ""
        image = prompt.image if prompt is not None and prompt.kind == "image" else None
        out, ring = self._run(spz, foreground, text, image)
        return {**out, "threshold": self.threshold, "passed": out["score"] >= self.threshold}, ring


ScoringResource = ScoreResource  # the old name, until sn17_jobs.py moves into its room


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

    @classmethod
    def from_policy(cls, policy: ValidatorPolicy) -> "ValidatorPolicyResource":
        return cls(min_stake=policy.min_stake, blacklist=sorted(policy.manual_blacklist),
                   min_success_rate=policy.min_success_rate, max_mean_response_s=policy.max_mean_response_s,
                   window=policy.window)

    def policy(self) -> ValidatorPolicy:
        return ValidatorPolicy(min_stake=self.min_stake, manual_blacklist=frozenset(self.blacklist),
                               min_success_rate=self.min_success_rate,
                               max_mean_response_s=self.max_mean_response_s, window=self.window)


class SN17Resource(dg.ConfigurableResource):
    """The miner's identity and how tasks become generations. The wallet's keys stay in its files;
    only the names are configuration."""

    wallet_name: str = Field("default", description="bittensor wallet (coldkey) name")
    wallet_hotkey: str = Field("default", description="the miner hotkey that signs submissions")
    wallet_path: str = Field("~/.bittensor/wallets", description="folder holding the wallets")
    variants: int = Field(1, ge=1, le=8, description="seeds per task; the best-scoring one is submitted")
    max_per_tick: int = Field(8, ge=1, description="tasks the sensor turns into runs per tick")
    submit_timeout_s: float = Field(300.0, gt=0, description="SubmitResults timeout (the protocol's 300 s)")
    submit_retries: int = Field(2, ge=0, le=10, description="retries of a SubmitResults that provably never "
                                "left (connection refused); any other failure is never sent again")
    submit_retry_delay_s: float = Field(10.0, ge=0, description="seconds between those retries")

    def wallet(self):
        from bittensor_wallet import Wallet

        return Wallet(name=self.wallet_name, hotkey=self.wallet_hotkey, path=self.wallet_path)


open_image = stored_image  # the I/O manager's import, until it moves into its room


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]``."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = round(time.perf_counter() - start, 3)
