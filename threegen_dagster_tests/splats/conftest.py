from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from threegen_dagster.splats import GaussianCloud

VECTORS = Path(__file__).parent / "data" / "sn17-spz"
MANIFEST = json.loads((VECTORS / "MANIFEST.json").read_text())
CASES = [case["case"] for case in MANIFEST["cases"]]


def vector(name: str) -> bytes:
    """A vector file, checked against the sha256 pyspz's run recorded for it."""
    data = (VECTORS / name).read_bytes()
    for case in MANIFEST["cases"]:
        if name in case["files"]:
            assert hashlib.sha256(data).hexdigest() == case["files"][name]["sha256"], f"{name} is corrupt"
    return data


def random_cloud(n: int, sh_degree: int = 0, seed: int = 0) -> GaussianCloud:
    rng = np.random.default_rng(seed)
    k = {0: 0, 1: 3, 2: 8, 3: 15}[sh_degree]
    return GaussianCloud(
        positions=rng.normal(0, 0.5, (n, 3)),
        log_scales=rng.uniform(-7, -3, (n, 3)),
        rotations=rng.normal(size=(n, 4)),
        opacity_logits=rng.normal(0, 3, n),
        sh_dc=rng.uniform(-2, 2, (n, 3)),  # inside the colour byte's range (|f_dc| < 3.33)
        sh_rest=rng.normal(0, 0.2, (n, k, 3)),
    )


@pytest.fixture
def cloud() -> GaussianCloud:
    return random_cloud(500, sh_degree=2)
