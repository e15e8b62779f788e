"""Hunyuan3D-2 shape generation (image -> untextured mesh) through Tencent's ``hy3dgen`` package.

``load()`` builds ``hy3dgen.shapegen.Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(model,
subfolder=...)``: ``model`` is a local folder, or a hub id found first under ``$HY3DGEN_MODELS``
(default ``~/.cache/hy3dgen``) as ``<HY3DGEN_MODELS>/<model>/<subfolder>``, then in the Hugging Face
cache / hub. That folder holds ``config.yaml`` and ``model.fp16.safetensors`` (or ``model.fp16.ckpt``).
Calling it runs it on an RGBA cut-out, then hy3dgen's own post-processors (FloaterRemover,
DegenerateFaceRemover, FaceReducer).

The defaults are hy3dgen's where they suit a miner: guidance 5.0, mc_level 0, box 1.01 and 8000
query points a chunk are the flow-matching pipeline's own; its 50 steps and octree 384 become 30
and 256 (the speed/quality point of Tencent's own demos); 40000 faces is FaceReducer's default.

hy3dgen's conditioner imports torchvision for four tensor transforms; where torchvision is not
installed (CPU-only torch) they come from ``_torchvision_compat`` for hy3dgen's import alone.
Needs ``pip install --no-deps hy3dgen==2.0.2`` plus einops, pymeshlab, opencv-python-headless
(hy3dgen's own requirements drag in gradio, fastapi, xatlas... that shape generation never imports).
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from .gpu import BackendError, free_gpu_memory, pick_device, require, torch_dtype
from .stages import ImageToMesh, report_progress

WEIGHT_FILES = ("model.fp16.safetensors", "model.fp16.ckpt")


@dataclass(frozen=True)
class HunyuanConfig:
    model: str = "tencent/Hunyuan3D-2"  # a local folder or a hub id
    revision: str | None = None  # a hub id's branch, tag or commit (None: hy3dgen's own download, the hub's main)
    subfolder: str = "hunyuan3d-dit-v2-0"
    steps: int = 30
    guidance: float = 5.0
    octree_resolution: int = 256
    num_chunks: int = 8000
    dtype: str = "float16"
    device: str = "auto"
    remove_floaters: bool = True
    remove_degenerate: bool = True
    max_faces: int = 40000  # 0 = keep all


def import_shapegen() -> Any:
    """``hy3dgen.shapegen``, importing it with the torchvision compat shim when needed."""
    require("hy3dgen")
    if "hy3dgen.shapegen" in sys.modules:
        return sys.modules["hy3dgen.shapegen"]
    # Import what checks for torchvision before the shim exists, so none of it ever sees the shim.
    import diffusers.utils.torch_utils  # noqa: F401
    from transformers import CLIPVisionModelWithProjection, Dinov2Model  # noqa: F401

    from ._torchvision_compat import shimmed_torchvision

    with shimmed_torchvision():
        import hy3dgen.shapegen
    return hy3dgen.shapegen


def torchvision_in_use() -> str:
    """'compat shim', or the real torchvision's version (what hy3dgen's conditioner uses)."""
    conditioner = sys.modules.get("hy3dgen.shapegen.models.conditioner")
    if conditioner is not None and getattr(conditioner.transforms, "IS_COMPAT_SHIM", False):
        return "compat shim"
    if importlib.util.find_spec("torchvision") is None:
        return "compat shim"
    try:
        return importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _local_folder(model: str, subfolder: str) -> Path | None:
    """Where hy3dgen's ``smart_load_model`` looks before the hub, if ``model`` is meant as a path."""
    base = os.environ.get("HY3DGEN_MODELS", "~/.cache/hy3dgen")
    folder = Path(os.path.expanduser(os.path.join(base, model, subfolder)))
    if folder.exists():
        return folder
    if os.path.isabs(model) or model.startswith((".", "~")) or Path(model).exists():
        return folder  # a path that does not exist, not a hub id
    return None


@contextmanager
def _scratch_tempdir() -> Iterator[None]:
    # hy3dgen's post-processors pass meshes to pymeshlab through NamedTemporaryFile(delete=False)
    # files that nothing removes; point tempfile at a folder of our own and remove it afterwards.
    # (tempfile.tempdir is process-wide: run one call at a time per process.)
    with tempfile.TemporaryDirectory(prefix="hy3dgen-") as scratch:
        saved, tempfile.tempdir = tempfile.tempdir, scratch
        try:
            yield
        finally:
            tempfile.tempdir = saved


