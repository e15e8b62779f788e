"""FLUX.1 text-to-image through diffusers' ``FluxPipeline``: a prompt and a seed in, an RGB square out.

torch and diffusers are imported inside ``load()`` and the call, so importing this module is cheap.
No Dagster imports.
"""

from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from threegen_dagster.backends.gpu import (
    DTYPES, BackendError, free_gpu_memory, peak_gpu_memory, pick_device, require, torch_dtype,
)
from threegen_dagster.backends.stages import TextToImage, report_progress

# variant -> (steps, guidance, max_sequence_length), as black-forest-labs recommend
VARIANT_DEFAULTS = {"schnell": (4, 0.0, 256), "dev": (28, 3.5, 512)}
MULTIPLE, MIN_SIZE, MAX_SIZE = 16, 64, 2048
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_COMMIT = re.compile(r"[0-9a-f]{40}")


def round_size(n: int) -> int:
    """The image side FLUX will get: ``n`` rounded down to a multiple of 16 (VAE downscale 8 x 2x2
    latent patches). Sides that round to outside [64, 2048] are refused: below 64 FLUX gives noise,
    above 2048 it is far outside what it was trained on (about 1 megapixel) and runs out of memory."""
    rounded = n - n % MULTIPLE
    if not MIN_SIZE <= rounded <= MAX_SIZE:
        raise BackendError(f"FLUX image size {n}: use {MIN_SIZE} to {MAX_SIZE} pixels")
    return rounded


