"""SN17's validator score computed here: OpenCLIP alignment, the DINOv2 quality head, view consistency.

What the legacy validation server does with a submission (``shared/SN17.md`` section 4), in process:

1. load the cloud as it does (:func:`~threegen_dagster.splats.validate.as_validator_loads`) and
   apply its zero-score checks;
2. render its ring: 16 views at elevation 15 degrees, radius 2.5, vertical FOV 49.1 degrees,
   518 x 518, white background, DC colour only;
3. **alignment**: the OpenCLIP (convnext_large_d) cosine between each view and the prompt (its
   text; for an image task, the prompt image), divided by 0.35 and clipped to [0, 1], then the
   geometric mean over views;
4. **quality**: DINOv2-small's CLS feature through the validator's trained score head, the sigmoid
   of one logit per view, averaged over views (inputs resized to 518, ImageNet mean and std);
5. **consistency**: SSIM between neighbouring views.

``final = 0 if alignment < 0.3 else 0.75 quality + 0.2 alignment + 0.025 sigmoid(35 (ssim - 0.83))
+ 0.025 lpips sigmoid(30 (lpips - 0.7))``. LPIPS is not computed: it needs AlexNet or VGG weights
through torchvision. Its term is at most 3e-5 for any LPIPS up to 0.5 (neighbouring views of one
object sit well below that) and 0.009 at 0.7, so it is reported as ``None`` and counted as 0.

The scoring arithmetic (:func:`alignment_from_cosines`, :func:`final_score`) needs no models;
:class:`ValidatorModels` loads them (torch, open_clip, transformers are imported in ``load()``).
open_clip comes from a local folder holding ``open_clip_config.json`` and its weights (the layout
of ``laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg`` on the hub) or an ``hf-hub:`` id;
DINOv2 from a transformers folder or hub id; the score head from a safetensors or torch file with
``score_head.weight`` and ``score_head.bias`` (and, optionally, ``backbone.*`` weights of a
fine-tuned backbone in transformers' naming). No Dagster imports.
"""

from __future__ import annotations

import io
import math
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .. import images
from ..splats.cloud import GaussianCloud
from ..splats.render import VALIDATOR_RESOLUTION, VALIDATOR_VIEWS, preview_grid, render_views, validator_cameras
from ..splats.validate import as_validator_loads, check_for_validator
from .gpu import BackendError, peak_gpu_memory, pick_device, require, torch_dtype
from .proxy_score import ring_consistency
from .stages import Score, report_progress

CLIP_MODEL = "hf-hub:laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg"
DINO_MODEL = "facebook/dinov2-small"
ALIGNMENT_SCALE = 0.35
ALIGNMENT_FLOOR = 0.3
QUALITY_SIZE = 518
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def alignment_from_cosines(cosines: np.ndarray | list[float]) -> float:
    """Each view's cosine / 0.35, clipped to [0, 1]; their geometric mean (0 if any view is at 0)."""
    per_view = np.clip(np.asarray(cosines, np.float64) / ALIGNMENT_SCALE, 0.0, 1.0)
    if per_view.size == 0:
        raise ValueError("no views to align")
    if (per_view <= 0.0).any():
        return 0.0
    return float(np.exp(np.log(per_view).mean()))


def final_score(alignment: float, quality: float, ssim: float, lpips: float | None = None) -> float:
    """The validator's combination of its parts; 0 below the alignment floor."""
    if alignment < ALIGNMENT_FLOOR:
        return 0.0
    score = 0.75 * quality + 0.2 * alignment + 0.025 * _sigmoid(35.0 * (ssim - 0.83))
    if lpips is not None:
        score += 0.025 * lpips * _sigmoid(30.0 * (lpips - 0.7))
    return float(score)


