"""Pre-validation on SN17's own validation server (FastAPI, default 127.0.0.1:8094), which miners
run beside the pipeline: the validator's real score (CLIP alignment, the DINOv2 quality head,
SSIM and LPIPS across views) for a compressed splat, before deciding to submit. No Dagster imports.

    POST /validate_txt_to_3d_ply/   {"prompt": text,        "data": base64 SPZ, "compression": 2, ...}
    POST /validate_img_to_3d_ply/   {"prompt_image": b64,   "data": base64 SPZ, "compression": 2, ...}
    -> {"score", "iqa", "alignment_score", "ssim", "lpips"}

The server answers an internal error with HTTP 200 and score 0; that is reported as such.
"""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request

from .gpu import BackendError
from .stages import Score

SPZ_COMPRESSION = 2
PARTS = ("alignment_score", "iqa", "ssim", "lpips")


class ValidationServerClient:
    def __init__(self, url: str = "http://127.0.0.1:8094", timeout_s: float = 120.0) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s

    def validate(self, spz: bytes, text: str = "", image: bytes | None = None) -> dict[str, float]:
        """The server's score and parts for ``spz`` against a text prompt or an image prompt."""
        body = {"data": base64.b64encode(spz).decode(), "compression": SPZ_COMPRESSION,
                "generate_preview": False, "generate_grid_preview": False}
        if image is not None:
            path, body["prompt_image"] = "/validate_img_to_3d_ply/", base64.b64encode(image).decode()
        else:
            path, body["prompt"] = "/validate_txt_to_3d_ply/", text
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise BackendError(f"validation server at {self.url} refused {path} (HTTP {exc.code})") from None
        except (TimeoutError, socket.timeout):
            raise BackendError(f"validation server at {self.url} did not answer within {self.timeout_s:g} s") from None
        except (urllib.error.URLError, ConnectionError) as exc:
            raise BackendError(f"validation server at {self.url} is down ({getattr(exc, 'reason', exc)}): "
                               f"start SN17's validation server, or use the proxy scorer") from None
        except ValueError:
            raise BackendError(f"validation server at {self.url} answered {path} with something that is not JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("score"), (int, float)):
            raise BackendError(f"validation server at {self.url} answered without a score: {str(answer)[:200]}")
        return {"score": float(answer["score"]), **{k: float(answer.get(k) or 0.0) for k in PARTS}}


class ValidationServerScorer(Score):
    """The ``score`` stage on a running validation server, with the zero-score checks run here too."""

    name = "validation_server"
    env = {"url": ("THREEGEN_VALIDATION_URL", str), "timeout_s": ("THREEGEN_VALIDATION_TIMEOUT", float)}
    on_worker = False  # called from the run itself

    def __init__(self, url: str = "http://127.0.0.1:8094", timeout_s: float = 120.0) -> None:
        self.client = ValidationServerClient(url, timeout_s)

    def describe(self) -> dict:
        return {"backend": self.name, "model": f"SN17 validation server at {self.client.url}", "device": "remote"}

    def __call__(self, spz: bytes, foreground=None, text: str = "", image: bytes | None = None):
        from ..splats import spz as spz_codec
        from ..splats.render import preview_grid_png
        from ..splats.validate import check_for_validator

        cloud = spz_codec.decode(spz)
        server = self.client.validate(spz, text=text, image=image)
        out = {"kind": "validation_server", "server": self.client.url, "score": server["score"],
               "parts": {k: v for k, v in server.items() if k != "score"},
               "checks": check_for_validator(cloud).to_dict()}
        return out, preview_grid_png(cloud, size=128, grid=4)
