"""Speed and memory levers from [performance], applied once to the loaded model (diffusers' own switches)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Performance
from .loaded import LoadedModel

log = logging.getLogger(__name__)


def on_accelerators(setting: str, device: torch.device) -> bool:
    """An "auto" | "on" | "off" lever that "auto" turns on for GPUs (CUDA, MPS), where memory is counted, and off
    on the CPU, where it would only change the last bits of the frames versus diffusers' defaults (the parity
    tests run there): VAE slicing (the decode dominates peak memory) and feed-forward chunking."""
    return setting == "on" or (setting == "auto" and device.type != "cpu")


def chunk_feed_forward(*modules: torch.nn.Module) -> int:
    """diffusers' feed-forward chunking, per kind of transformer block: a spatial block sees (batch × frames,
    pixels, channels) and runs a frame at a time (dim 0); a motion-module block sees (batch × pixels, frames,
    channels) and runs a frame at a time too (dim 1). Chunks of one always divide the dimension, whatever the
    size, window or CFG batch (diffusers raises on a chunk size that does not). Returns the blocks chunked."""
    from diffusers.models.attention import BasicTransformerBlock

    chunked = 0
    for module in modules:
        for name, block in module.named_modules():
            if isinstance(block, BasicTransformerBlock):
                temporal = "motion_modules" in name.split(".")
                block.set_chunk_feed_forward(1, dim=1 if temporal else 0)
                chunked += 1
    return chunked


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
    model.vae.use_slicing = on_accelerators(performance.vae_slicing, model.device)
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
    if on_accelerators(performance.feed_forward_chunking, model.device):
        blocks = chunk_feed_forward(model.unet, *model.encoders.values())
        applied.append(f"feed-forward chunking ({blocks} transformer blocks, a frame at a time)")
    if model.offload != "none":
        applied.append(f"{model.offload} CPU offload")
    if applied:
        log.info("performance: %s", ", ".join(applied))
    return applied


# Working memory of one denoising step beyond the weights, per latent element of the doubled (CFG) batch
# (frames × 2 × latent height × latent width), in half precision, with feed-forward chunking and the encoder's
# residuals released early: 93 MiB at 16×128² = 11.9 kB per latent element (`server.bench levers`, counted as
# bf16; BENCHMARKS.md, #18), rounded up to 16 kB. Grows linearly with frames and pixels (attention runs in
# torch's memory-efficient kernels); an estimate for "auto", not a limit.
WORKING_BYTES_PER_LATENT = 16_000
# Kept free beyond the estimate: kernel workspaces (cuDNN), fragmentation, the VAE decode of one frame.
WORKING_RESERVE = 1 * GIB


@dataclass(frozen=True)
class MemoryPlan:
    """How one job runs its denoiser: CFG halves one after the other, idle weights off the device."""

    sequential_cfg: bool = False
    park_idle_weights: bool = False


def working_memory(frames: int, width: int, height: int, dtype: torch.dtype, cfg: bool) -> int:
    """Estimated bytes a denoising step needs beyond the weights (WORKING_BYTES_PER_LATENT)."""
    latents = frames * (2 if cfg else 1) * (width // 8) * (height // 8)
    return int(latents * WORKING_BYTES_PER_LATENT * torch.empty((), dtype=dtype).element_size() / 2)


def plan_memory(performance: Performance, free: int | None, needed: int) -> MemoryPlan:
    """The job's plan from the settings: "auto" turns both levers on when the device's free memory (None: not
    known, e.g. on the CPU) is short of `needed`, the doubled batch's working memory plus WORKING_RESERVE."""
    short = free is not None and free < needed + WORKING_RESERVE
    sequential = performance.cfg_halves == "sequential" or (performance.cfg_halves == "auto" and short)
    park = performance.park_idle_weights == "on" or (performance.park_idle_weights == "auto" and short)
    return MemoryPlan(sequential_cfg=sequential, park_idle_weights=park)


def free_device_memory(device: torch.device) -> int | None:
    """Memory a job can still take on a CUDA device: the driver's free memory plus what torch's allocator holds
    in reserve; None elsewhere (the CPU has no card to fill; MPS reports none)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


class IdleWeights:
    """Modules idle while the denoiser runs (text encoder, VAE) moved off the device for the denoising loop and
    back for decoding. `move(module, device)` is the move; the memory benchmark passes one that also tells its
    tensor counter, because on a CPU there is no other device to move to."""

    def __init__(self, modules: list[torch.nn.Module], device: torch.device, move):
        self.modules, self.device, self.move = modules, device, move
        self.parked = False

    def park(self) -> None:
        if not self.parked:
            for module in self.modules:
                self.move(module, torch.device("cpu"))
            self.parked = True

    def unpark(self) -> None:
        if self.parked:
            for module in self.modules:
                self.move(module, self.device)
            self.parked = False
