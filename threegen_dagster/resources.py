"""Typed Dagster resources: the store, and one resource per pipeline stage.

Each stage resource names its backend in config; today every stage has its embedded CPU
backend (no weights, no GPU). The real model backends plug in behind the same methods.
"""


import io
import time
from contextlib import contextmanager
from typing import Iterator, Literal

import dagster as dg
import trimesh
from PIL import Image
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from .artifacts import ArtifactStore
from .backends import decimate, inflate, matting, procedural
from .backends.proxy_score import score_splat
from .ledger import Ledger
from .splats import GaussianCloud
from .splats.mesh import mesh_to_gaussians
from .splats.validate import normalize_for_validator
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


class TextToImageResource(dg.ConfigurableResource):
    backend: Literal["procedural"] = Field("procedural", description="'procedural': embedded CPU renderer (not a learned model)")
    size: int = Field(512, ge=64, le=2048, description="Square output size in pixels")

    def describe(self) -> dict[str, str]:
        return {"backend": self.backend, "model": "procedural SDF renderer (not a learned model)"}

    def generate(self, prompt: str, seed: int) -> Image.Image:
        return procedural.render_prompt(prompt, seed, self.size)


class BackgroundRemovalResource(dg.ConfigurableResource):
    backend: Literal["flood_fill"] = "flood_fill"
    tolerance: float = Field(28.0, gt=0, description="RGB distance from the border colour counted as background")
    min_fraction: float = Field(0.02, ge=0, le=1, description="Keep components at least this fraction of the largest")

    def describe(self) -> dict[str, str]:
        return {"backend": self.backend, "model": "border flood fill"}

    def remove(self, image: Image.Image) -> Image.Image:
        return matting.remove_background(image, self.tolerance, self.min_fraction)


class ImageToMeshResource(dg.ConfigurableResource):
    backend: Literal["inflate"] = "inflate"
    resolution: int = Field(128, ge=16, le=512, description="Grid cells along the longer image side")
    depth_ratio: float = Field(0.6, gt=0, description="Inflation depth relative to the silhouette's thickness")

    def describe(self) -> dict[str, str]:
        return {"backend": self.backend, "model": "silhouette inflation + marching cubes"}

    def mesh(self, foreground: Image.Image, seed: int) -> trimesh.Trimesh:
        return inflate.inflate(foreground, self.resolution, self.depth_ratio)


class RefinerResource(dg.ConfigurableResource):
    backend: Literal["decimate"] = "decimate"
    target_faces: int = Field(20_000, ge=4)
    smoothing_iterations: int = Field(5, ge=0)

    def describe(self) -> dict[str, str]:
        return {"backend": self.backend, "model": "quadric decimation + Taubin smoothing"}

    def refine(self, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        return decimate.refine(mesh, self.target_faces, self.smoothing_iterations)


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


class ScoringResource(dg.ConfigurableResource):
    backend: Literal["proxy"] = Field("proxy", description="'proxy': checks + geometric proxy, no models")
    threshold: float = Field(0.6, ge=0, le=1, description="Scores below this fail the blocking check")

    def score(self, cloud: GaussianCloud, foreground: Image.Image) -> tuple[dict, bytes]:
        """The score as JSON-ready parts, and a PNG of the 16-view ring it rendered."""
        result = score_splat(cloud, foreground)
        return {**result.to_dict(), "threshold": self.threshold, "passed": result.score >= self.threshold}, result.ring_png


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image.convert("RGB")


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]``."""
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = round(time.perf_counter() - start, 3)
