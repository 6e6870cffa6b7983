"""The full-size architecture with random weights, built in memory, for benchmarks.

Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text encoder), the AnimateDiff v3 motion module and a
SparseCtrl scribble encoder, with the configurations of the released weights: speed and memory are those of
the real model; the output is noise. Nothing is downloaded or written to disk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .models import LoadedModel
from .tiny import write_tokenizer

FULL_NAME = "full-size-random"

# scheduler_config.json of stable-diffusion-v1-5
SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}


def build_full_size_model(device: torch.device, dtype: torch.dtype, modality: str = "lineart") -> LoadedModel:
    from diffusers import AutoencoderKL, MotionAdapter, SparseControlNetModel, UNet2DConditionModel, UNetMotionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    unet2d = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    adapter = MotionAdapter(
        block_out_channels=(320, 640, 1280, 1280),
        motion_layers_per_block=2,
        motion_num_attention_heads=8,
        motion_norm_num_groups=32,
        motion_max_seq_length=32,
        use_motion_mid_block=False,
    )
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    del unet2d, adapter
    rgb = modality == "rgb"
    encoder = SparseControlNetModel(
        conditioning_channels=4 if rgb else 3,
        use_simplified_condition_embedding=rgb,
        conditioning_embedding_out_channels=(16, 32, 96, 256),
        cross_attention_dim=768,
        attention_head_dim=8,
        motion_max_seq_length=32,
        motion_num_attention_heads=8,
        concat_conditioning_mask=True,
    )
    for module in (text_encoder, vae, unet, encoder):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return LoadedModel(
        FULL_NAME, False, device, dtype, vae, text_encoder, tokenizer, unet, dict(SD15_SCHEDULER), {modality: encoder}
    )
