"""Speed and memory levers from [performance], applied once to the loaded model (diffusers' own switches)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import Performance

if TYPE_CHECKING:  # performance takes the loaded model; models.py calls pick_offload while loading
    from .models import LoadedModel

log = logging.getLogger(__name__)


def vae_slicing_enabled(setting: str, device: torch.device) -> bool:
    """ "auto": on accelerators, where the VAE decode dominates peak memory; off on the CPU, where it would only
    change the last bits of the frames versus diffusers' default batched decode."""
    return setting == "on" or (setting == "auto" and device.type != "cpu")


GIB = 2**30


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def choose_offload(setting: str, device: torch.device, weights: int, largest: int, free: int, margin: int) -> str:
    """The offload mode for `setting` ("auto", "none", "model", "sequential"): "auto" keeps everything on the GPU
    when the weights plus the working margin fit in its free memory, else moves one model at a time when the
    largest model plus the margin fits, else goes layer by layer. Only CUDA offloads."""
    if device.type != "cuda":
        return "none"
    if setting != "auto":
        return setting
    if free >= weights + margin:
        return "none"
    if free >= largest + margin:
        return "model"
    return "sequential"


def pick_offload(model: LoadedModel, performance: Performance) -> str:
    """Decide the offload mode for `model` (still on the CPU) on its device; logs the figures it used."""
    if model.device.type != "cuda":
        if performance.offload not in ("auto", "none"):
            log.warning("performance: offload = %r needs a CUDA GPU; not offloading", performance.offload)
        return "none"
    free, total = torch.cuda.mem_get_info(model.device)
    encoders = list(model.encoders.values())
    biggest_encoder = max((module_bytes(e) for e in encoders), default=0)
    encoder_bytes = sum(module_bytes(e) for e in encoders) if model.encoders_on_device else biggest_encoder
    parts = [module_bytes(model.unet), module_bytes(model.vae), module_bytes(model.text_encoder), biggest_encoder]
    weights = sum(parts[:3]) + encoder_bytes
    margin = int(performance.offload_margin_gb * GIB)
    mode = choose_offload(performance.offload, model.device, weights, max(parts), free, margin)
    log.info(
        "performance: offload %s (GPU %.1f of %.1f GiB free; weights %.1f GiB, largest model %.1f GiB, "
        "margin %.1f GiB)",
        mode,
        free / GIB,
        total / GIB,
        weights / GIB,
        max(parts) / GIB,
        margin / GIB,
    )
    return mode


def apply_performance(model: LoadedModel, performance: Performance, compile_cache: Path | None = None) -> list[str]:
    """Apply the levers; returns their names for the log. `compile_cache`: where torch.compile keeps its compiled
    kernels (TORCHINDUCTOR_CACHE_DIR, unless set), so a restarted server compiles in seconds, not minutes."""
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
    if performance.compile and model.offload != "none":
        log.warning("performance: compile is off because the model is offloaded (offload = %s)", model.offload)
    elif performance.compile:
        if compile_cache is not None:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache))
        model.unet = torch.compile(model.unet)
        applied.append(
            f"torch.compile (UNet; kernels kept in {os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'the temp folder')})"
        )
    if model.offload != "none":
        applied.append(f"{model.offload} CPU offload")
    if applied:
        log.info("performance: %s", ", ".join(applied))
    return applied
