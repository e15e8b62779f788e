"""A tiny, randomly initialised Hunyuan3D-2 shape model built locally (no hub), for tests.

Same layout and config schema as ``tencent/Hunyuan3D-2/hunyuan3d-dit-v2-0``: ``config.yaml`` with
``model`` (Hunyuan3DDiT), ``vae`` (ShapeVAE), ``conditioner`` (SingleImageEncoder around a
DinoImageEncoder whose transformers Dinov2 config is inline, as in the real file), ``scheduler`` and
``image_processor`` entries, and one ``model.fp16.safetensors`` whose keys are prefixed ``model.``,
``vae.`` and ``conditioner.`` (the name hy3dgen's from_pretrained asks for by default; "fp16" is only
the variant name, the tensors are float32). Loads through the real
``Hunyuan3DDiTFlowMatchingPipeline.from_pretrained`` and runs on CPU in well under a second.
"""

from __future__ import annotations

from pathlib import Path

import yaml

LATENT = 8  # VAE embed_dim = DiT in_channels
COND = 16  # Dinov2 hidden size = DiT context_in_dim
IMAGE = 28  # Dinov2 input side: 2 x 2 patches of 14 (hy3dgen's encoder assumes patch 14)


def tiny_config() -> dict:
    sg = "hy3dgen.shapegen"
    return {
        "model": {"target": f"{sg}.models.Hunyuan3DDiT", "params": dict(
            in_channels=LATENT, context_in_dim=COND, hidden_size=32, mlp_ratio=2.0, num_heads=2,
            depth=1, depth_single_blocks=1, axes_dim=[16], theta=10000, qkv_bias=True,
            guidance_embed=False)},
        "vae": {"target": f"{sg}.models.ShapeVAE", "params": dict(
            num_latents=16, embed_dim=LATENT, num_freqs=4, include_pi=False, heads=2, width=32,
            num_decoder_layers=1, qkv_bias=False, qk_norm=True, scale_factor=1.0)},
        "conditioner": {"target": f"{sg}.models.SingleImageEncoder", "params": {"main_image_encoder": {
            "type": "DinoImageEncoder", "kwargs": {
                "config": dict(hidden_size=COND, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2,
                               image_size=IMAGE, patch_size=14, hidden_act="gelu", layerscale_value=1.0,
                               model_type="dinov2"),
                "use_cls_token": True, "image_size": IMAGE}}}},
        "scheduler": {"target": f"{sg}.schedulers.FlowMatchEulerDiscreteScheduler",
                      "params": {"num_train_timesteps": 1000}},
        "image_processor": {"target": f"{sg}.preprocessors.ImageProcessorV2",
                            "params": {"size": 64, "border_ratio": 0.15}},
    }


def build_tiny_hunyuan(folder: Path, subfolder: str = "hunyuan3d-dit-v2-0", *, seed: int = 0,
                       surface: bool = True) -> Path:
    """Write ``folder/subfolder/{config.yaml, model.fp16.safetensors}`` and return ``folder`` (what
    HunyuanConfig.model takes). Seeded: the same weights every time. ``surface=False`` gives the VAE's
    occupancy head zero weights and bias +1, so the decoded field is 1 everywhere and never crosses
    the iso-level 0: the pipeline's real no-surface result."""
    import safetensors.torch
    import torch

    from threegen_dagster.backends.hunyuan import import_shapegen

    instantiate = import_shapegen().pipelines.instantiate_from_config
    config = tiny_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = {name: instantiate(config[name]) for name in ("model", "vae", "conditioner")}
    if not surface:
        head = parts["vae"].geo_decoder.output_proj
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.constant_(head.bias, 1.0)
    tensors = {f"{name}.{key}": value.detach().contiguous()
               for name, module in parts.items() for key, value in module.state_dict().items()}
    target = folder / subfolder
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    safetensors.torch.save_file(tensors, str(target / "model.fp16.safetensors"))
    return folder
