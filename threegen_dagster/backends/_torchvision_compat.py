"""The corner of torchvision that hy3dgen and open_clip (with timm) import, on plain torch ops.

A CUDA install brings torchvision along with torch; the CPU-only torch here has none (PyPI's
torchvision wheel is built for CUDA torch and breaks this environment). :func:`shimmed_torchvision`
lets those imports resolve to this module, for the duration of one import only, and only where the
real torchvision is not installed: the importing library keeps its references, while transformers
and diffusers, imported before and checked after, keep seeing no torchvision at all.

What is real here (used at inference time):

- ``transforms.Compose/Resize/CenterCrop/Normalize`` on float (B, C, H, W) tensors, which
  hy3dgen's image conditioner runs. Semantics follow torchvision's tensor path: Resize of an int
  scales the shorter edge to it, the longer to ``int(size * long / short)``, by
  ``F.interpolate(..., align_corners=False, antialias=...)``; CenterCrop takes the middle ``size``
  with ``round`` offsets (zero-padding an image that is smaller); Normalize is ``(x - mean) / std``.
- ``transforms.ToTensor`` (HWC uint8 PIL or array to CHW float in [0, 1]) and
  ``ops.misc.FrozenBatchNorm2d`` (batch norm with fixed statistics), as torchvision defines them.

What only has to exist for open_clip and timm to import (their training augmentations and
datasets) is a placeholder that refuses to be constructed, naming what it stands for. The scorer
does its own preprocessing from the model's ``preprocess_cfg``, so it never calls open_clip's
transforms.
"""

from __future__ import annotations

import enum
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

IS_COMPAT_SHIM = True  # what HunyuanShape.describe() looks for


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


class Compose:
    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class Resize:
    def __init__(self, size: int | Sequence[int], interpolation=InterpolationMode.BILINEAR,
                 max_size: int | None = None, antialias: bool = True) -> None:
        if max_size is not None:
            raise NotImplementedError("the torchvision compat shim does not implement max_size")
        self.size, self.interpolation, self.antialias = size, InterpolationMode(interpolation), antialias

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        if isinstance(self.size, int) or len(self.size) == 1:
            new_short = self.size if isinstance(self.size, int) else self.size[0]
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(new_short * long / short)
            return (new_long, new_short) if w <= h else (new_short, new_long)
        return self.size[0], self.size[1]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        out_h, out_w = self.output_size(h, w)
        if (out_h, out_w) == (h, w):
            return img
        if self.interpolation not in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC):
            raise NotImplementedError("the torchvision compat shim resizes bilinear or bicubic only")
        x = img if img.ndim == 4 else img.unsqueeze(0)
        dtype = x.dtype
        x = x if dtype in (torch.float32, torch.float64) else x.float()
        x = F.interpolate(x, size=(out_h, out_w), mode=self.interpolation.value, align_corners=False,
                          antialias=self.antialias)
        x = x.to(dtype)
        return x if img.ndim == 4 else x.squeeze(0)


class CenterCrop:
    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        crop_h, crop_w = self.size
        h, w = img.shape[-2:]
        if crop_h > h or crop_w > w:
            pad_w, pad_h = max(crop_w - w, 0), max(crop_h - h, 0)
            img = F.pad(img, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
            h, w = img.shape[-2:]
        top, left = round((h - crop_h) / 2.0), round((w - crop_w) / 2.0)
        return img[..., top:top + crop_h, left:left + crop_w]


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        self.mean, self.std, self.inplace = mean, std, inplace

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            raise TypeError(f"Input tensor should be a float tensor. Got {tensor.dtype}.")
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        out = tensor if self.inplace else tensor.clone()
        return out.sub_(mean).div_(std)


class ToTensor:
    """A PIL image or HWC array to a CHW float tensor, divided by 255 when it was uint8."""

    def __call__(self, pic) -> torch.Tensor:
        array = np.array(pic, copy=True)
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor


class FrozenBatchNorm2d(torch.nn.Module):
    """Batch norm whose statistics and affine parameters are fixed buffers (torchvision.ops.misc)."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def _unavailable(qualified: str) -> type:
    """A stand-in class for something only training code uses; constructing it says so."""

    def refuse(self, *args, **kwargs) -> None:
        raise NotImplementedError(f"{qualified} needs the real torchvision; this is threegen's import-time "
                                  "compat shim (install torchvision built for your torch to use it)")

    return type(qualified.rsplit(".", 1)[-1], (), {"__init__": refuse, "__doc__": f"Placeholder for {qualified}."})


# open_clip's and timm's training augmentations and dataset classes: imported, never used for inference
for _name in ("RandomResizedCrop", "ColorJitter", "Grayscale"):
    globals()[_name] = _unavailable(f"torchvision.transforms.{_name}")
_DATASETS = ("CIFAR10", "CIFAR100", "MNIST", "KMNIST", "FashionMNIST", "ImageFolder")


def _module(name: str, attrs: dict, refuse_missing: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    if refuse_missing:
        def __getattr__(attr: str):  # noqa: N807 - a module-level __getattr__
            if attr.startswith("__"):
                raise AttributeError(attr)
            raise AttributeError(f"{name}.{attr} is not in threegen's torchvision compat shim; "
                                 "install torchvision built for your torch")
        module.__getattr__ = __getattr__
    return module


@contextmanager
def shimmed_torchvision() -> Iterator[bool]:
    """Inside the block ``torchvision`` (transforms, transforms.functional, ops.misc, datasets) is
    this shim, unless a real torchvision is installed (then nothing changes). Yields whether the
    shim is in place; on leaving, every shim module is taken out of ``sys.modules`` again."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        yield False
        return
    this = sys.modules[__name__]
    functional = _module("torchvision.transforms.functional", {"InterpolationMode": InterpolationMode}, True)
    this.functional = functional
    misc = _module("torchvision.ops.misc", {"FrozenBatchNorm2d": FrozenBatchNorm2d})
    ops = _module("torchvision.ops", {"misc": misc})
    datasets = _module("torchvision.datasets",
                       {n: _unavailable(f"torchvision.datasets.{n}") for n in _DATASETS})
    package = _module("torchvision", {"__version__": "0+threegen.compat", "transforms": this, "ops": ops,
                                      "datasets": datasets})
    # no __path__ on the package: ``torchvision.models...`` is a plain ImportError, which timm catches
    modules = {"torchvision": package, "torchvision.transforms": this, "torchvision.transforms.functional": functional,
               "torchvision.ops": ops, "torchvision.ops.misc": misc, "torchvision.datasets": datasets}
    sys.modules.update(modules)
    try:
        yield True
    finally:
        for name, module in modules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
