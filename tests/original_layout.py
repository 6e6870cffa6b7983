"""Write tiny diffusers weights back in the layouts the original files use, to test our loaders on them.

The key names come from the inverse of diffusers' own conversion code (`convert_animatediff_checkpoint_to_diffusers`
for AnimateDiff motion modules and SparseCtrl encoders; `convert_ldm_*_checkpoint` for single-file SD1.5) and
were checked against the official AnimateDiff model classes (guoyww/AnimateDiff `animatediff/models/`), which
load these files with strict key matching (see docs/weights.md, "How the formats were checked").
"""

from __future__ import annotations

import math
import re

import torch

# diffusers name -> AnimateDiff name inside a motion module's transformer block.
_MOTION_BLOCK_RENAMES = (
    (".attn1.", ".attention_blocks.0."),
    (".attn2.", ".attention_blocks.1."),
    (".norm1.", ".norms.0."),
    (".norm2.", ".norms.1."),
    (".norm3.", ".ff_norm."),
)
_MOTION_MODULE = re.compile(r"(\.motion_modules\.\d+\.)(.*)$")


def _sinusoidal_pe(max_len: int, dim: int) -> torch.Tensor:
    """The `pos_encoder.pe` buffer AnimateDiff checkpoints carry (diffusers recomputes it and skips it)."""
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * div_term)
    pe[0, :, 1::2] = torch.cos(position * div_term)
    return pe


def animatediff_state_dict(diffusers_state_dict: dict[str, torch.Tensor], max_len: int = 32) -> dict:
    """A MotionAdapter's or SparseControlNetModel's state dict with AnimateDiff's original key names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in diffusers_state_dict.items():
        if key.endswith(".pos_embed.pe"):
            continue  # diffusers' buffer; the original files carry it as attention_blocks.N.pos_encoder.pe
        match = _MOTION_MODULE.search(key)
        if match is None:
            out[key] = value.clone()
            continue
        prefix, rest = key[: match.start(1)] + match.group(1), "." + match.group(2)
        for new, old in _MOTION_BLOCK_RENAMES:
            rest = rest.replace(new, old) if ".transformer_blocks." in rest else rest
        out[prefix + "temporal_transformer" + rest] = value.clone()
        if rest.endswith(".attention_blocks.0.to_q.weight") or rest.endswith(".attention_blocks.1.to_q.weight"):
            pe_key = prefix + "temporal_transformer" + rest.replace(".to_q.weight", ".pos_encoder.pe")
            out[pe_key] = _sinusoidal_pe(max_len, value.shape[1])
    return out


def domain_adapter_state_dict(unet_attention_dims: dict[str, tuple[int, int]], rank: int, seed: int = 0) -> dict:
    """A random LoRA in `v3_sd15_adapter.ckpt`'s layout (diffusers 0.11 attention-processor LoRA keys).

    `unet_attention_dims` maps an attention's path (e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1")
    and projection ("to_q") to (in_features, out_features), e.g. {"...attn1.to_q": (32, 32)}.
    """
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for path, (fan_in, fan_out) in unet_attention_dims.items():
        attention, projection = path.rsplit(".", 1)
        base = f"{attention}.processor.{projection}_lora"
        out[f"{base}.down.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.1
        out[f"{base}.up.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.1
    return out


# ---------------------------------------------------------------------------------------------------------------
# Single-file Stable Diffusion (the LDM layout of A1111/ComfyUI/Civitai checkpoints)

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_prefixes(config: dict) -> dict[str, tuple[str, bool]]:
    """diffusers block prefix -> (LDM prefix, is a resnet) for a UNet2DConditionModel config."""
    per = config["layers_per_block"]
    out: dict[str, tuple[str, bool]] = {}
    for i in range(len(config["block_out_channels"])):
        for j in range(per):
            out[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{1 + i * (per + 1) + j}.0.", True)
            out[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{1 + i * (per + 1) + j}.1.", False)
        out[f"down_blocks.{i}.downsamplers.0.conv."] = (f"input_blocks.{(i + 1) * (per + 1)}.0.op.", False)
        for j in range(per + 1):
            out[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{i * (per + 1) + j}.0.", True)
            out[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{i * (per + 1) + j}.1.", False)
        upsampler_slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1
        out[f"up_blocks.{i}.upsamplers.0."] = (f"output_blocks.{i * (per + 1) + per}.{upsampler_slot}.", False)
    out["mid_block.attentions.0."] = ("middle_block.1.", False)
    for j in range(2):
        out[f"mid_block.resnets.{j}."] = (f"middle_block.{2 * j}.", True)
    return out


def _vae_prefixes(config: dict) -> dict[str, tuple[str, str]]:
    """diffusers block prefix -> (LDM prefix, "resnet" | "attention" | "") for an AutoencoderKL config."""
    n = len(config["block_out_channels"])
    out: dict[str, tuple[str, str]] = {}
    for i in range(n):
        for j in range(config["layers_per_block"] + 1):
            out[f"encoder.down_blocks.{i}.resnets.{j}."] = (f"encoder.down.{i}.block.{j}.", "resnet")
            out[f"decoder.up_blocks.{i}.resnets.{j}."] = (f"decoder.up.{n - 1 - i}.block.{j}.", "resnet")
        out[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = (f"encoder.down.{i}.downsample.conv.", "")
        out[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = (f"decoder.up.{n - 1 - i}.upsample.conv.", "")
    for part in ("encoder", "decoder"):
        for j in range(2):
            out[f"{part}.mid_block.resnets.{j}."] = (f"{part}.mid.block_{j + 1}.", "resnet")
        out[f"{part}.mid_block.attentions.0."] = (f"{part}.mid.attn_1.", "attention")
    return out


def _by_prefix(key: str, prefixes: dict):
    for prefix in sorted(prefixes, key=len, reverse=True):
        if key.startswith(prefix):
            return prefix, prefixes[prefix]
    raise KeyError(f"no LDM name known for {key}")


def ldm_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """One SD checkpoint in the LDM layout from diffusers modules (UNet2DConditionModel, AutoencoderKL, CLIP)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    out: dict[str, torch.Tensor] = {}
    top = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    prefixes = _unet_prefixes(unet.config)
    for key, value in unet.state_dict().items():
        if key in top:
            name = top[key]
        else:
            prefix, (ldm_prefix, is_resnet) = _by_prefix(key, prefixes)
            rest = key[len(prefix) :]
            if is_resnet:
                head, tail = rest.split(".", 1)
                rest = f"{_RESNET_TO_LDM[head]}.{tail}"
            name = ldm_prefix + rest
        out["model.diffusion_model." + name] = value.clone()

    vae_top = DIFFUSERS_TO_LDM_MAPPING["vae"]
    vae_prefixes = _vae_prefixes(vae.config)
    for key, value in vae.state_dict().items():
        if key in vae_top:
            name = vae_top[key]
        else:
            prefix, (ldm_prefix, part) = _by_prefix(key, vae_prefixes)
            rest = key[len(prefix) :]
            if part == "resnet":
                rest = rest.replace("conv_shortcut.", "nin_shortcut.")
            elif part == "attention":
                head, tail = rest.rsplit(".", 1)
                rest = f"{_VAE_ATTENTION_TO_LDM[head]}.{tail}"
                if value.ndim == 2:  # LDM's attention uses 1x1 convolutions
                    value = value[:, :, None, None]
            name = ldm_prefix + rest
        out["first_stage_model." + name] = value.clone()

    for key, value in text_encoder.state_dict().items():
        name = key if key.startswith("text_model.") else "text_model." + key
        out["cond_stage_model.transformer." + name] = value.clone()
    return out


