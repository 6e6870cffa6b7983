"""What the config names, where each weight was found, its size and whether it looks loadable.

`python -m server models` prints it without loading anything (file headers only, or every tensor with --deep);
the server answers GET /v1/models with it plus what it actually loaded.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .checkpoint import PICKLE_SUFFIXES, CheckpointError, read_state_dict
from .convert import identify
from .ip_adapter import CLIP_VISION_NAMES, adapter_kind, find_image_encoder
from .locate import WeightsNotFound, is_tokenizer_dir, locate
from .refs import WeightRef

# role -> (kind for the folder search, what a single file must hold, folder files that must exist)
ROLES = {
    "base": ("base", "sd15", ("unet", "vae", "text_encoder", "tokenizer", "scheduler")),
    "vae": ("base", "vae", ("config.json",)),
    "tokenizer": ("tokenizer", None, ()),
    "motion_adapter": ("motion_adapter", "motion_module", ("config.json",)),
    "draft_motion_adapter": ("motion_adapter", "motion_module", ("config.json",)),
    "domain_adapter": ("lora", "lora", ()),
    "encoder": ("encoder", "sparsectrl", ("config.json",)),
    "controlnet": ("controlnet", "controlnet", ("config.json",)),
    "lora": ("lora", "lora", ()),
    "ip_adapter": ("ip_adapter", "ip_adapter", ()),
    "image_encoder": ("clip_vision", "clip_vision", ("config.json",)),
}


@dataclass
class Entry:
    role: str  # base, vae, tokenizer, motion_adapter, draft_motion_adapter, domain_adapter, encoder, controlnet,
    # lora, ip_adapter, image_encoder
    name: str  # the modality for encoders, the name for ControlNets and LoRAs, else the role
    ref: str  # as configured
    found: bool
    path: str | None = None
    source: str | None = None  # path | search | hf-cache | built
    format: str | None = None  # diffusers folder | .safetensors | .ckpt | tiny random model
    size_bytes: int | None = None
    loadable: bool | None = None  # None: not checked
    detail: str = ""  # what it holds, or why it cannot be used
    condition_input: str | None = None  # encoders: "latents" (RGB-type) or "pixels" (scribble-type)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _keys(path: Path, deep: bool) -> dict[str, Any]:
    """The weight names in a file: from the safetensors header, or (deep / .ckpt) by reading it safely."""
    if path.suffix.lower() == ".safetensors" and not deep:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                return dict.fromkeys(f.keys())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from e
    if path.suffix.lower() in PICKLE_SUFFIXES and not deep:
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt)")
        return {}  # names need unpickling: only with --deep
    return read_state_dict(path)


def _condition_input(keys: dict[str, Any], folder: Path | None) -> str | None:
    if folder is not None:
        try:
            config = json.loads((folder / "config.json").read_text())
        except (OSError, ValueError):
            return None
        return "latents" if config.get("use_simplified_condition_embedding") else "pixels"
    if not keys:
        return None
    return "latents" if "controlnet_cond_embedding.weight" in keys else "pixels"


def _identify(role: str, keys: dict[str, Any]) -> str:
    """convert.identify, plus the IP-Adapter's two files (weights/ip_adapter.py reads them at load time)."""
    if role == "ip_adapter" and any(k.startswith("image_proj.") for k in keys):
        if not any(k.startswith("ip_adapter.") for k in keys):
            return "unknown"
        return "ip_adapter"
    if role == "image_encoder" and "visual_projection.weight" in keys:
        return "clip_vision" if any(k.startswith("vision_model.") for k in keys) else "unknown"
    return identify(keys)


