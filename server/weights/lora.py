"""LoRAs: AnimateDiff v3's domain adapter (merged once) and user LoRAs (peft adapters, turned on per request).

The domain adapter (`v3_sd15_adapter.ckpt`) is in diffusers 0.11's attention-processor LoRA layout, which today's
loaders do not read; AnimateDiff merges it into the UNet's weights as W += scale * up @ down
(animatediff/utils/convert_lora_safetensor_to_diffusers.py: load_diffusers_lora), and so do we, after checking
that every layer it names exists with the right shape.

User LoRAs (kohya/A1111/diffusers .safetensors) go through diffusers' LoRA loaders, which convert the community
layouts, into the UNet and text encoder as named peft adapters; a request turns some on with scales.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .checkpoint import CheckpointError, read_state_dict
from .locate import locate

if TYPE_CHECKING:
    from ..config import ModelSection

log = logging.getLogger(__name__)

DOMAIN_ADAPTER_EXPECTED = (
    "AnimateDiff's domain adapter LoRA (v3_sd15_adapter.ckpt: *.processor.to_q_lora.down.weight and so on)"
)


def _layer_name(down_key: str) -> str:
    """`...attn1.processor.to_out_lora.down.weight` -> `...attn1.to_out.0` (AnimateDiff's own renaming)."""
    name = down_key.replace("processor.", "").replace("_lora", "").replace(".down.weight", "")
    return name[: -len(".to_out")] + ".to_out.0" if name.endswith(".to_out") else name


def merge_domain_adapter(unet: torch.nn.Module, path: Path, scale: float) -> int:
    """Merge the adapter at `path` into `unet` (a UNetMotionModel); returns the number of layers changed."""
    state_dict = read_state_dict(path)
    downs = [k for k in state_dict if k.endswith("_lora.down.weight") and ".processor." in k]
    if not downs:
        raise CheckpointError(f"{path}: holds no attention-processor LoRA weights; expected {DOMAIN_ADAPTER_EXPECTED}")
    merges = []
    for down_key in downs:
        up_key = down_key.replace(".down.weight", ".up.weight")
        name = _layer_name(down_key)
        try:
            layer = unet.get_submodule(name)
        except AttributeError:
            raise CheckpointError(
                f"{path}: names a layer the UNet does not have ({name}); expected {DOMAIN_ADAPTER_EXPECTED} for SD1.5"
            ) from None
        if up_key not in state_dict:
            raise CheckpointError(f"{path}: has {down_key} without its {up_key}")
        down, up = state_dict[down_key].float(), state_dict[up_key].float()
        if (up.shape[0], down.shape[1]) != tuple(layer.weight.shape) or up.shape[1] != down.shape[0]:
            raise CheckpointError(
                f"{path}: the LoRA for {name} is {tuple(up.shape)} x {tuple(down.shape)}, the layer is "
                f"{tuple(layer.weight.shape)}: not made for this base model"
            )
        merges.append((layer, up, down))
    with torch.no_grad():  # only after every layer checked out: a bad file changes nothing
        for layer, up, down in merges:
            merged = layer.weight.float() + scale * (up @ down).to(layer.weight.device)
            layer.weight.copy_(merged.to(layer.weight.dtype))
    log.info("merged the domain adapter %s into %d UNet layers at scale %.2f", path.name, len(merges), scale)
    return len(merges)


def load_loras(unet, text_encoder, section: ModelSection, draft_motion: bool = False) -> dict[str, float]:
    """Load every [model.loras] entry into `unet` / `text_encoder` as a peft adapter (off until a request turns
    it on); name -> default scale. `draft_motion`: a draft motion module will be swapped into the UNet's motion
    layers, so a LoRA that changes them is refused."""
    from diffusers import AnimateDiffSparseControlNetPipeline as Pipeline

    loaded: dict[str, float] = {}
    for name, ref in section.loras.items():
        started = time.perf_counter()
        path = locate(ref.ref, "lora", section.search, allow_download=section.hub_downloads).path
        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
            if len(files) != 1:
                raise CheckpointError(f"LoRA '{name}': {path} should hold one .safetensors file")
            path = files[0]
        state_dict = read_state_dict(path)
        try:
            state_dict, alphas = Pipeline.lora_state_dict(state_dict)
            unet_part = {k: v for k, v in state_dict.items() if k.startswith("unet.")}
            te_part = {k: v for k, v in state_dict.items() if k.startswith("text_encoder.")}
            if not unet_part and not te_part:
                raise CheckpointError(f"{path}: holds no LoRA weights for an SD1.5 UNet or text encoder")
            if unet_part:
                Pipeline.load_lora_into_unet(unet_part, alphas, unet=unet, adapter_name=name)
            if te_part:
                Pipeline.load_lora_into_text_encoder(
                    te_part, alphas, text_encoder=text_encoder, prefix="text_encoder", adapter_name=name
                )
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"{path}: not a LoRA for this base model ({type(e).__name__}: {str(e).strip()[:300]})"
            ) from e
        if draft_motion and any(".motion_modules." in k for k in unet_part):
            raise CheckpointError(
                f"LoRA '{name}' ({path}) changes the motion module's layers, which the draft motion module "
                "replaces for drafts: remove [model] draft_motion_adapter or this LoRA"
            )
        loaded[name] = ref.scale
        log.info("loaded LoRA '%s' from %s in %.1f s", name, path.name, time.perf_counter() - started)
    return loaded
