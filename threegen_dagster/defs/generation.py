"""Room ``generation``: the generation's assets, one partition per (prompt, seed), its blocking
score check, and the ``generate`` job. Each asset loads, calls its stage's resource (keyed by the
stage's name, ``backends/stages.py``) and returns the value with metadata (timings, sizes, counts,
a small preview)."""


import base64
import io
import warnings
from contextlib import AbstractContextManager
from typing import Any

import dagster as dg
import numpy as np
import trimesh
from PIL import Image

from ..backends.stages import ProgressLog, progress_to
from ..codecs import stored_image
from ..keys import PromptError, is_readable_key
from ..ledger import Generation, UnknownGeneration
from ..splats import GaussianCloud, spz
from ..splats.ply import ply_header
from ..splats.render import preview_grid_png
from .resources import ScoreResource, SplatResource, StageResource, StoreResource, stopwatch

generations = dg.DynamicPartitionsDefinition(name="generations")
GROUP = "generation"
PREVIEW_PX = 160


def preview(png_or_image: bytes | Image.Image, size: int = PREVIEW_PX) -> dg.MetadataValue:
    """A small image for the asset page (a markdown data URI; the UI opens it with "Show Markdown")."""
    image = png_or_image if isinstance(png_or_image, Image.Image) else Image.open(io.BytesIO(png_or_image))
    thumb = image.copy()
    thumb.thumbnail((size, size))
    if thumb.mode == "RGBA":  # show cut-outs on a checkerboard so transparency is visible
        board = np.indices(thumb.size[::-1]).sum(axis=0) // 8 % 2 * 40 + 200
        base = Image.fromarray(np.dstack([board] * 3).astype(np.uint8), "RGB").convert("RGBA")
        thumb = Image.alpha_composite(base, thumb).convert("RGB")
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=True)
    return dg.MetadataValue.md(f"![preview](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")


def progress(context: dg.AssetExecutionContext, stage: str) -> AbstractContextManager:
    """What the stage's backend reports inside its call (``backends/stages.py``: denoising steps,
    chunks), as info lines in this step's log, one every tenth of the way; a stage sent to a GPU
    worker too (the worker streams them, ``worker_http``)."""
    return progress_to(ProgressLog(context.log.info, stage))


def describe(entry: Generation) -> dict[str, Any]:
    return {"prompt": entry.label, "seed": entry.seed, "prompt_kind": entry.kind}


def _entry(context: dg.AssetExecutionContext, store: StoreResource) -> Generation:
    return store.ledger().get(context.partition_key)


def _first_entry(context: dg.AssetExecutionContext, store: StoreResource) -> Generation:
    """The first stage's entry: a readable key typed into "Add partition" (``a-blue-vase-s3``) is
    registered here as the prompt its words spell; any other key the ledger lacks fails in one line."""
    key = context.partition_key
    try:
        if is_readable_key(key):
            entry, new = store.ledger().add_readable(key, source="ui")
            if new:
                context.log.info(f"registered the readable key {key}: prompt {entry.prompt!r}, seed {entry.seed}")
            return entry
        return store.ledger().get(key)
    except (PromptError, UnknownGeneration) as exc:
        raise dg.Failure(description=str(exc)) from None


@dg.asset(partitions_def=generations, group_name=GROUP, pool="gpu", io_manager_key="artifacts", kinds={"png"})
def generated_image(context: dg.AssetExecutionContext, store: StoreResource,
                    text_to_image: StageResource) -> dg.Output[Image.Image]:
    """The prompt as an image: text through the text-to-image backend, an image prompt as given."""
    entry = _first_entry(context, store)
    prompt = store.ledger().prompt(entry.key)
    with stopwatch() as t, progress(context, "text_to_image"):
        image = stored_image(prompt.image) if prompt.kind == "image" else text_to_image.run(prompt.text, entry.seed)
    backend = {"backend": "given image"} if prompt.kind == "image" else text_to_image.describe()
    return dg.Output(image, metadata={**describe(entry), **backend, "seconds": t["seconds"],
                                      "width": image.width, "height": image.height, "preview": preview(image)})


@dg.asset(partitions_def=generations, group_name=GROUP, pool="gpu", io_manager_key="artifacts", kinds={"png"})
def foreground_image(context: dg.AssetExecutionContext, store: StoreResource, background: StageResource,
                     generated_image: Image.Image) -> dg.Output[Image.Image]:
    """The object cut out of the generated image (RGBA, background transparent)."""
    with stopwatch() as t, progress(context, "background"):
        cut = background.run(generated_image)
    coverage = float((np.asarray(cut)[..., 3] >= 128).mean())
    return dg.Output(cut, metadata={**describe(_entry(context, store)), **background.describe(),
                                    "seconds": t["seconds"], "foreground_fraction": round(coverage, 4),
                                    "preview": preview(cut)})


def _mesh_metadata(mesh: trimesh.Trimesh) -> dict[str, Any]:
    return {"vertices": len(mesh.vertices), "faces": len(mesh.faces), "watertight": bool(mesh.is_watertight),
            "extent": [round(float(v), 4) for v in mesh.extents]}


