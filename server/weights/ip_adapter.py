"""An SD1.5 IP-Adapter and its CLIP image encoder from the files users have (docs/weights.md), read safely.

Adapter files: h94/IP-Adapter's `models/ip-adapter_sd15`, `ip-adapter-plus_sd15`, `ip-adapter-plus-face_sd15`, as
.safetensors (flat "image_proj.*" / "ip_adapter.*" keys) or .bin (the two nested), wherever they are (h94's folder,
ComfyUI's models/ipadapter, the HF cache). They become the nested dict diffusers' load_ip_adapter takes, which
does the installing (engine/reference.py). .bin files are read as tensors only (checkpoint.read_pickle).

Image encoders: a transformers folder (h94's `models/image_encoder`: config.json + weights) or one file without a
config (ComfyUI's models/clip_vision, e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors, which is h94's
model.safetensors renamed): read with the shipped ViT-H/14 config (configs/clip_vit_h14), its dimensions taken from
the file's tensors. The attention heads cannot be read from tensors: 16, as every CLIP vision tower the SD1.5
IP-Adapters use has (ViT-H/14, ViT-bigG/14).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, read_pickle, read_state_dict
from .locate import Located, SearchFolders, WeightsNotFound, locate

CONFIGS = Path(__file__).parent / "configs"
KINDS = ("plain", "plus", "plus-face")
VISION_HEADS = 16
# What a ComfyUI install calls the ViT-H/14 image encoder (looked for when the config names none).
CLIP_VISION_NAMES = ("CLIP-ViT-H-14-laion2B-s32B-b79K", "clip_vision_h", "clip-vit-h-14", "model")


@dataclass
class IPAdapterWeights:
    """An IP-Adapter ready for diffusers' load_ip_adapter (engine/reference.py installs it)."""

    name: str  # the adapter file's stem, e.g. ip-adapter-plus_sd15
    kind: str  # plain | plus | plus-face
    state_dict: dict  # {"image_proj": {...}, "ip_adapter": {...}}, h94's original names, on the CPU
    image_encoder: Any  # transformers CLIPVisionModelWithProjection, eval, on the CPU
    feature_extractor: Any  # transformers CLIPImageProcessor at the encoder's image size (diffusers' own choice)
    adapter_path: Path
    image_encoder_path: Path


def read_ip_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"image_proj": {...}, "ip_adapter": {...}} from an adapter file in either of h94's forms, read safely."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        flat = read_state_dict(path)
        nested: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
        for key, tensor in flat.items():
            part, _, name = key.partition(".")
            if part in nested:
                nested[part][name] = tensor
    else:
        nested = _read_nested_pickle(path)
    if not nested.get("image_proj") or not nested.get("ip_adapter"):
        raise CheckpointError(
            f"{path}: not an IP-Adapter (no image_proj and ip_adapter weights); expected h94/IP-Adapter's "
            "ip-adapter_sd15 / ip-adapter-plus_sd15 / ip-adapter-plus-face_sd15 (.safetensors or .bin)"
        )
    return nested


def _read_nested_pickle(path: Path) -> dict:
    """A .bin's nested dict of tensors, through the project's safe reader (checkpoint.py: weights_only)."""
    if path.suffix.lower() not in (".bin", ".pt", ".pth", ".ckpt"):
        raise CheckpointError(f"{path}: unknown weights format {path.suffix!r}; expected .safetensors or .bin")
    data = read_pickle(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a dictionary of weights")
    return {part: dict(data[part]) for part in ("image_proj", "ip_adapter") if isinstance(data.get(part), dict)}


def adapter_kind(path: Path, proj_keys: Collection[str]) -> str:
    """plain (one image embedding to 4 tokens), plus (a Resampler over the encoder's hidden states), plus-face
    (the plus shape, trained on faces: told by its file name, as h94 names it), from the names of the adapter's
    image_proj weights (the loaded dict's, or a file header's for `models`). Other IP-Adapters (full-face, FaceID,
    SDXL) are refused by name."""
    if "proj.weight" in proj_keys:
        return "plain"
    if "latents" in proj_keys and "proj_in.weight" in proj_keys:
        return "plus-face" if "face" in Path(path).name.lower() else "plus"
    raise CheckpointError(
        f"{path}: an IP-Adapter of a kind this server does not take (image_proj holds {sorted(proj_keys)[:3]}...); "
        f"take ip-adapter_sd15, ip-adapter-plus_sd15 or ip-adapter-plus-face_sd15"
    )


def vision_config(path: Path, weights: dict[str, torch.Tensor]):
    """A CLIPVisionConfig for an image encoder file: its folder's config.json, else the shipped ViT-H/14 config with
    the dimensions the file's tensors have (so a smaller tower, the tiny one included, reads the same way)."""
    from transformers import CLIPVisionConfig

    path = Path(path)
    if path.is_dir():
        return CLIPVisionConfig.from_pretrained(path)
    config = json.loads((CONFIGS / "clip_vit_h14" / "config.json").read_text())
    try:
        patch = weights["vision_model.embeddings.patch_embedding.weight"]
        positions = weights["vision_model.embeddings.position_embedding.weight"].shape[0]
        config |= {
            "hidden_size": patch.shape[0],
            "patch_size": patch.shape[2],
            "image_size": round((positions - 1) ** 0.5) * patch.shape[2],
            "intermediate_size": weights["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
            "projection_dim": weights["visual_projection.weight"].shape[0],
            "num_hidden_layers": 1
            + max(int(m[1]) for k in weights if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))),
            "num_attention_heads": VISION_HEADS,
        }
    except (KeyError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a CLIP vision encoder in transformers' layout (no {e}); expected h94/IP-Adapter's "
            "models/image_encoder or ComfyUI's CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
        ) from None
    return CLIPVisionConfig(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})


