from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from threegen_dagster.splats import GaussianCloud, spz_unpack

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


@pytest.fixture(params=["kernel", "numpy"])
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A decoding test runs twice: with the compiled kernel (where it is built) and with numpy's writers."""
    if request.param == "numpy":
        monkeypatch.setattr(spz_unpack, "KERNEL", None)
    elif spz_unpack.KERNEL is None:
        pytest.skip("the SPZ kernel is not built here (test_spz_kernel says whether it should be)")
    return request.param
