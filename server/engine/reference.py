"""A look held across shots: the IP-Adapter installed in the UNet once, turned on only for a job with a reference.

diffusers' own loading (IPAdapterMixin.load_ip_adapter) installs the adapter: its image projection as the UNet's
encoder_hid_proj and an IP-Adapter attention processor on every cross-attention. Here both are kept beside the
UNet's own processors and swapped in for a job with a reference (strength above 0), and out after it, so a job
without one runs the very modules it ran before: bit for bit. The image encoder runs once per job, through the
pipeline's own prepare_ip_adapter_image_embeds, and leaves the device before denoising (weights.md: ~1.3 GB in
half precision for ViT-H/14). The adapter's scale is set per step from the reference's guidance window
(windowed.py): 0 outside it, where diffusers' processors skip the image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..request.model import GenerationRequest


class ReferenceCondition(NamedTuple):
    """What the denoising loop needs of a job's reference: the image embeddings as the pipeline prepares them
    (one tensor per adapter, CFG's negative half first), the IP-Adapter processors whose scale it sets per step,
    the strength and the guidance window."""

    embeds: list[torch.Tensor]
    processors: list[Any]
    strength: float
    guidance: tuple[float, float]

    def set_scale(self, scale: float) -> None:
        for processor in self.processors:
            processor.scale = [scale] * len(processor.scale)

    def halves(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(negative, positive) embeddings, for CFG's halves run one after the other."""
        pairs = [e.chunk(2) for e in self.embeds]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def _bare(unet):
    """The UNet itself under a torch.compile wrapper ([performance] compile)."""
    return getattr(unet, "_orig_mod", unet)


@dataclass
class InstalledAdapter:
    """The IP-Adapter's modules, installed by diffusers and kept apart from the UNet between jobs."""

    weights: Any  # weights/ip_adapter.py IPAdapterWeights: name, kind, image encoder, feature extractor
    projection: torch.nn.Module  # diffusers' MultiIPAdapterImageProjection (the UNet's encoder_hid_proj)
    processors_on: dict[str, Any]
    processors_off: dict[str, Any]

    @property
    def ip_processors(self) -> list[Any]:
        return [p for p in self.processors_on.values() if _is_ip(p)]

    def turn_on(self, unet) -> None:
        """The processors first: a plus adapter's projection has attentions of its own, which set_attn_processor
        would count among the UNet's."""
        unet = _bare(unet)
        unet.set_attn_processor(dict(self.processors_on))  # set_attn_processor pops from the dict it is given
        unet.encoder_hid_proj = self.projection
        unet.config.encoder_hid_dim_type = "ip_image_proj"

    def turn_off(self, unet) -> None:
        unet = _bare(unet)
        unet.encoder_hid_proj = None
        unet.config.encoder_hid_dim_type = None
        unet.set_attn_processor(dict(self.processors_off))


def _is_ip(processor) -> bool:
    """An IP-Adapter attention processor (diffusers' IPAdapterAttnProcessor*: its own key/value projections)."""
    return hasattr(processor, "to_k_ip")


def install_ip_adapter(pipe, weights) -> InstalledAdapter:
    """Load `weights` (an IPAdapterWeights) into `pipe`'s UNet with diffusers' load_ip_adapter (on the UNet's device
    and dtype), keep what it installed, and take it out again: the UNet is as it was until a job turns it on."""
    unet = _bare(pipe.unet)
    if unet.encoder_hid_proj is not None:
        raise ValueError("the UNet has an encoder_hid_proj already: one IP-Adapter per model")
    before = dict(unet.attn_processors)
    pipe.register_modules(image_encoder=weights.image_encoder, feature_extractor=weights.feature_extractor)
    pipe.load_ip_adapter(weights.state_dict, subfolder="", weight_name="", image_encoder_folder=None)
    # diffusers gives every other attention a fresh processor of its class: the UNet's own ones stay instead (and a
    # plus adapter's projection, with attentions of its own, keeps its processors inside it).
    after = unet.attn_processors
    on = {name: after[name] if _is_ip(after[name]) else processor for name, processor in before.items()}
    installed = InstalledAdapter(weights, unet.encoder_hid_proj, on, before)
    installed.turn_off(unet)
    return installed


@torch.no_grad()
def reference_condition(
    pipe, installed: InstalledAdapter, request: GenerationRequest, device, move
) -> ReferenceCondition:
    """The reference's image embeddings, by the pipeline's own prepare_ip_adapter_image_embeds (the images of one
    adapter side by side, as diffusers takes `ip_adapter_image=[[a, b]]`), with the image encoder on the device
    only for this: `move(module, device)` brings it and takes it back (the engine's move; diffusers' offload hooks
    move it themselves)."""
    reference = request.reference
    encoder = installed.weights.image_encoder
    moved = getattr(encoder, "_hf_hook", None) is None  # offloaded: the hooks move it
    if moved:
        move(encoder, device)
    try:
        embeds = pipe.prepare_ip_adapter_image_embeds([reference.decoded], None, device, 1, request.guidance_scale > 1)
    finally:
        if moved:
            move(encoder, torch.device("cpu"))
    guidance = (reference.guidance_start, reference.guidance_end)
    return ReferenceCondition(embeds, installed.ip_processors, reference.strength, guidance)
