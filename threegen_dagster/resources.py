"""Typed Dagster resources: the store, and one resource per pipeline stage.

Each stage resource names its backend in config; today every stage has its embedded CPU
backend (no weights, no GPU). The real model backends plug in behind the same methods.
"""


import time
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Literal

import dagster as dg
import trimesh
from PIL import Image
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from . import images
from .artifacts import ArtifactStore
from .backends import registry
from .backends.gpu import free_gpu_memory, peak_gpu_memory
from .backends.registry import STAGE_BACKENDS
from .backends.validator_models import CLIP_MODEL, DINO_MODEL
from .keys import Prompt
from .ledger import Ledger
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
    presign_seconds: int = Field(86_400, ge=60, le=604_800, description="Lifetime of the download links in metadata")
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
    """A model stage: run in this process on the configured backend (loaded once per process),
    or sent to a warm GPU worker (`threegen worker`) when ``worker_url`` is set."""

    worker_url: str = Field("", description="URL of a running `threegen worker`; empty: run in this process")
    worker_timeout_s: float = Field(600.0, gt=0, description="Seconds to wait for the worker's answer")
    free_gpu_between_stages: bool = Field(False, description="Return cached GPU memory after the stage")

    _last: dict = PrivateAttr(default_factory=dict)
    stage: ClassVar[str] = ""

    def options(self) -> dict[str, Any]:
        """The backend's options from this resource's fields."""
        return {}

    @classmethod
    def from_settings(cls, settings, **overrides: Any) -> "_StageResource":
        backend, options = settings.models.get(cls.stage, (STAGE_BACKENDS[cls.stage][0], {}))
        fields = {f"{backend}_{k}" if f"{backend}_{k}" in cls.model_fields else k: v for k, v in options.items()}
        return cls(backend=backend, worker_url=settings.worker_url, worker_timeout_s=settings.worker_timeout_s,
                   free_gpu_between_stages=settings.free_gpu_between_stages,
                   **{k: v for k, v in fields.items() if k in cls.model_fields}, **overrides)

    def engine(self):
        return registry.engine(self.stage, self.backend, self.options())

    def _on_worker(self) -> bool:
        return bool(self.worker_url)

    def _run(self, method: str, *args: Any) -> Any:
        if self._on_worker():
            result, self._last = getattr(WorkerClient(self.worker_url, self.worker_timeout_s), self.stage)(*args)
            return result
        eng = self.engine()
        with peak_gpu_memory() as memory:
            result = getattr(eng, method)(*args)
        if self.free_gpu_between_stages:
            free_gpu_memory()
        self._last = {**eng.describe(), "gpu_peak_mb": memory.get("gpu_peak_mb", 0.0), "where": "in-process"}
        return result

    def describe(self) -> dict[str, Any]:
        """What ran the last call (backend, model, revision, device, peak GPU MB, where), for metadata."""
        if self._last:
            return {k: v for k, v in self._last.items() if isinstance(v, (str, int, float, bool)) and k != "seconds"}
        return {"backend": self.backend}


class TextToImageResource(_StageResource):
    stage: ClassVar[str] = "text_to_image"
    backend: Literal["procedural", "flux"] = Field("procedural", description="'procedural' (embedded CPU) or 'flux'")
    size: int = Field(512, ge=64, le=2048, description="Square output size in pixels (FLUX: rounded to 16)")
    flux_model: str = Field("black-forest-labs/FLUX.1-schnell", description="FLUX diffusers folder or hub id")
    flux_revision: str | None = None
    flux_variant: Literal["schnell", "dev"] = "schnell"
    flux_steps: int | None = Field(None, description="None: 4 for schnell, 28 for dev")
    flux_dtype: str = "bfloat16"
    flux_cpu_offload: bool = False
    prompt_template: str = Field("{prompt}, 3D render, single object, centred, plain white background")
    device: str = "auto"

    def options(self) -> dict[str, Any]:
        if self.backend == "procedural":
            return {"size": self.size}
        return {"model": self.flux_model, "revision": self.flux_revision, "variant": self.flux_variant,
                "steps": self.flux_steps, "size": self.size, "dtype": self.flux_dtype,
                "cpu_offload": self.flux_cpu_offload, "prompt_template": self.prompt_template, "device": self.device}

    def generate(self, prompt: str, seed: int) -> Image.Image:
        return self._run("generate", prompt, seed)


class BackgroundRemovalResource(_StageResource):
    stage: ClassVar[str] = "background"
    backend: Literal["flood_fill", "rembg"] = "flood_fill"
    tolerance: float = Field(28.0, gt=0, description="flood_fill: RGB distance from the border colour")
    min_fraction: float = Field(0.02, ge=0, le=1, description="flood_fill: keep parts at least this of the largest")
    rembg_model: str = Field("u2netp", description="rembg session: u2net, u2netp, birefnet-general, ...")
    rembg_model_home: str | None = Field(None, description="Folder with <model>.onnx (rembg's U2NET_HOME)")

    def options(self) -> dict[str, Any]:
        if self.backend == "flood_fill":
            return {"tolerance": self.tolerance, "min_fraction": self.min_fraction}
        return {"model": self.rembg_model, "model_home": self.rembg_model_home}

    def remove(self, image: Image.Image) -> Image.Image:
        return self._run("remove", image)