@dataclass(frozen=True)
class ModelScore:
    score: float
    alignment: float
    quality: float
    ssim: float
    lpips: float | None
    view_cosine: list[float]
    """Each view's OpenCLIP cosine with the prompt (alignment divides it by 0.35 and clips to [0, 1])."""
    view_quality: list[float]
    checks: dict
    kind: str = "models"
    note: str = ("SN17 validator scoring in process: OpenCLIP alignment, DINOv2 quality head, SSIM "
                 "across the 16-view ring; LPIPS not computed (its term is counted as 0)")
    ring_png: bytes = field(default=b"", repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("ring_png")
        return out


@dataclass(frozen=True)
class ValidatorModelsConfig:
    clip_model: str = CLIP_MODEL  # a local open_clip folder (open_clip_config.json + weights) or hf-hub:ORG/NAME
    dino_model: str = DINO_MODEL  # a local transformers folder or hub id
    quality_head: str = ""  # the validator's score head: .safetensors / .pt with score_head.weight, score_head.bias
    device: str = "auto"
    dtype: str = "float32"
    views: int = VALIDATOR_VIEWS
    render_size: int = VALIDATOR_RESOLUTION

    def __post_init__(self) -> None:
        if not self.quality_head:
            raise BackendError("the 'models' scorer needs the validator's DINOv2 score head: set "
                               "THREEGEN_QUALITY_HEAD to its .safetensors (or .pt) file")
        if self.views < 2:
            raise BackendError(f"views must be at least 2 (consistency compares neighbours), got {self.views}")
        if not 32 <= self.render_size <= 2048:
            raise BackendError(f"render_size must be within 32..2048, got {self.render_size}")


class ValidatorModels(Score):
    name, options_type = "models", ValidatorModelsConfig
    env = {"clip_model": ("THREEGEN_CLIP_MODEL", str), "dino_model": ("THREEGEN_DINO_MODEL", str),
           "quality_head": ("THREEGEN_QUALITY_HEAD", str), "dtype": ("THREEGEN_SCORER_DTYPE", str),
           "render_size": ("THREEGEN_SCORER_RENDER_SIZE", int), "device": ("THREEGEN_DEVICE", str)}

    def __init__(self, config: ValidatorModelsConfig) -> None:
        self.config = config
        self._clip: Any = None
        self._tokenizer: Any = None
        self._clip_pre: dict[str, Any] = {}
        self._dino: Any = None
        self._head: Any = None
        self._device: str | None = None
        self._dtype: Any = None
        self._lock = threading.Lock()
        self.last_stats: dict[str, float] = {}

    @property
    def loaded(self) -> bool:
        return self._clip is not None and self._dino is not None

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        with self._lock:
            if self.loaded:
                return
            require("torch")
            require("transformers")
            require("open_clip")
            require("timm")
            self._device = pick_device(self.config.device)
            self._dtype = torch_dtype(self.config.dtype)
            if self._clip is None:  # embed_images may have loaded it alone
                self._load_clip()
            self._load_dino()

    def embed_images(self, images: list[Image.Image], batch: int = 16) -> np.ndarray:
        """OpenCLIP image embeddings, L2-normalised, one row per image (transparency over white);
        for image search. Loads the CLIP model alone if nothing is loaded yet."""
        import torch

        with self._lock:
            if self._clip is None:
                require("open_clip")
                self._device, self._dtype = pick_device(self.config.device), torch_dtype(self.config.dtype)
                self._load_clip()
        rows = []
        with torch.inference_mode():
            for start in range(0, len(images), batch):
                pixels = torch.stack([self._clip_pixels(_rgb_over_white(im)) for im in images[start:start + batch]])
                found = self._clip.encode_image(pixels.to(self._device, self._dtype)).float()
                rows.append(torch.nn.functional.normalize(found, dim=-1).cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)

    def unload(self) -> None:
        self._clip = self._tokenizer = self._dino = self._head = None
        self._clip_pre = {}

    def _clip_name(self) -> str:
        model = self.config.clip_model
        if model.startswith("hf-hub:"):
            return model
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise BackendError(f"OpenCLIP model folder {folder} not found; download "
                               f"laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg there, or give an "
                               f"hf-hub: id")
        if not (folder / "open_clip_config.json").is_file():
            raise BackendError(f"OpenCLIP model folder {folder} has no open_clip_config.json")
        if not any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pth")):
            raise BackendError(f"OpenCLIP model folder {folder} has no weights (*.safetensors, *.bin or *.pth)")
        return f"local-dir:{folder}"

    def _load_clip(self) -> None:
        open_clip = import_open_clip()
        name = self._clip_name()
        try:
            model = open_clip.create_model(name, device=self._device, require_pretrained=True)
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as e:
            raise BackendError(f"cannot load OpenCLIP {self.config.clip_model} ({type(e).__name__}: {e}); "
                               f"offline? give a local folder") from e
        self._clip = model.to(self._dtype).eval()
        self._tokenizer = tokenizer
        pre = getattr(model.visual, "preprocess_cfg", {}) or {}
        size = pre.get("size", model.visual.image_size)
        self._clip_pre = {"size": tuple(size) if isinstance(size, (tuple, list)) else (size, size),
                          "mean": tuple(pre.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                          "std": tuple(pre.get("std", (0.26862954, 0.26130258, 0.27577711))),
                          "interpolation": pre.get("interpolation", "bicubic")}

    def _load_dino(self) -> None:
        import torch
        from transformers import Dinov2Model

        model = self.config.dino_model
        path = Path(model).expanduser()
        if not path.is_dir() and (path.is_absolute() or model.startswith((".", "~")) or not _HUB_ID.fullmatch(model)):
            raise BackendError(f"DINOv2 model folder {path} not found; put facebook/dinov2-small there or "
                               f"give a hub id")
        try:
            backbone = Dinov2Model.from_pretrained(str(path) if path.is_dir() else model)
        except Exception as e:
            raise BackendError(f"cannot load DINOv2 {model} ({type(e).__name__}: {e}); offline? give a "
                               f"local folder") from e
        head = torch.nn.Linear(backbone.config.hidden_size, 1)
        self._load_head(backbone, head)
        self._dino = backbone.to(self._device, self._dtype).eval()
        self._head = head.to(self._device, self._dtype).eval()

    def _load_head(self, backbone: Any, head: Any) -> None:
        import torch

        path = Path(self.config.quality_head).expanduser()
        if not path.is_file():
            raise BackendError(f"DINOv2 score head {path} not found (THREEGEN_QUALITY_HEAD)")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise BackendError(f"cannot read the score head {path} ({type(e).__name__}: {e})") from e
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or "score_head.weight" not in state or "score_head.bias" not in state:
            raise BackendError(f"{path} is not a score head: it has no score_head.weight and score_head.bias")
        hidden = backbone.config.hidden_size
        if tuple(state["score_head.weight"].shape) != (1, hidden) or tuple(state["score_head.bias"].shape) != (1,):
            raise BackendError(f"score head {path} is for features of width "
                               f"{tuple(state['score_head.weight'].shape)[-1]}, but {self.config.dino_model} "
                               f"gives {hidden}: use the DINOv2 variant it was trained on")
        head.load_state_dict({"weight": state["score_head.weight"], "bias": state["score_head.bias"]})
        tuned = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        if tuned:
            result = backbone.load_state_dict(tuned, strict=False)
            if result.unexpected_keys:
                raise BackendError(f"score head {path} carries backbone weights this DINOv2 does not have "
                                   f"(e.g. {result.unexpected_keys[0]}); is it in torch-hub naming? "
                                   f"convert it to transformers' Dinov2Model names")

    def describe(self) -> dict[str, Any]:
        return {"backend": "models", "model": f"{self.config.clip_model} + {self.config.dino_model}",
                "quality_head": Path(self.config.quality_head).name, "device": self._device or self.config.device,
                "dtype": self.config.dtype, "views": self.config.views, "render_size": self.config.render_size}

    # ------------------------------------------------------------------ scoring

    def __call__(self, spz: bytes, foreground: Image.Image | None = None, text: str = "",
              image: bytes | None = None) -> tuple[dict[str, Any], bytes]:
        """The engine call: decode ``spz`` as the validator does and score it against the prompt."""
        from ..splats import spz as spz_codec

        result = self.score_cloud(spz_codec.decode(spz), text=text, image=image)
        out = result.to_dict()
        out["parts"] = {"alignment": result.alignment, "quality": result.quality, "ssim": result.ssim}
        return out, result.ring_png

    def score_cloud(self, cloud: GaussianCloud, text: str = "", image: bytes | None = None) -> ModelScore:
        if not text and not image:
            raise BackendError("the models scorer needs the prompt: its text, or the prompt image")
        self.load()
        start = time.perf_counter()
        verdict = check_for_validator(cloud)
        loaded = as_validator_loads(cloud)
        size = self.config.render_size
        views = render_views(loaded, validator_cameras(self.config.views), size, size)
        report_progress(1, 3, "scoring phases (views, alignment, quality)")
        rendered = time.perf_counter()
        with peak_gpu_memory() as memory:
            cosines = self.clip_cosines(views, text=text, image=image)
            report_progress(2, 3, "scoring phases (views, alignment, quality)")
            quality_per_view = self.quality(views)
            report_progress(3, 3, "scoring phases (views, alignment, quality)")
        scored = time.perf_counter()
        ssim = ring_consistency(views)
        alignment = alignment_from_cosines(cosines)
        quality = float(np.mean(quality_per_view))
        score = final_score(alignment, quality, ssim) if verdict.ok else 0.0
        buf = io.BytesIO()
        preview_grid([v[::4, ::4] for v in views] if size >= 256 else views, 4).save(buf, format="PNG", optimize=True)
        self.last_stats = {"render_seconds": round(rendered - start, 3), "model_seconds": round(scored - rendered, 3),
                           "seconds": round(time.perf_counter() - start, 3), **memory}
        return ModelScore(round(score, 4), round(alignment, 4), round(quality, 4), round(ssim, 4), None,
                          [round(float(c), 4) for c in cosines],
                          [round(float(q), 4) for q in quality_per_view], verdict.to_dict(), ring_png=buf.getvalue())

    def clip_cosines(self, views: list[np.ndarray], text: str = "", image: bytes | None = None) -> np.ndarray:
        """Cosine between each view's OpenCLIP embedding and the prompt's (text, or image when given)."""
        import torch

        with torch.inference_mode():
            pixels = torch.stack([self._clip_pixels(v) for v in views])
            found = self._clip.encode_image(pixels.to(self._device, self._dtype)).float()
            if image:
                prompt = self._clip_pixels(_prompt_rgb(image))[None]
                target = self._clip.encode_image(prompt.to(self._device, self._dtype)).float()
            else:
                tokens = self._tokenizer([text]).to(self._device)
                target = self._clip.encode_text(tokens).float()
            found = torch.nn.functional.normalize(found, dim=-1)
            target = torch.nn.functional.normalize(target, dim=-1)
            return (found @ target[0]).cpu().numpy().astype(np.float64)

    def quality(self, views: list[np.ndarray]) -> np.ndarray:
        """The score head's sigmoid per view."""
        import torch

        with torch.inference_mode():
            x = torch.stack([torch.from_numpy(np.ascontiguousarray(v)).permute(2, 0, 1) for v in views]).float()
            if x.shape[-2:] != (QUALITY_SIZE, QUALITY_SIZE):
                x = torch.nn.functional.interpolate(x, size=(QUALITY_SIZE, QUALITY_SIZE), mode="bilinear",
                                                    align_corners=False)
            x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
            features = self._dino(pixel_values=x.to(self._device, self._dtype)).last_hidden_state[:, 0]
            return torch.sigmoid(self._head(features).float()[:, 0]).cpu().numpy().astype(np.float64)

    def _clip_pixels(self, rgb: np.ndarray) -> Any:
        """open_clip's inference preprocessing: shorter side to the model's size, centre crop, normalise."""
        import torch

        height, width = self._clip_pre["size"]
        x = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
        h, w = x.shape[-2:]
        scale = max(height / h, width / w)
        new_h, new_w = max(height, round(h * scale)), max(width, round(w * scale))
        if (new_h, new_w) != (h, w):
            mode = "bicubic" if self._clip_pre["interpolation"] == "bicubic" else "bilinear"
            x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode=mode, align_corners=False,
                                                antialias=True).clamp(0.0, 1.0)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        x = x[0, :, top:top + height, left:left + width]
        mean = torch.tensor(self._clip_pre["mean"]).view(3, 1, 1)
        std = torch.tensor(self._clip_pre["std"]).view(3, 1, 1)
        return (x - mean) / std


def _rgb_over_white(image: Image.Image) -> np.ndarray:
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), np.float32) / 255.0


def _prompt_rgb(image: bytes) -> np.ndarray:
    """An image prompt as float RGB in [0, 1], transparency composited over white (the renders' background)."""
    try:  # bounded when it was registered; to_rgb scales 16-bit greyscale (convert() would clip it white)
        rgba = images.to_rgb(images.decode(image, max_pixels=None)).convert("RGBA")
    except images.ImageError as e:
        raise BackendError(f"the image prompt cannot be read: {e}") from e
    return _rgb_over_white(rgba)


def import_open_clip() -> Any:
    """``open_clip`` (with timm), imported with the torchvision compat shim when torchvision is absent."""
    if "open_clip" in sys.modules:
        return sys.modules["open_clip"]
    # import what checks for torchvision before the shim exists, so none of it ever sees the shim
    import transformers  # noqa: F401

    from ._torchvision_compat import shimmed_torchvision

    with shimmed_torchvision():
        import open_clip
    return open_clip