class HunyuanShape(ImageToMesh):
    """The ``image_to_mesh`` backend ``hunyuan`` (Hunyuan3D-2 shape generation)."""

    env = {"model": ("THREEGEN_HUNYUAN_MODEL", str), "revision": ("THREEGEN_HUNYUAN_REVISION", str),
           "subfolder": ("THREEGEN_HUNYUAN_SUBFOLDER", str),
           "steps": ("THREEGEN_HUNYUAN_STEPS", int), "octree_resolution": ("THREEGEN_HUNYUAN_OCTREE", int),
           "dtype": ("THREEGEN_HUNYUAN_DTYPE", str), "device": ("THREEGEN_DEVICE", str)}
    name, options_type = "hunyuan", HunyuanConfig

    def __init__(self, config: HunyuanConfig) -> None:
        self.config = config
        self._pipeline: Any = None
        self._device: str | None = None
        self._revision: str | None = None

    @property
    def loaded(self) -> bool:
        return self._pipeline is not None

    def load(self) -> None:
        if self.loaded:
            return
        c = self.config
        shapegen = import_shapegen()
        device, dtype = pick_device(c.device), torch_dtype(c.dtype)
        model, folder, revision = c.model, _local_folder(c.model, c.subfolder), c.revision
        if folder is None and c.revision:  # a hub id at a pinned revision (hy3dgen's own download takes none)
            snapshot = self._hub_snapshot()
            model, folder, revision = str(snapshot), snapshot / c.subfolder, snapshot.name
        use_safetensors = True
        if folder is not None:
            use_safetensors = self._check_folder(folder)
        try:  # an absolute folder passes through hy3dgen's $HY3DGEN_MODELS join unchanged
            self._pipeline = shapegen.Hunyuan3DDiTFlowMatchingPipeline.from_pretrained(
                model, subfolder=c.subfolder, use_safetensors=use_safetensors, variant="fp16",
                device=device, dtype=dtype)
        except Exception as exc:
            where = folder or f"the hub id {c.model!r} (not found under $HY3DGEN_MODELS either)"
            raise BackendError(f"cannot load Hunyuan3D-2 from {where}, subfolder {c.subfolder!r}: "
                               f"{type(exc).__name__}: {exc}. {self._weights_hint()}") from exc
        self._device, self._revision = device, revision

    def _hub_snapshot(self) -> Path:
        """The hub snapshot of ``model`` at ``revision``, only the subfolder's files (the cache first)."""
        from huggingface_hub import snapshot_download

        c = self.config
        try:
            return Path(snapshot_download(c.model, revision=c.revision, allow_patterns=[f"{c.subfolder}/*"]))
        except Exception as exc:
            raise BackendError(f"cannot fetch Hunyuan3D-2 {c.model!r} at revision {c.revision!r} from the Hugging "
                               f"Face hub ({type(exc).__name__}: {exc}). Offline? Download it first "
                               f"(hf download {c.model} --revision {c.revision} --include '{c.subfolder}/*') "
                               "into the cache HF_HOME points at") from exc

    def _check_folder(self, folder: Path) -> bool:
        """Fail clearly on a missing folder or file; whether the weights are .safetensors."""
        if not (folder / "config.yaml").is_file():
            raise BackendError(f"Hunyuan3D-2 model folder {folder} has no config.yaml"
                               f"{'' if folder.is_dir() else ' (the folder does not exist)'}. "
                               f"{self._weights_hint()}")
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                return name.endswith(".safetensors")
        raise BackendError(f"Hunyuan3D-2 model folder {folder} has no weights: expected "
                           f"{' or '.join(WEIGHT_FILES)}. {self._weights_hint()}")

    def _weights_hint(self) -> str:
        c = self.config
        return (f"Put config.yaml and {WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]}) in <model>/{c.subfolder}, "
                f"e.g. `huggingface-cli download tencent/Hunyuan3D-2 {c.subfolder}/config.yaml "
                f"{c.subfolder}/{WEIGHT_FILES[0]} --local-dir <model>` and set model to that folder")

    def unload(self) -> None:
        self._pipeline = None
        gc.collect()
        free_gpu_memory()

    def describe(self) -> dict:
        c = self.config
        return {"backend": "hunyuan3d-2", "model": c.model, "revision": self._revision or c.revision,
                "subfolder": c.subfolder, "steps": c.steps,
                "guidance": c.guidance, "octree_resolution": c.octree_resolution, "dtype": c.dtype,
                "device": self._device or c.device, "torchvision": torchvision_in_use()}

    def __call__(self, image: Image.Image, seed: int):
        """An untextured trimesh.Trimesh of the object in the RGBA cut-out ``image``."""
        import torch
        import trimesh

        self.load()
        c = self.config
        if image.mode in ("RGBA", "LA") and image.getchannel("A").getbbox() is None:
            raise BackendError("the image is fully transparent: no object to make a shape of")
        generator = torch.Generator("cpu").manual_seed(seed)  # the same noise on any device
        meshes = self._pipeline(image=image, num_inference_steps=c.steps, guidance_scale=c.guidance,
                                generator=generator, octree_resolution=c.octree_resolution,
                                num_chunks=c.num_chunks, output_type="trimesh", enable_pbar=False,
                                callback=lambda step, t, out: report_progress(step + 1, c.steps, "denoising steps"),
                                callback_steps=1)
        mesh = meshes[0] if meshes else None
        if mesh is None or len(mesh.faces) == 0:
            raise BackendError(f"Hunyuan3D-2 found no surface for this image (seed {seed}: the decoded "
                               f"occupancy field never crosses the iso-level); try another seed or image")
        shapegen = sys.modules["hy3dgen.shapegen"]
        passes = [(on, step) for on, step in ((c.remove_floaters, lambda m: shapegen.FloaterRemover()(m)),
                                               (c.remove_degenerate, lambda m: shapegen.DegenerateFaceRemover()(m)),
                                               (c.max_faces, lambda m: shapegen.FaceReducer()(m, max_facenum=c.max_faces)))
                  if on]
        with _scratch_tempdir():
            for done, (_, clean) in enumerate(passes, 1):
                mesh = clean(mesh)
                report_progress(done, len(passes), "clean-up passes")
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            raise BackendError(f"Hunyuan3D-2's mesh (seed {seed}) had nothing left after removing "
                               f"floaters and degenerate faces; try another seed or image")
        return mesh