@dataclass(frozen=True)
class FluxConfig:
    model: str = "black-forest-labs/FLUX.1-schnell"  # a local diffusers folder or a hub id
    revision: str | None = None  # hub branch, tag or commit
    variant: Literal["schnell", "dev"] = "schnell"  # picks the defaults in VARIANT_DEFAULTS
    steps: int | None = None  # None -> the variant's default
    guidance: float | None = None  # ignored by schnell, whose transformer has no guidance input
    max_sequence_length: int | None = None  # T5 tokens; None -> the variant's default
    size: int = 1024  # rounded down to a multiple of 16, see round_size
    dtype: str = "bfloat16"
    device: str = "auto"
    cpu_offload: bool = False  # enable_model_cpu_offload(): one model on the GPU at a time (CUDA only)
    prompt_template: str = "{prompt}, 3D render, single object, centred, plain white background"

    def __post_init__(self) -> None:
        if self.variant not in VARIANT_DEFAULTS:
            raise BackendError(f"FLUX variant {self.variant!r}: use one of {', '.join(VARIANT_DEFAULTS)}")
        if self.dtype not in DTYPES:
            raise BackendError(f"dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.steps is not None and self.steps < 1:
            raise BackendError(f"FLUX steps {self.steps}: use at least 1")
        if self.max_sequence_length is not None and not 1 <= self.max_sequence_length <= 512:
            raise BackendError(f"FLUX max_sequence_length {self.max_sequence_length}: use 1 to 512")
        if "{prompt}" not in self.prompt_template:
            raise BackendError(f"FLUX prompt_template {self.prompt_template!r} has no {{prompt}}")
        round_size(self.size)


class FluxTextToImage(TextToImage):
    """The ``text_to_image`` backend ``flux``."""

    name, options_type = "flux", FluxConfig
    env = {"model": ("THREEGEN_FLUX_MODEL", str), "revision": ("THREEGEN_FLUX_REVISION", str),
           "variant": ("THREEGEN_FLUX_VARIANT", str), "steps": ("THREEGEN_FLUX_STEPS", int),
           "size": ("THREEGEN_FLUX_SIZE", int), "dtype": ("THREEGEN_FLUX_DTYPE", str),
           "cpu_offload": ("THREEGEN_FLUX_OFFLOAD", bool), "prompt_template": ("THREEGEN_PROMPT_TEMPLATE", str),
           "device": ("THREEGEN_DEVICE", str)}

    def __init__(self, config: FluxConfig) -> None:
        self.config = config
        steps, guidance, max_len = VARIANT_DEFAULTS[config.variant]
        self.steps = config.steps if config.steps is not None else steps
        self.guidance = config.guidance if config.guidance is not None else guidance
        self.max_sequence_length = config.max_sequence_length or max_len
        self.size = round_size(config.size)
        self.last_stats: dict[str, float] = {}  # seconds and GPU peak of the last call
        self._pipe: Any = None
        self._device: str | None = None
        self._revision: str | None = None

    @property
    def loaded(self) -> bool:
        return self._pipe is not None

    def prompt_text(self, prompt: str) -> str:
        # replace, not str.format: braces in the user's prompt stay literal
        return self.config.prompt_template.replace("{prompt}", prompt)

    def _local_folder(self) -> Path | None:
        """The model's local folder; None for a hub id; BackendError for a path that is not there."""
        model = self.config.model
        path = Path(model).expanduser()
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise BackendError(f"FLUX model folder {path} has no model_index.json; "
                                   f"is it a diffusers folder (FluxPipeline.save_pretrained)?")
            return path
        if path.is_absolute() or model.startswith((".", "~")) or not _HUB_ID.fullmatch(model):
            raise BackendError(f"FLUX model folder {path} not found; put the diffusers folder there "
                               f"or give a hub id (e.g. black-forest-labs/FLUX.1-schnell)")
        return None

    def _fetch(self, pipeline_class: Any) -> tuple[str, str | None]:
        """The folder to load and its revision: the model's own folder, or the hub snapshot in the cache."""
        folder = self._local_folder()
        if folder is not None:
            return str(folder), self.config.revision or "local"
        model, revision = self.config.model, self.config.revision
        try:
            snapshot = Path(pipeline_class.download(model, revision=revision))
        except Exception as e:
            at = f" at revision {revision!r}" if revision else ""
            raise BackendError(
                f"cannot fetch FLUX model {model!r}{at} from the Hugging Face hub "
                f"({type(e).__name__}: {e}). Offline? Download the weights first "
                f"(hf download {model}) into the cache that HF_HOME points at, or give a local "
                f"diffusers folder (there is no folder {model!r} here)") from e
        # the cache keeps snapshots under their commit hash
        return str(snapshot), snapshot.name if _COMMIT.fullmatch(snapshot.name) else revision

    def load(self) -> None:
        if self._pipe is not None:
            return
        require("diffusers")
        require("transformers")
        from diffusers import FluxPipeline

        device = pick_device(self.config.device)
        dtype = torch_dtype(self.config.dtype)
        folder, revision = self._fetch(FluxPipeline)
        try:
            pipe = FluxPipeline.from_pretrained(folder, dtype=dtype)
        except Exception as e:
            raise BackendError(f"cannot load the FLUX pipeline from {folder} "
                               f"({type(e).__name__}: {e})") from e
        if self.config.cpu_offload and device.startswith("cuda"):
            require("accelerate")
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        self._pipe, self._device, self._revision = pipe, device, revision

    def unload(self) -> None:
        self._pipe = self._device = None
        gc.collect()
        free_gpu_memory()

    def describe(self) -> dict[str, Any]:
        revision = self._revision or self.config.revision
        if revision is None and Path(self.config.model).expanduser().is_dir():
            revision = "local"
        return {"backend": "flux", "model": self.config.model, "revision": revision,
                "variant": self.config.variant, "steps": self.steps, "guidance": self.guidance,
                "max_sequence_length": self.max_sequence_length, "size": self.size,
                "dtype": self.config.dtype, "device": self._device or self.config.device,
                "cpu_offload": self.config.cpu_offload}

    def _on_step(self, pipe: Any, step: int, timestep: Any, tensors: dict) -> dict:
        """diffusers' ``callback_on_step_end``: each denoising step done, as progress."""
        report_progress(step + 1, self.steps, "denoising steps")
        return tensors

    def __call__(self, prompt: str, seed: int) -> Any:
        """A ``size`` x ``size`` RGB PIL image; the same prompt and seed give the same image.

        The starting noise comes from a CPU generator, so a seed gives the same noise on any device."""
        self.load()
        import torch

        generator = torch.Generator("cpu").manual_seed(seed)
        start = time.perf_counter()
        try:
            with peak_gpu_memory() as memory:
                out = self._pipe(prompt=self.prompt_text(prompt), height=self.size, width=self.size,
                                 num_inference_steps=self.steps, guidance_scale=self.guidance,
                                 max_sequence_length=self.max_sequence_length, generator=generator,
                                 output_type="pil", callback_on_step_end=self._on_step)
        except torch.cuda.OutOfMemoryError as e:
            raise BackendError(f"FLUX ran out of GPU memory at {self.size}px, {self.config.dtype}: "
                               f"try cpu_offload=True or a smaller size ({e})") from e
        self.last_stats = {"seconds": round(time.perf_counter() - start, 3), **memory}
        return out.images[0].convert("RGB")