def load_image_encoder(path: Path, dtype: torch.dtype):
    """The CLIP vision tower with its projection, eval, on the CPU, in `dtype`: weights read safely here, given to
    transformers' own loading (from_pretrained with a state dict: the same module as from a folder, bit for bit)."""
    from transformers import CLIPVisionModelWithProjection

    path = Path(path)
    weights = read_state_dict(_weights_file(path) if path.is_dir() else path)
    config = vision_config(path, weights)
    try:
        model, info = CLIPVisionModelWithProjection.from_pretrained(
            None, config=config, state_dict=weights, dtype=dtype, output_loading_info=True
        )
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: the image encoder's weights do not fit its config ({e})") from e
    missing = sorted(k for k in info["missing_keys"] if not k.endswith("position_ids"))
    if missing:
        raise CheckpointError(
            f"{path}: the image encoder lacks {len(missing)} weights ({missing[0]}, ...): not a CLIP vision model "
            "with projection (CLIPVisionModelWithProjection) of this file's shapes"
        )
    return model.eval().requires_grad_(False)


def _weights_file(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no model.safetensors (or pytorch_model.bin) in the image encoder's folder")


def check_fits(state_dict: dict, kind: str, encoder, adapter_path: Path, encoder_path: Path) -> None:
    """The adapter reads what this encoder gives: the projected embedding (plain) or its hidden states (plus)."""
    proj = state_dict["image_proj"]
    wanted, given, what = (
        (proj["proj.weight"].shape[1], encoder.config.projection_dim, "projected embedding")
        if kind == "plain"
        else (proj["proj_in.weight"].shape[1], encoder.config.hidden_size, "hidden states")
    )
    if wanted != given:
        raise CheckpointError(
            f"{adapter_path} reads an image {what} of {wanted} values, and the image encoder {encoder_path} gives "
            f"{given}: the SD1.5 IP-Adapters take CLIP ViT-H/14 (h94/IP-Adapter models/image_encoder), not the "
            "SDXL one (sdxl_models/image_encoder, ViT-bigG)"
        )


def load_ip_adapter_weights(adapter: Path, image_encoder: Path, dtype: torch.dtype) -> IPAdapterWeights:
    """Read, check and pair an adapter file and its image encoder (CheckpointError says what is wrong)."""
    from transformers import CLIPImageProcessor

    state_dict = read_ip_adapter(adapter)
    kind = adapter_kind(adapter, state_dict["image_proj"])
    encoder = load_image_encoder(image_encoder, dtype)
    check_fits(state_dict, kind, encoder, adapter, image_encoder)
    size = encoder.config.image_size  # as diffusers' load_ip_adapter makes its feature extractor
    extractor = CLIPImageProcessor(size=size, crop_size=size)
    name = Path(adapter).stem
    return IPAdapterWeights(name, kind, state_dict, encoder, extractor, Path(adapter), Path(image_encoder))


def default_image_encoder(adapter: Path) -> Path | None:
    """h94's layout: `image_encoder/` beside the adapter's folder's files (models/ip-adapter_sd15.safetensors ->
    models/image_encoder)."""
    folder = Path(adapter).parent / "image_encoder"
    return folder if (folder / "config.json").is_file() else None


def find_image_encoder(adapter: Path | None, search: SearchFolders) -> tuple[str, Located] | None:
    """(ref, where) of the image encoder taken when [model.ip_adapter] names none: h94's image_encoder folder beside
    the adapter, else a CLIP_VISION_NAMES file in the clip_vision folders; None: neither. The loader
    (engine/models.py) and the listing (inventory.py) both ask here."""
    beside = default_image_encoder(adapter) if adapter is not None else None
    if beside is not None:
        return str(beside), Located(beside.resolve(), "path")
    for name in CLIP_VISION_NAMES:
        try:
            return name, locate(name, "clip_vision", search)
        except WeightsNotFound:
            continue
    return None
