"""The four ``torchvision.transforms`` pieces hy3dgen's image conditioner uses, on plain torch ops.

``hy3dgen/shapegen/models/conditioner.py`` does ``from torchvision import transforms`` for
``Compose([Resize(size, InterpolationMode.BILINEAR, antialias=True), CenterCrop(size),
Normalize(mean, std)])`` on a float (B, C, H, W) tensor, and nothing else from torchvision. A CUDA
install brings torchvision along with torch; the CPU-only torch here has none (PyPI's torchvision
wheel is built for CUDA torch and breaks this environment). :func:`shimmed_torchvision` lets that
one import resolve to this module, for the duration of hy3dgen's import only, and only where the
real torchvision is not installed: the conditioner keeps its reference, while transformers and
diffusers, imported before and checked after, keep seeing no torchvision at all.

Semantics follow torchvision's tensor path (``transforms.functional`` / ``_functional_tensor``):
Resize of an int scales the shorter edge to it, the longer to ``int(size * long / short)``, by
``F.interpolate(..., align_corners=False, antialias=...)`` in float32 for other float dtypes;
CenterCrop takes the middle ``size`` with ``round`` offsets (zero-padding an image that is smaller);
Normalize is ``(x - mean) / std`` per channel.
"""

from __future__ import annotations

import enum
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

IS_COMPAT_SHIM = True  # what HunyuanShape.describe() looks for


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


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
        if self.interpolation is InterpolationMode.NEAREST:
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


@contextmanager
def shimmed_torchvision() -> Iterator[bool]:
    """Inside the block ``from torchvision import transforms`` gets this module, unless a real
    torchvision is installed (then nothing changes). Yields whether the shim is in place."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        yield False
        return
    this = sys.modules[__name__]
    package = types.ModuleType("torchvision")
    # a spec, so that importlib.util.find_spec("torchvision") inside the block does not raise
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)
    package.__version__ = "0+threegen.compat"
    package.transforms = this
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = package, this
    try:
        yield True
    finally:
        for name, module in (("torchvision", package), ("torchvision.transforms", this)):
            if sys.modules.get(name) is module:
                del sys.modules[name]
