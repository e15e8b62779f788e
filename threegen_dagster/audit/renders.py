"""The judge-style white views of an output (``rounds/render.py``: three r183 in headless Chromium), as
images to compare, and the two similarities the audit and the duel use: pixels (1 - mean absolute
difference, 0..1) and embeddings (``Embedder``: a DINO-family model through transformers, the CLS/pooled
feature, L2-normalised; the judges use DINOv3 ``vits16``). No Dagster imports."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..rounds.render import JudgeRenderer

COMPARE_PX = 256
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LazyRenderer:
    """A ``JudgeRenderer`` started on its first render: no browser when nothing needs drawing."""

    def __init__(self, chromium: str | None = None, timeout_s: float = 60.0) -> None:
        self.chromium, self.timeout_s = chromium, timeout_s
        self._renderer: JudgeRenderer | None = None

    def render(self, data: bytes, kind: str, out_dir: Path):
        if self._renderer is None:
            renderer = JudgeRenderer(self.chromium, self.timeout_s)
            self._renderer = renderer.__enter__()
        return self._renderer.render(data, kind, out_dir)

    def __enter__(self) -> LazyRenderer:
        return self

    def __exit__(self, *exc) -> None:
        if self._renderer is not None:
            self._renderer.__exit__(*exc)
            self._renderer = None


def white_views(renderer: JudgeRenderer, data: bytes, kind: str) -> dict[str, Image.Image]:
    """The 8 white views of one output, by view name (RenderError when it does not render)."""
    with tempfile.TemporaryDirectory(prefix="audit-render-") as tmp:
        rendered = renderer.render(data, kind, Path(tmp))
        return {name: Image.open(path).convert("RGB").copy() for name, path in rendered.white.items()}


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB").resize((COMPARE_PX, COMPARE_PX), Image.BILINEAR), np.float32) / 255.0


def pixel_similarity(a: dict[str, Image.Image], b: dict[str, Image.Image]) -> float:
    """1 - the mean absolute RGB difference over the views both have (1: identical renders)."""
    names = sorted(set(a) & set(b))
    if not names:
        raise ValueError("no view in common")
    return float(1.0 - np.mean([np.abs(_pixels(a[n]) - _pixels(b[n])).mean() for n in names]))


class Embedder:
    """A DINO-family image model (DINOv3 or DINOv2, transformers' AutoModel) from a local folder or a hub id;
    torch and transformers are imported on first use."""

    def __init__(self, model: str, device: str = "cpu") -> None:
        self.model_name, self.device = model, device
        self._model = None
        self._size = 224

    def _load(self):
        if self._model is None:
            from transformers import AutoModel

            try:
                model = AutoModel.from_pretrained(self.model_name)
            except Exception as exc:
                raise RuntimeError(f"cannot load the embedding model {self.model_name} ({type(exc).__name__}: "
                                   f"{str(exc)[:200]}); give a local folder") from None
            size = getattr(model.config, "image_size", 224)
            self._size = int(size[0] if isinstance(size, (list, tuple)) else size)
            self._model = model.to(self.device).eval()
        return self._model

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """One L2-normalised row per image (transparency over white)."""
        import torch

        model = self._load()
        rows = []
        for image in images:
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, "white")
            flat.paste(rgba, mask=rgba.split()[3])
            array = np.asarray(flat.resize((self._size, self._size), Image.BICUBIC), np.float32) / 255.0
            rows.append((array - IMAGENET_MEAN) / IMAGENET_STD)
        pixels = torch.from_numpy(np.stack(rows).transpose(0, 3, 1, 2).astype(np.float32)).to(self.device)
        with torch.inference_mode():
            out = model(pixel_values=pixels)
            pooled = getattr(out, "pooler_output", None)
            feature = pooled if pooled is not None else out.last_hidden_state[:, 0]
            feature = torch.nn.functional.normalize(feature.float(), dim=-1)
        return feature.cpu().numpy()


def embedding_similarity(embedder: Embedder, a: dict[str, Image.Image], b: dict[str, Image.Image]) -> float:
    """The mean cosine of the two renders' embeddings, view by view."""
    names = sorted(set(a) & set(b))
    ea, eb = embedder.embed([a[n] for n in names]), embedder.embed([b[n] for n in names])
    return float(np.mean(np.sum(ea * eb, axis=1)))
