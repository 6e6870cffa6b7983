"""Speed and memory levers from [performance], applied once to the loaded model (diffusers' own switches)."""

from __future__ import annotations

import logging

import torch

from ..config import Performance
from .models import LoadedModel

log = logging.getLogger(__name__)


def vae_slicing_enabled(setting: str, device: torch.device) -> bool:
    """ "auto": on accelerators, where the VAE decode dominates peak memory; off on the CPU, where it would only
    change the last bits of the frames versus diffusers' default batched decode."""
    return setting == "on" or (setting == "auto" and device.type != "cpu")


def apply_performance(model: LoadedModel, performance: Performance) -> list[str]:
    """Apply the levers; returns their names for the log."""
    applied = []
    model.vae.use_slicing = vae_slicing_enabled(performance.vae_slicing, model.device)
    if model.vae.use_slicing:
        applied.append("VAE slicing")
    if performance.fuse_qkv and model.has_draft_adapter:
        # Swapping motion modules loads q/k/v weights the fused projections would not see.
        log.warning("performance: fuse_qkv is off because a draft motion adapter is configured")
    elif performance.fuse_qkv and model.loras:
        # LoRA adapters sit on the separate q/k/v projections that fusing replaces.
        log.warning("performance: fuse_qkv is off because LoRAs are configured ([model.loras])")
    elif performance.fuse_qkv:
        model.unet.fuse_qkv_projections()
        applied.append("fused QKV")
    if performance.channels_last:
        model.unet.to(memory_format=torch.channels_last)
        for encoder in model.encoders.values():
            encoder.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if performance.compile:
        model.unet = torch.compile(model.unet)
        applied.append("torch.compile (UNet)")
    if applied:
        log.info("performance: %s", ", ".join(applied))
    return applied