def controlnet_ldm_state_dict(controlnet, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """A ControlNetModel's state dict in lllyasviel's layout (control_model.* in his .pth files; prefix "" for
    the prefixless files ComfyUI and A1111 users keep): the inverse of diffusers' convert_controlnet_checkpoint."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["controlnet"]["layers"]
    config = dict(controlnet.config, up_block_types=["UpBlock2D"] * len(controlnet.config["block_out_channels"]))
    prefixes = {p: v for p, v in _unet_prefixes(config).items() if p.startswith(("down_blocks", "mid_block"))}
    out: dict[str, torch.Tensor] = {}
    for key, value in controlnet.state_dict().items():
        if key in top:
            name = top[key]
        elif key.startswith("controlnet_cond_embedding.blocks."):
            index, rest = key.removeprefix("controlnet_cond_embedding.blocks.").split(".", 1)
            name = f"input_hint_block.{2 * (int(index) + 1)}.{rest}"
        elif key.startswith("controlnet_down_blocks."):
            index, rest = key.removeprefix("controlnet_down_blocks.").split(".", 1)
            name = f"zero_convs.{index}.0.{rest}"
        elif key.startswith("controlnet_mid_block."):
            name = "middle_block_out.0." + key.removeprefix("controlnet_mid_block.")
        else:
            found, (ldm_prefix, is_resnet) = _by_prefix(key, prefixes)
            rest = key[len(found) :]
            if is_resnet:
                head, tail = rest.split(".", 1)
                rest = f"{_RESNET_TO_LDM[head]}.{tail}"
            name = ldm_prefix + rest
        out[prefix + name] = value.clone().contiguous()
    return out


# ---------------------------------------------------------------------------------------------------------------
# The whole tiny model as the files artists download


def write_original_files(tiny_root, out) -> dict[str, object]:
    """The tiny model in every original layout, as named on the hub/Civitai; returns name -> path.

    Also writes `configs/`: the tiny model's diffusers config folders without weights or tokenizer (what a
    different architecture's single files need, as the shipped SD1.5/v3 configs do for the real ones).
    """
    import json
    import shutil
    from pathlib import Path

    from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, SparseControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from server.engine.tiny import build_tiny_controlnet

    tiny_root, out = Path(tiny_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = tiny_root / "base"
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    vae = AutoencoderKL.from_pretrained(base / "vae")
    text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder")
    sd = ldm_state_dict(unet, vae, text_encoder)
    paths: dict[str, object] = {}
    save_file(sd, out / "tinyVision_v1.safetensors")
    torch.save({"state_dict": sd, "global_step": 1}, out / "tinyVision_v1.ckpt")  # as SD .ckpt files wrap it
    save_file(
        {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}, out / "tinyVision_noVAE.safetensors"
    )
    save_file(
        {k.removeprefix("first_stage_model."): v for k, v in sd.items() if k.startswith("first_stage_model.")},
        out / "tiny-vae-ft-mse.safetensors",
    )
    paths.update(
        sd15=out / "tinyVision_v1.safetensors",
        sd15_ckpt=out / "tinyVision_v1.ckpt",
        sd15_novae=out / "tinyVision_noVAE.safetensors",
        vae=out / "tiny-vae-ft-mse.safetensors",
    )

    motion = animatediff_state_dict(MotionAdapter.from_pretrained(tiny_root / "motion_adapter").state_dict())
    torch.save(motion, out / "v3_sd15_mm.ckpt")
    paths["motion_module"] = out / "v3_sd15_mm.ckpt"
    for modality, name in (("lineart", "scribble"), ("rgb", "rgb")):
        encoder = SparseControlNetModel.from_pretrained(tiny_root / "encoders" / modality)
        path = out / f"v3_sd15_sparsectrl_{name}.ckpt"
        torch.save({"controlnet": animatediff_state_dict(encoder.state_dict())}, path)
        paths[f"sparsectrl_{name}"] = path

    # The depth ControlNet as lllyasviel ships it (.pth, control_model.*) and as ComfyUI/A1111 users keep it
    # (prefixless .safetensors).
    controlnet_folder = build_tiny_controlnet(tiny_root / "controlnets" / "depth", base / "unet")
    controlnet = ControlNetModel.from_pretrained(controlnet_folder)
    torch.save(controlnet_ldm_state_dict(controlnet), out / "control_v11f1p_sd15_depth.pth")
    save_file(controlnet_ldm_state_dict(controlnet, prefix=""), out / "control_v11f1p_sd15_depth_fp16.safetensors")
    paths.update(
        controlnet=controlnet_folder,
        controlnet_pth=out / "control_v11f1p_sd15_depth.pth",
        controlnet_prefixless=out / "control_v11f1p_sd15_depth_fp16.safetensors",
    )

    dims = {}
    for module_name, module in unet.named_modules():
        if module_name.endswith((".attn1", ".attn2")):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                layer = module.get_submodule(proj)
                dims[f"{module_name}.{proj.removesuffix('.0')}"] = (layer.in_features, layer.out_features)
    torch.save({"state_dict": domain_adapter_state_dict(dims, rank=4)}, out / "v3_sd15_adapter.ckpt")
    paths["domain_adapter"] = out / "v3_sd15_adapter.ckpt"

    configs = out / "configs"
    for sub in ("unet", "vae", "text_encoder", "scheduler"):
        shutil.copytree(base / sub, configs / "base" / sub, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    (configs / "motion_adapter").mkdir(parents=True)
    shutil.copy(tiny_root / "motion_adapter" / "config.json", configs / "motion_adapter" / "config.json")
    for modality in ("lineart", "rgb"):
        (configs / modality).mkdir()
        shutil.copy(tiny_root / "encoders" / modality / "config.json", configs / modality / "config.json")
    (configs / "controlnet").mkdir()
    shutil.copy(controlnet_folder / "config.json", configs / "controlnet" / "config.json")
    paths["configs"] = configs
    paths["tokenizer"] = base / "tokenizer"
    (out / "files.json").write_text(json.dumps({k: str(v) for k, v in paths.items()}))
    return paths


def kohya_lora_state_dict(unet, text_encoder, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random LoRA in the kohya-ss layout A1111/Civitai LoRAs use (what diffusers' `lora_state_dict` converts):
    `lora_unet_<module path with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`, and `lora_te_...` for CLIP."""
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}

    def add(prefix: str, name: str, layer) -> None:
        key = prefix + name.replace(".", "_")
        out[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) * 0.2
        out[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.2
        out[f"{key}.alpha"] = torch.tensor(float(rank))

    for name, module in unet.named_modules():
        if name.endswith((".attn1", ".attn2")) and "motion_modules" not in name:
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                add("lora_unet_", f"{name}.{proj}", module.get_submodule(proj))
    for name, module in text_encoder.named_modules():
        if name.endswith(".self_attn"):
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                full = name if name.startswith("text_model.") else f"text_model.{name}"
                add("lora_te_", f"{full}.{proj}", module.get_submodule(proj))
    return out