@dg.asset(partitions_def=generations, group_name=GROUP, pool="gpu", io_manager_key="artifacts", kinds={"glb"})
def initial_mesh(context: dg.AssetExecutionContext, store: StoreResource, image_to_mesh: StageResource,
                 foreground_image: Image.Image) -> dg.Output[trimesh.Trimesh]:
    """A coloured mesh from the cut-out (GLB, and the PLY form beside it)."""
    entry = _entry(context, store)
    with stopwatch() as t, progress(context, "image_to_mesh"):
        mesh = image_to_mesh.run(foreground_image, entry.seed)
    return dg.Output(mesh, metadata={**describe(entry), **image_to_mesh.describe(), "seconds": t["seconds"],
                                     **_mesh_metadata(mesh)})


@dg.asset(partitions_def=generations, group_name=GROUP, pool="gpu", io_manager_key="artifacts", kinds={"glb"})
def refined_mesh(context: dg.AssetExecutionContext, store: StoreResource, refine: StageResource,
                 initial_mesh: trimesh.Trimesh) -> dg.Output[trimesh.Trimesh]:
    """The mesh made lighter and smoother, colours kept."""
    with stopwatch() as t, progress(context, "refine"):
        mesh = refine.run(initial_mesh)
    return dg.Output(mesh, metadata={**describe(_entry(context, store)), **refine.describe(),
                                     "seconds": t["seconds"], **_mesh_metadata(mesh)})


@dg.asset(partitions_def=generations, group_name=GROUP, io_manager_key="artifacts", kinds={"ply"})
def gaussian_splat(context: dg.AssetExecutionContext, store: StoreResource, splats: SplatResource,
                   refined_mesh: trimesh.Trimesh) -> dg.Output[GaussianCloud]:
    """The mesh as a 3DGS splat, centred and scaled as the validator expects (PLY pyspz reads)."""
    entry = _entry(context, store)
    with stopwatch() as t:
        cloud = splats.splat(refined_mesh, entry.seed)
    extent = cloud.positions.max(axis=0) - cloud.positions.min(axis=0)
    return dg.Output(cloud, metadata={**describe(entry), "seconds": t["seconds"], "gaussians": len(cloud),
                                      "sh_degree": cloud.sh_degree, "frame": splats.frame,
                                      "extent": [round(float(v), 4) for v in extent],
                                      "preview": preview(preview_grid_png(cloud, size=128, grid=2), size=256)})


@dg.asset(partitions_def=generations, group_name=GROUP, io_manager_key="artifacts", kinds={"spz"})
def compressed_splat(context: dg.AssetExecutionContext, store: StoreResource,
                     gaussian_splat: GaussianCloud) -> dg.Output[bytes]:
    """The splat as SN17 SPZ (what pyspz.compress makes and validators decode)."""
    with stopwatch() as t:
        data = spz.encode(gaussian_splat)
    n, k = len(gaussian_splat), gaussian_splat.sh_rest.shape[1]
    ply_bytes = len(ply_header(n, k, include_normals=False)) + n * (14 + 3 * k) * 4
    return dg.Output(data, metadata={**describe(_entry(context, store)), "seconds": t["seconds"],
                                     "gaussians": len(gaussian_splat), "spz_bytes": len(data),
                                     "ply_bytes": ply_bytes, "ratio": round(ply_bytes / len(data), 2),
                                     "base64_bytes": 4 * -(-len(data) // 3)})


SCORE_CHECK = "score_meets_threshold"


with warnings.catch_warnings():  # partitioned checks are a Dagster "preview" feature; we pin the version
    warnings.simplefilter("ignore", dg.PreviewWarning)
    SCORE_CHECK_SPEC = dg.AssetCheckSpec(SCORE_CHECK, asset="validation_score", blocking=True,
                                         partitions_def=generations,  # one verdict per generation
                                         description="Zero-score checks pass and the score reaches the threshold")


@dg.asset(partitions_def=generations, group_name=GROUP, pool="gpu", io_manager_key="artifacts", kinds={"json"},
          check_specs=[SCORE_CHECK_SPEC])
def validation_score(context: dg.AssetExecutionContext, store: StoreResource, score: ScoreResource,
                     compressed_splat: bytes, foreground_image: Image.Image):
    """The SPZ decoded as a validator would, checked, and scored (parts and kind in the JSON)."""
    with stopwatch() as t, progress(context, "score"):
        result, ring_png = score.score(compressed_splat, foreground_image,
                                         store.ledger().prompt(context.partition_key))
    result["seconds"] = t["seconds"]
    parts = {"score": result["score"], **result["parts"]}
    failures = result["checks"]["failures"]
    yield dg.Output(result, metadata={**describe(_entry(context, store)), **score.describe(), **parts,
                                      "seconds": t["seconds"],
                                      "kind": result["kind"], "threshold": result["threshold"],
                                      "passed": result["passed"], "check_failures": len(failures),
                                      "preview": preview(ring_png, size=384)})
    yield dg.AssetCheckResult(
        check_name=SCORE_CHECK,
        passed=bool(result["passed"]) and not failures,
        metadata={"score": result["score"], "threshold": result["threshold"], "kind": result["kind"],
                  "failures": "; ".join(failures) or "none"},
        description=None if result["passed"] and not failures else
        f"score {result['score']} (threshold {result['threshold']}); {'; '.join(failures) or 'checks pass'}",
    )


PIPELINE = [generated_image, foreground_image, initial_mesh, refined_mesh, gaussian_splat, compressed_splat,
            validation_score]


generate_job = dg.define_asset_job(
    "generate", selection=dg.AssetSelection.assets(*PIPELINE),
    executor_def=dg.in_process_executor,  # a generation is a chain: one process keeps models and imports warm
    description="Every stage of one generation (partition = prompt x seed)",
)
