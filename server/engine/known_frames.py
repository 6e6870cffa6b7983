"""Known frames: generated frames whose clean latents are known before denoising starts (#28).

- A retake keeps every frame of its parent take outside the span: their latents are the parent's final ones,
  and their pixels the parent's generated frames, used as they are (bit for bit).
- A pinned RGB keyframe's frame is the picture itself: its latents are the picture's VAE encoding (the
  distribution's mode), so the frame comes out as the picture's VAE round trip.

At every step the known frames are replaced by their known latents noised to the level the step left the clip
at (scheduler.add_noise: the blend diffusers' inpainting pipelines make after each scheduler step; ComfyUI's
KSamplerX0Inpaint does the same around the model call), and by the clean latents after the last step. They
still pass through the UNet, so the motion module attends to them across the seam: the frames beside a kept
stretch move on from it. A context window all of whose frames are known needs no prediction (needs_window).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..request.model import GenerationRequest
from .conditions import fit_to_size
from .step_hooks import StepHook, StepState


class KnownFrames(StepHook):
    def __init__(self, latents: torch.Tensor, known: Sequence[bool], noise: torch.Tensor, pixels: dict | None = None):
        """`latents`: (1, channels, frames, h, w) clean latents as the UNet sees them (scaled), any value where a
        frame is not known; `known`: per frame; `noise`: what they are noised with, latents' shape; `pixels`:
        generated frames (uint8 (h, w, 3)) to deliver as they are, by index, instead of decoding them."""
        self.latents, self.known, self.noise = latents, tuple(bool(k) for k in known), noise
        self.mask = torch.tensor(self.known, device=latents.device).view(1, 1, -1, 1, 1)
        self.pixels = pixels or {}

    def needs_window(self, start: int, stop: int) -> bool:
        return not all(self.known[start:stop])

    def __call__(self, state: StepState) -> torch.Tensor:
        if state.next_timestep is None:
            target = self.latents
        else:
            target = state.scheduler.add_noise(self.latents, self.noise, state.next_timestep.reshape(1))
        return torch.where(self.mask, target.to(state.latents.dtype), state.latents)


def known_frames_for(pipe, request: GenerationRequest, dtype: torch.dtype) -> KnownFrames | None:
    """The request's known frames (a retake's kept ones, pinned RGB keyframes inside its span), or None: then
    nothing of the loop changes. Pins are encoded with the pipeline's VAE, on the device, now."""
    device = pipe._execution_device
    frames = request.num_frames
    shape = (1, pipe.unet.config.in_channels, frames, request.height // 8, request.width // 8)
    latents = torch.zeros(shape, dtype=torch.float32)
    known, pixels = [False] * frames, {}
    retake = request.retake
    if retake is not None:
        parent = torch.from_numpy(np.ascontiguousarray(retake.latents)).float()
        for f in retake.kept(frames):
            latents[:, :, f], known[f], pixels[f] = parent[:, :, f], True, retake.frames[f]
    pins = [k for k in request.keyframes if k.pin and not known[k.index]]
    for k in pins:
        latents[:, :, k.index] = _encoded(pipe, fit_to_size(k.image, request.width, request.height))
        known[k.index] = True
    if not any(known):
        return None
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(request.seed))
    return KnownFrames(latents.to(device, dtype), known, noise.to(device, dtype), pixels)


def _encoded(pipe, image) -> torch.Tensor:
    """A picture's latents (channels, h, w) as the UNet sees them: the VAE's mode, times its scaling factor."""
    vae = pipe.vae
    pixels = pipe.video_processor.preprocess(image, height=image.height, width=image.width)
    latent = vae.encode(pixels.to(pipe._execution_device, vae.dtype)).latent_dist.mode()
    return (latent * vae.config.scaling_factor)[0].float().cpu()
