"""The full-size architecture with random weights, built in memory, for benchmarks.

Stable Diffusion 1.5 (UNet, VAE, CLIP ViT-L/14 text encoder), the AnimateDiff v3 motion module and a
SparseCtrl scribble encoder (and, asked for, an SD1.5 depth ControlNet), with the configurations of the released
weights: speed and memory are those of the real model; the output is noise. Nothing is downloaded or written to disk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from .loaded import LoadedModel
from .tiny import write_tokenizer

FULL_NAME = "full-size-random"


def build_full_size_parts(device: torch.device, dtype: torch.dtype) -> dict:
    """SD1.5 (2-D UNet, VAE, text encoder, a tokenizer), the v3 motion adapter: random weights, the shipped
    configs of the released files (server/weights/configs), on `device` in `dtype`."""
    from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..weights.convert import CONFIGS

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tokenizer = CLIPTokenizer.from_pretrained(tmp)
    sd15 = CONFIGS / "sd15"
    parts = {
        "tokenizer": tokenizer,
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(sd15 / "text_encoder")),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(sd15 / "vae")),
        "unet2d": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd15 / "unet")),
        "adapter": MotionAdapter.from_config(MotionAdapter.load_config(CONFIGS / "motion_adapter_v3")),
    }
    for name in ("text_encoder", "vae", "unet2d", "adapter"):
        parts[name].to(device=device, dtype=dtype).eval().requires_grad_(False)
    return parts


def build_full_size_model(
    device: torch.device,
    dtype: torch.dtype,
    modality: str = "lineart",
    draft: bool = False,
    depth: bool = False,
    reference: bool = False,
) -> LoadedModel:
    """`draft`: also a draft motion module shaped as AnimateLCM's (v3's layout plus a middle-block module);
    `depth`: also a per-frame ControlNet named "depth" with SD1.5 ControlNet's architecture (lllyasviel's);
    `reference`: also an IP-Adapter shaped as ip-adapter-plus_sd15 with its CLIP ViT-H/14 image encoder."""
    from diffusers import ControlNetModel, DDIMScheduler, MotionAdapter, SparseControlNetModel

    from ..weights.convert import CONFIGS
    from .motion_modules import build_motion_unet

    parts = build_full_size_parts(torch.device("cpu"), torch.float32)
    adapters = {"final": parts["adapter"]}
    if draft:
        config = MotionAdapter.load_config(CONFIGS / "motion_adapter_mid_block")  # AnimateLCM's layout
        adapters["draft"] = MotionAdapter.from_config(config).eval().requires_grad_(False)
    ip_adapter = full_size_ip_adapter(parts["unet2d"], dtype) if reference else None
    unet = build_motion_unet(parts["unet2d"], adapters["final"], adapters.get("draft"))
    del parts["unet2d"], parts["adapter"]
    config = CONFIGS / ("sparsectrl_rgb" if modality == "rgb" else "sparsectrl_scribble")
    encoder = SparseControlNetModel.from_config(SparseControlNetModel.load_config(config))
    text_encoder, vae = parts["text_encoder"], parts["vae"]
    controlnets = {}
    if depth:
        config = ControlNetModel.load_config(CONFIGS / "controlnet_sd15")
        controlnets["depth"] = ControlNetModel.from_config(config)
    for module in (text_encoder, vae, unet, encoder, *controlnets.values()):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    model = LoadedModel(
        FULL_NAME,
        False,
        device,
        dtype,
        vae,
        text_encoder,
        parts["tokenizer"],
        unet,
        dict(DDIMScheduler.load_config(CONFIGS / "sd15" / "scheduler")),
        {modality: encoder},
        {name: adapter.to(dtype) for name, adapter in adapters.items()},
        controlnets=controlnets,
    )
    model.ip_adapter = ip_adapter
    return model


def full_size_ip_adapter(unet2d, dtype: torch.dtype):
    """ip-adapter-plus_sd15's shapes (a 16-query Resampler of 768 channels over ViT-H/14's hidden states) with random
    weights, and the image encoder with the shipped ViT-H/14 config, on the CPU in `dtype` as the loader leaves it."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from ..weights.ip_adapter import CONFIGS, IPAdapterWeights
    from .tiny import random_ip_adapter

    config = CLIPVisionConfig.from_pretrained(CONFIGS / "clip_vit_h14")
    encoder = CLIPVisionModelWithProjection(config).to(dtype).eval().requires_grad_(False)
    state_dict = random_ip_adapter(unet2d, "plus", config.hidden_size)
    extractor = CLIPImageProcessor(size=config.image_size, crop_size=config.image_size)
    where = Path("random")
    return IPAdapterWeights("ip-adapter-plus_sd15 (random)", "plus", state_dict, encoder, extractor, where, where)
