"""What every model backend shares: its error type, device and dtype choice, GPU memory figures.

Model backends (FLUX, rembg, Hunyuan3D-2, BPT) import torch and their libraries lazily, inside
``load()``, so the embedded CPU pipeline never pays for them. No Dagster imports.
"""

from __future__ import annotations

import importlib.util
import sys
from contextlib import contextmanager
from typing import Any, Iterator


class BackendError(RuntimeError):
    """A model backend that cannot run: weights missing, library absent, no result. The message
    names what is wrong and what to do."""


DTYPES = ("float32", "float16", "bfloat16")


def require(module: str, extra: str = "gpu") -> None:
    """Fail clearly when an optional library is not installed."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        raise BackendError(f"the {module!r} package is not installed: pip install -e '.[{extra}]' "
                           f"(see the README's GPU section)")


def pick_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA GPU is visible, else 'cpu'; anything else is taken as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendError(f"device {device!r} asked for, but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}; is this the CUDA build?)")
    return device


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise BackendError(f"dtype {name!r}: use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def gpu_memory() -> dict[str, float]:
    """Allocated and peak CUDA memory in MB since the last reset; zeros without a GPU, or when no
    backend in this process has imported torch (then none used the GPU: importing it here would cost
    seconds for nothing)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return {"gpu_mb": 0.0, "gpu_peak_mb": 0.0}
    return {"gpu_mb": round(torch.cuda.memory_allocated() / 2**20, 1),
            "gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


@contextmanager
def peak_gpu_memory() -> Iterator[dict[str, float]]:
    """``with peak_gpu_memory() as m: ...`` then ``m["gpu_peak_mb"]`` for that block alone."""
    out: dict[str, float] = {}
    torch = sys.modules.get("torch")  # a backend that runs on the GPU has imported it already
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        yield out
    finally:
        out.update(gpu_memory())


def free_gpu_memory() -> None:
    """Return cached CUDA blocks to the driver (between stages, when configured)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
