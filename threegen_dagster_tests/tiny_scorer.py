"""Tiny randomly initialised stand-ins for the validator's scoring models, saved in the real layouts.

- an OpenCLIP folder like ``laion/CLIP-convnext_large_d.laion2B-s26B-b102K-augreg``:
  ``open_clip_config.json`` (model_cfg + preprocess_cfg) and ``open_clip_model.safetensors``, a timm
  ConvNeXt trunk with the MLP projection (as convnext_large_d has) and a 2-layer text tower;
- a transformers DINOv2 folder (``save_pretrained`` of a 2-layer Dinov2Model at 518 px, patch 14);
- a score head file as the validator's DINOv2 quality model keeps it: ``score_head.*`` and
  ``emb_head.*`` tensors in safetensors.

Loaded through the project's real loading code; nothing here is patched.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "mlp", "timm_drop": 0.0, "timm_drop_path": 0.0, "image_size": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                       "interpolation": "bicubic", "resize_mode": "shortest"},
}


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    from threegen_dagster.backends.validator_models import import_open_clip

    open_clip = import_open_clip()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(CLIP_CONFIG))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{folder}")  # no weights yet: random
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder


def build_tiny_dino(folder: Path, seed: int = 0) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=14, image_size=518)
    Dinov2Model(config).save_pretrained(folder)
    return folder


def build_score_head(path: Path, hidden: int = 32, bias: float | None = None, seed: int = 0,
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
    """A head file; with ``bias`` the score weights are zero, so every view scores exactly sigmoid(bias)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    weight = torch.zeros(1, hidden) if bias is not None else torch.randn(1, hidden, generator=generator) * 0.5
    tensors = {"score_head.weight": weight,
               "score_head.bias": torch.tensor([bias if bias is not None else 0.1]),
               "emb_head.weight": torch.randn(256, hidden, generator=generator),
               "emb_head.bias": torch.zeros(256), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
