"""The ``refine`` backend ``bpt``: BPT mesh refinement is CUDA-only and not on PyPI, so this project
cannot install it. It is listed so that choosing it says so at once; it is never faked."""

from __future__ import annotations

from typing import Any

import trimesh

from .gpu import BackendError
from .stages import Refine


class Bpt(Refine):
    name, model = "bpt", "BPT (not installed)"
    loaded = False

    def load(self) -> None:
        raise BackendError("BPT refinement is not available: BPT is CUDA-only and not published on PyPI, "
                           "so this project cannot install it; use THREEGEN_REFINER=decimate")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model}

    def __call__(self, mesh: trimesh.Trimesh) -> trimesh.Trimesh:
        self.load()
        raise AssertionError("unreachable: load() always raises")