def check(role: str, name: str, ref: WeightRef, search, deep: bool = False) -> Entry:
    kind, expected, folder_parts = ROLES[role]
    entry = Entry(role, name, ref.ref, found=False)
    try:
        located = locate(ref.ref, kind, search)
    except WeightsNotFound as e:
        entry.detail = str(e)
        return entry
    path = located.path
    entry.found, entry.path, entry.source = True, str(path), located.source
    entry.size_bytes = located.size_bytes
    if path.is_dir():
        entry.format = "transformers folder" if role == "image_encoder" else "diffusers folder"
        missing = [p for p in folder_parts if not (path / p).exists()]
        if role == "tokenizer":  # the test the loader applies (engine/models.py find_tokenizer)
            ok = is_tokenizer_dir(path) or is_tokenizer_dir(path / "tokenizer")
            missing = [] if ok else ["tokenizer.json (or vocab.json and merges.txt)"]
        if role == "vae" and (path / "vae").is_dir():
            missing = []
        entry.loadable = not missing
        entry.detail = f"lacks {', '.join(missing)}" if missing else entry.format.replace("folder", "layout")
        if role == "encoder":
            entry.condition_input = _condition_input({}, path)
        return entry
    entry.format = path.suffix.lower()
    try:
        keys = _keys(path, deep)
    except CheckpointError as e:
        entry.loadable, entry.detail = False, str(e)
        return entry
    if role == "encoder":
        entry.condition_input = _condition_input(keys, None)
    if not keys:
        entry.detail = "pickled checkpoint: read safely at load time (--deep checks it now)"
        return entry
    found = _identify(role, keys)
    if role == "vae":
        ok = any(k.startswith(("encoder.", "decoder.", "first_stage_model.")) for k in keys)
        found = "vae" if ok else found
    entry.loadable = found == expected
    entry.detail = f"holds: {found}" if entry.loadable else f"holds {found}, expected {expected}"
    if entry.loadable and role == "ip_adapter":  # the kind as the loader tells it (or why it would refuse it)
        try:
            entry.detail += f" ({adapter_kind(path, {k.removeprefix('image_proj.') for k in keys})})"
        except CheckpointError as e:
            entry.loadable, entry.detail = False, str(e)
    return entry


def configured(section) -> list[tuple[str, str, WeightRef]]:
    """(role, name, ref) for every weight the [model] section names."""
    out = []
    for role in ("base", "vae", "tokenizer", "motion_adapter", "draft_motion_adapter", "domain_adapter"):
        ref = getattr(section, role)
        if ref is not None:
            out.append((role, role, ref))
    out += [("encoder", modality, ref) for modality, ref in section.encoders.items()]
    out += [("controlnet", name, ref) for name, ref in section.controlnets.items()]
    out += [("lora", name, ref) for name, ref in section.loras.items()]
    if section.ip_adapter is not None:
        out.append(("ip_adapter", "ip_adapter", section.ip_adapter.adapter))
        if section.ip_adapter.image_encoder is not None:
            out.append(("image_encoder", "image_encoder", section.ip_adapter.image_encoder))
    return out


def inventory(section, deep: bool = False) -> list[Entry]:
    entries = []
    for role, name, ref in configured(section):
        if role == "base" and ref.ref == "tiny":
            entries.append(Entry(role, name, "tiny", True, source="built", format="tiny random model", loadable=True))
            continue
        entries.append(check(role, name, ref, section.search, deep))
        if role == "ip_adapter" and section.ip_adapter.image_encoder is None:
            entries.append(_default_image_encoder(entries[-1], section, deep))
    return entries


def _default_image_encoder(adapter: Entry, section, deep: bool) -> Entry:
    """The encoder the loader takes when none is configured (ip_adapter.find_image_encoder)."""
    found = find_image_encoder(Path(adapter.path) if adapter.path else None, section.search)
    if found is not None:
        return check("image_encoder", "image_encoder", WeightRef(found[0]), section.search, deep)
    where = section.search.described("clip_vision")
    detail = f"none beside the adapter (h94's models/image_encoder) and no {CLIP_VISION_NAMES[0]} file in {where}"
    return Entry("image_encoder", "image_encoder", "", found=False, detail=detail)