class ImageToMeshResource(_StageResource):
    stage: ClassVar[str] = "image_to_mesh"
    backend: Literal["inflate", "hunyuan"] = "inflate"
    resolution: int = Field(128, ge=16, le=512, description="inflate: grid cells along the longer image side")
    depth_ratio: float = Field(0.6, gt=0, description="inflate: depth relative to the silhouette's thickness")
    hunyuan_model: str = Field("tencent/Hunyuan3D-2", description="Hunyuan3D-2 folder or hub id")
    hunyuan_subfolder: str = "hunyuan3d-dit-v2-0"
    hunyuan_steps: int | None = None
    hunyuan_octree_resolution: int | None = None
    hunyuan_dtype: str = "float16"
    device: str = "auto"

    def options(self) -> dict[str, Any]:
        if self.backend == "inflate":
            return {"resolution": self.resolution, "depth_ratio": self.depth_ratio}
        return {"model": self.hunyuan_model, "subfolder": self.hunyuan_subfolder, "steps": self.hunyuan_steps,
                "octree_resolution": self.hunyuan_octree_resolution, "dtype": self.hunyuan_dtype,
                "device": self.device}

    def mesh(self, foreground: Image.Image, seed: int) -> trimesh.Trimesh:
        return self._run("mesh", foreground, seed)


class RefinerResource(_StageResource):
    stage: ClassVar[str] = "refine"
    backend: Literal["decimate", "bpt"] = "decimate"
    target_faces: int = Field(20_000, ge=4)
    smoothing_iterations: int = Field(5, ge=0)

    def options(self) -> dict[str, Any]:
        return {"target_faces": self.target_faces, "smoothing_iterations": self.smoothing_iterations} \
            if self.backend == "decimate" else {}

    def refine(self, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        return self._run("refine", mesh)


class SplatResource(dg.ConfigurableResource):
    """How a mesh becomes the splat a validator receives."""

    gaussians: int = Field(50_000, ge=1, le=10_000_000)
    max_extent: float = Field(1.5, gt=0, description="Largest bounding-box side after normalisation")
    frame: Literal["y_up", "y_down"] = Field("y_up", description="Output frame the validator renders in")
    remove_floaters: bool = False

    def splat(self, mesh: trimesh.Trimesh, seed: int) -> GaussianCloud:
        cloud = mesh_to_gaussians(mesh, self.gaussians, seed=seed)
        return normalize_for_validator(cloud, max_extent=self.max_extent, frame=self.frame,
                                       remove_floaters=self.remove_floaters)


class ScoringResource(_StageResource):
    """Pre-validation of the SPZ a validator would receive: the embedded proxy, SN17's scoring
    models in process (or on the worker), or a running SN17 validation server."""

    stage: ClassVar[str] = "score"
    backend: Literal["proxy", "models", "validation_server"] = Field(
        "proxy", description="'proxy': checks + geometric proxy, no models; 'models': OpenCLIP + DINOv2 as the "
                             "validator scores; 'validation_server': SN17's own server")
    threshold: float = Field(0.6, ge=0, le=1, description="Scores below this fail the blocking check")
    validation_url: str = Field("http://127.0.0.1:8094", description="validation_server: SN17 validation server")
    timeout_s: float = Field(120.0, gt=0, description="validation_server: seconds to wait for its answer")
    clip_model: str = Field(CLIP_MODEL, description="models: OpenCLIP folder (open_clip_config.json + weights) or hf-hub: id")
    dino_model: str = Field(DINO_MODEL, description="models: DINOv2 transformers folder or hub id")
    quality_head: str = Field("", description="models: the validator's DINOv2 score head (.safetensors or .pt)")
    models_dtype: str = Field("float32", description="models: float32, float16 or bfloat16")
    render_size: int = Field(518, ge=32, le=2048, description="models: ring view size (the validator's is 518)")
    device: str = "auto"

    def _on_worker(self) -> bool:
        # only the scoring models need the GPU; the proxy and the validation server are called from here
        return bool(self.worker_url) and self.backend == "models"

    def options(self) -> dict[str, Any]:
        if self.backend == "validation_server":
            return {"url": self.validation_url, "timeout_s": self.timeout_s}
        if self.backend == "models":
            return {"clip_model": self.clip_model, "dino_model": self.dino_model, "quality_head": self.quality_head,
                    "dtype": self.models_dtype, "render_size": self.render_size, "device": self.device}
        return {}

    def score(self, spz: bytes, foreground: Image.Image | None = None,
              prompt: Prompt | None = None) -> tuple[dict, bytes]:
        """The score as JSON-ready parts (``parts``: what it is made of), and a PNG of the 16-view ring."""
        text = prompt.text if prompt is not None and prompt.kind == "text" else ""
        image = prompt.image if prompt is not None and prompt.kind == "image" else None
        out, ring = self._run("score", spz, foreground, text, image)
        return {**out, "threshold": self.threshold, "passed": out["score"] >= self.threshold}, ring


class ValidatorPolicyResource(dg.ConfigurableResource):
    """Which SN17 validators to pull from (see ``sn17/validators.py``)."""

    min_stake: float = Field(1000.0, ge=0, description="Skip validators with less stake")
    blacklist: list[int] = Field([180], description="UIDs never pulled from (the CLI can add and remove)")
    min_success_rate: float = Field(0.3, ge=0, le=1, description="Auto-blacklist below this success rate")
    max_mean_response_s: float = Field(120.0, gt=0, description="Auto-blacklist above this mean response time")
    window: int = Field(20, ge=1, description="Calls the automatic blacklist looks back over")

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


def open_image(data: bytes) -> Image.Image:
    """A stored PNG or an image prompt (bounded when it was registered) as 8-bit RGB, or RGBA when it
    has transparency: 16-bit greyscale scaled, palettes and colour keys kept (``images.to_rgb``)."""
    return images.to_rgb(images.decode(data, max_pixels=None))


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]``."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = round(time.perf_counter() - start, 3)
