"""Live previews: a step hook that shows the model's current estimate of the clean clip (#29).

After each denoising step the clip's x0 (the scheduler's predicted original sample, or computed from the step's
noise prediction where the scheduler gives none) becomes RGB, every generated frame side by side from left to
right, one uint8 image handed to a sink (jobs/previews.py encodes and keeps it off the step's path). Two ways
to RGB, as ComfyUI's latent_preview.py has them:

- the latent->RGB linear approximation, at latent size (no weights);
- TAESD (diffusers' AutoencoderTiny decoder) when its `taesd_decoder` file is in the model folders (ComfyUI's
  models/vae_approx, or [model.search] folders): 8x larger, closer to the final.

The hook only reads the step's tensors and draws no random numbers: a job's frames are the same with or without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .step_hooks import StepHook, StepState

log = logging.getLogger(__name__)

# SD1.5's latent->RGB factors (rows: latent channels 0..3; columns: R, G, B), from ComfyUI's
# comfy/latent_formats.py, class SD15 (`latent_rgb_factors`; SD1.5 has no bias). ComfyUI's Latent2RGBPreviewer
# applies them to x0 in the model's (scaled) latent space and maps [-1, 1] to [0, 255].
SD15_LATENT_RGB_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
TAESD_DECODER_NAME = "taesd_decoder"  # ComfyUI's file name for SD1.5 (models/vae_approx/taesd_decoder.pth)

PreviewSink = Callable[[int, np.ndarray], None]  # (step from 1, uint8 (h, frames * w, 3))


def estimate_x0(state: StepState) -> torch.Tensor:
    """The clean clip the model sees now: the scheduler's pred_original_sample, else from the noise prediction
    and the scheduler's alphas at the level `latents` are at (DDIM's own formula; after the last step the
    latents are clean). DPM++ multistep and PNDM give none; Euler's steps do (its latents are sigma-scaled)."""
    if state.x0 is not None:
        return state.x0
    if state.next_timestep is None:
        return state.latents
    alphas = state.scheduler.alphas_cumprod.to(device=state.latents.device, dtype=torch.float32)
    alpha = alphas[int(state.next_timestep)]
    latents, pred = state.latents.float(), state.noise_pred.float()
    if getattr(state.scheduler.config, "prediction_type", "epsilon") == "v_prediction":
        return alpha.sqrt() * latents - (1 - alpha).sqrt() * pred
    return (latents - (1 - alpha).sqrt() * pred) / alpha.sqrt()


def linear_rgb(x0: torch.Tensor) -> torch.Tensor:
    """(1, 4, frames, h, w) latents -> float RGB (frames, h, w, 3) in [-1, 1]-ish by the linear approximation."""
    factors = torch.tensor(SD15_LATENT_RGB_FACTORS, device=x0.device, dtype=torch.float32)
    return torch.einsum("cfhw,cr->fhwr", x0[0].float(), factors)


def side_by_side(rgb: torch.Tensor) -> np.ndarray:
    """Float RGB frames (frames, h, w, 3) in [-1, 1] -> one uint8 image (h, frames * w, 3), frame 0 leftmost
    (ComfyUI's preview_to_image scaling)."""
    frames, h, w, _ = rgb.shape
    pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(1, 0, 2, 3).reshape(h, frames * w, 3).cpu().numpy()


class TaesdDecoder:
    """TAESD's decoder (diffusers' AutoencoderTiny) turning x0 into RGB frames, `chunk` frames at a time."""

    def __init__(self, model, chunk: int = 16):
        self.model, self.chunk = model, chunk

    @torch.no_grad()
    def __call__(self, x0: torch.Tensor) -> torch.Tensor:
        model = self.model
        latents = x0[0].permute(1, 0, 2, 3).to(device=model.device, dtype=model.dtype)  # (frames, 4, h, w)
        parts = [model.decode(latents[s : s + self.chunk]).sample for s in range(0, latents.shape[0], self.chunk)]
        return torch.cat(parts).float().permute(0, 2, 3, 1)  # (frames, H, W, 3) in [-1, 1]


def load_taesd(path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> TaesdDecoder:
    """A `taesd_decoder` file as madebyollin/taesd and ComfyUI ship it (.safetensors or .pth: the decoder's
    nn.Sequential with a Clamp at index 0) loaded into diffusers' AutoencoderTiny, whose decoder is the same
    Sequential without the Clamp (it clamps in forward): key `N.rest` is `layers.{N-1}.rest`. The channel
    width is read from the file (64 for the released one)."""
    from diffusers import AutoencoderTiny

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = load_file(str(path))
    else:
        weights = torch.load(str(path), map_location="cpu", weights_only=True)
    renamed = {}
    for key, value in weights.items():
        index, _, rest = key.partition(".")
        renamed[f"layers.{int(index) - 1}.{rest}"] = value
    width = renamed["layers.0.weight"].shape[0]
    model = AutoencoderTiny(encoder_block_out_channels=(width,) * 4, decoder_block_out_channels=(width,) * 4)
    model.decoder.load_state_dict(renamed)
    model.encoder = None  # never used here
    return TaesdDecoder(model.to(device=device, dtype=dtype).eval())


def taesd_state_dict(model) -> dict[str, torch.Tensor]:
    """An AutoencoderTiny's decoder in the released file's layout (load_taesd's inverse; tests and tiny models)."""
    return {
        f"{int(k.split('.')[1]) + 1}.{k.split('.', 2)[2]}": v.contiguous()
        for k, v in model.decoder.state_dict().items()
    }


def find_preview_decoder(search, device, dtype) -> TaesdDecoder | None:
    """TAESD's decoder when a `taesd_decoder` file is in the model folders ([model.search]: ComfyUI's
    models/vae_approx, or `folders`); None (the linear approximation) when there is none or it does not load."""
    from ..weights.locate import WeightsNotFound, locate

    try:
        found = locate(TAESD_DECODER_NAME, "vae_approx", search)
    except WeightsNotFound:
        log.info("live previews: the linear approximation (no %s file in the model folders)", TAESD_DECODER_NAME)
        return None
    try:
        decoder = load_taesd(found.path, device, dtype)
    except Exception as e:  # noqa: BLE001 - a preview is never worth failing the server's start
        log.warning("live previews: %s did not load as TAESD's decoder (%s); the linear approximation", found.path, e)
        return None
    log.info("live previews: TAESD from %s", found.path)
    return decoder


class PreviewHook(StepHook):
    """After each step, x0 as RGB frames side by side to `sink`; TAESD's decoder if given, else linear."""

    def __init__(self, sink: PreviewSink, decoder: TaesdDecoder | None = None):
        self.sink, self.decoder = sink, decoder

    def __call__(self, state: StepState) -> None:
        x0 = estimate_x0(state)
        rgb = self.decoder(x0) if self.decoder is not None else linear_rgb(x0)
        self.sink(state.step + 1, side_by_side(rgb))
        return None
