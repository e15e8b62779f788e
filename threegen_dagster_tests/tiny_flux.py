"""A tiny, randomly initialised FLUX pipeline built entirely locally (no hub), for tests.

Same layout as a real FLUX diffusers folder (transformer, vae, text_encoder(_2), tokenizer(_2),
scheduler), so the backend loads it through the real ``FluxPipeline.from_pretrained``. Dimensions
follow diffusers' own FluxPipeline tests; the VAE has four blocks, so, as with real FLUX, image
sides must be multiples of 16. Builds and runs on CPU in about a second.
"""

from __future__ import annotations

import string
from pathlib import Path

DIM = 32  # CLIP hidden size (pooled projection) and T5 d_model (joint attention dim)


def _clip_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    # Byte-level BPE with no merges: every byte is a token, word-final bytes carry '</w>'.
    chars = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab[token] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    from transformers import T5TokenizerFast

    # Unigram with single characters, with and without the word-start marker.
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(p + c, -3.0) for p in ("▁", "") for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def build_tiny_flux(folder: Path) -> Path:
    """Build the tiny pipeline (seeded: the same weights every time) and save it in ``folder``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    latent_channels = 4
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(4, 4, 4, 4),  # 4 blocks: downscale 8
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1, latent_channels=latent_channels, norm_num_groups=1,
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels,  # the pipeline packs 2x2 latent patches
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=DIM, pooled_projection_dim=DIM, axes_dims_rope=[4, 4, 8],  # sums to head dim
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=DIM, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, projection_dim=DIM, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=DIM, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, transformer=transformer,
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
    )
    folder = Path(folder)
    pipe.save_pretrained(folder)
    return folder
