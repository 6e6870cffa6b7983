"""Loading the base model, the motion module, one condition encoder per modality, the ControlNets and the LoRAs.

Each may be a diffusers folder, an HF-cache repo id or a single file (server/weights). The base (SD1.5 UNet +
motion adapter -> UNetMotionModel, VAE, text encoder) is loaded once; encoders are loaded at start too, so a
broken file is reported before any job, and swapped per request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import IPAdapterRefs, ModelSection
from ..request.model import MODALITIES
from ..weights.checkpoint import CheckpointError
from ..weights.convert import (
    CONFIGS,
    load_controlnet_file,
    load_motion_module_file,
    load_sd15_file,
    load_sparsectrl_file,
    load_vae_file,
)
from ..weights.ip_adapter import (
    CLIP_VISION_NAMES,
    IPAdapterWeights,
    find_image_encoder,
    load_ip_adapter_weights,
    read_ip_adapter,
)
from ..weights.locate import WeightsNotFound, is_tokenizer_dir, locate
from ..weights.lora import load_loras, merge_domain_adapter
from ..weights.refs import WeightRef
from .loaded import LoadedModel
from .motion_modules import build_motion_unet
from .performance import pick_offload
from .temporal_norm import use_per_frame_temporal_norm

log = logging.getLogger(__name__)

TINY_NAME = "tiny-random"


class _DropEmptyFp32Warning(logging.Filter):
    """diffusers warns that modules "should be kept in float32: []" when casting UNetMotionModel: an empty list."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropEmptyFp32Warning())


class ModelLoadError(RuntimeError):
    """Weights that cannot be loaded; the message names the folder and what was expected there."""


def resolve_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    dtypes = {
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
    }
    try:
        return dtypes[name]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {name!r}; use one of {sorted(dtypes)} or 'auto'") from None


def _located(ref: WeightRef, kind: str, what: str, section: ModelSection):
    try:
        return locate(ref.ref, kind, section.search, allow_download=section.hub_downloads)
    except WeightsNotFound as e:
        raise ModelLoadError(f"{what}: {e}") from None


def _load(what: str, where: Path, loader, *args, **kwargs):
    """Run `loader`; any failure becomes one ModelLoadError naming `what` and `where`."""
    try:
        return loader(*args, **kwargs)
    except ModelLoadError:
        raise
    except CheckpointError as e:
        raise ModelLoadError(f"could not load the {what}: {e}") from e
    except Exception as e:
        raise ModelLoadError(f"could not load the {what} from {where}: {type(e).__name__}: {e}") from e


def _require_folder_parts(folder: Path, parts: tuple[str, ...], what: str) -> None:
    missing = [p for p in parts if not (folder / p).exists()]
    if missing:
        raise ModelLoadError(
            f"{what} folder {folder} lacks {', '.join(missing)}: expected a diffusers folder "
            f"({', '.join(parts)}) or a single .safetensors/.ckpt file"
        )


def find_tokenizer(section: ModelSection, config_dir: Path | None) -> Path:
    """The CLIP tokenizer for a single-file base, which carries none (see [model] tokenizer)."""
    from huggingface_hub import try_to_load_from_cache

    if section.tokenizer is not None:
        found = _located(section.tokenizer, "tokenizer", "tokenizer", section).path
        return found / "tokenizer" if is_tokenizer_dir(found / "tokenizer") else found
    candidates = [config_dir / "tokenizer"] if config_dir else []
    candidates += [root / "sd1_tokenizer" for root in section.search.for_kind("tokenizer")]
    for folder in candidates:
        if is_tokenizer_dir(folder):
            return folder
    for repo, sub in HF_TOKENIZERS:
        for name in ("tokenizer.json", "vocab.json"):
            found = try_to_load_from_cache(repo, f"{sub}{name}")
            if isinstance(found, str) and is_tokenizer_dir(Path(found).parent):
                return Path(found).parent
    raise ModelLoadError(
        "a single-file base carries no CLIP tokenizer and none was found: set [model] tokenizer to a folder with "
        "tokenizer.json (or vocab.json and merges.txt), point [model.search] comfyui at a ComfyUI install, or run "
        "`python -m server download` (it caches stable-diffusion-v1-5's)"
    )


# Where a CLIP ViT-L/14 tokenizer may sit in the HF cache: (repo, subfolder/).
HF_TOKENIZERS = (
    ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer/"),
    ("runwayml/stable-diffusion-v1-5", "tokenizer/"),
    ("openai/clip-vit-large-patch14", ""),
)


def _load_vae(ref: WeightRef, section: ModelSection, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    where = _located(ref, "base", "VAE", section).path
    if where.is_dir():
        sub = where / "vae" if (where / "vae" / "config.json").is_file() else where
        return _load("VAE", sub, AutoencoderKL.from_pretrained, sub, torch_dtype=dtype)
    return _load("VAE", where, load_vae_file, where, dtype, Path(ref.config) if ref.config else None)


def load_base(section: ModelSection, ref: WeightRef, data_dir: Path, dtype: torch.dtype) -> dict[str, Any]:
    """tokenizer, text_encoder, vae, unet (2-D) and scheduler_config from a diffusers folder or a single file."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    where = _located(ref, "base", "base model", section).path
    if where.is_dir():
        _require_folder_parts(where, ("unet", "vae", "text_encoder", "tokenizer", "scheduler"), "base model")
        parts = {
            "tokenizer": _load("tokenizer", where, CLIPTokenizer.from_pretrained, where / "tokenizer"),
            "text_encoder": _load(
                "text encoder", where, CLIPTextModel.from_pretrained, where / "text_encoder", torch_dtype=dtype
            ),
            "vae": _load("VAE", where, AutoencoderKL.from_pretrained, where / "vae", torch_dtype=dtype),
            "unet": _load("UNet", where, UNet2DConditionModel.from_pretrained, where / "unet", torch_dtype=dtype),
        }
        scheduler_dir = where / "scheduler"
    else:
        config_dir = Path(ref.config).expanduser() if ref.config else None
        cache_root = data_dir / "converted" if section.cache_converted else None
        parts = _load("base model", where, load_sd15_file, where, dtype, cache_root, config_dir)
        tokenizer_dir = find_tokenizer(section, config_dir)
        parts["tokenizer"] = _load("tokenizer", tokenizer_dir, CLIPTokenizer.from_pretrained, tokenizer_dir)
        scheduler_dir = (config_dir or CONFIGS / "sd15") / "scheduler"
    if section.vae is not None:
        parts["vae"] = _load_vae(section.vae, section, dtype)
    if parts["vae"] is None:
        raise ModelLoadError(
            f'{where} has no VAE inside (a "noVAE" model): set [model] vae, e.g. "stabilityai/sd-vae-ft-mse" '
            "or vae-ft-mse-840000-ema-pruned.safetensors"
        )
    try:
        parts["scheduler_config"] = dict(DDIMScheduler.load_config(scheduler_dir))
    except Exception as e:
        raise ModelLoadError(f"no scheduler config in {scheduler_dir}: {e}") from e
    return parts


def _load_module(ref: WeightRef, kind: str, what: str, section, data_dir: Path, dtype, cls, file_loader):
    """A diffusers folder via `cls.from_pretrained`, or a single file via `file_loader` (converted, cached)."""
    where = _located(ref, kind, what, section).path
    if where.is_dir():
        _require_folder_parts(where, ("config.json",), what)
        return _load(what, where, cls.from_pretrained, where, torch_dtype=dtype)
    cache_root = data_dir / "converted" if section.cache_converted else None
    config = Path(ref.config).expanduser() if ref.config else None
    return _load(what, where, file_loader, where, dtype, cache_root, config)


def load_motion_adapter(ref: WeightRef, what: str, section: ModelSection, data_dir: Path, dtype: torch.dtype):
    from diffusers import MotionAdapter

    return _load_module(ref, "motion_adapter", what, section, data_dir, dtype, MotionAdapter, load_motion_module_file)


def load_encoder(ref: WeightRef, modality: str, section: ModelSection, data_dir: Path, dtype: torch.dtype):
    from diffusers import SparseControlNetModel

    what = f"{modality} encoder"
    return _load_module(ref, "encoder", what, section, data_dir, dtype, SparseControlNetModel, load_sparsectrl_file)


def load_controlnet(ref: WeightRef, name: str, section: ModelSection, data_dir: Path, dtype: torch.dtype):
    from diffusers import ControlNetModel

    what = f"ControlNet '{name}'"
    return _load_module(ref, "controlnet", what, section, data_dir, dtype, ControlNetModel, load_controlnet_file)


def _fits(unet2d, adapter) -> bool:
    try:
        build_motion_unet(unet2d, adapter)
        return True
    except Exception:
        return False


@dataclass(frozen=True)
class _Refs:
    """What to load: the configured references, or the tiny model's folders (built first)."""

    name: str
    base: WeightRef
    motion_adapter: WeightRef
    draft_motion_adapter: WeightRef | None
    encoders: dict[str, WeightRef]
    controlnets: dict[str, WeightRef]
    ip_adapter: IPAdapterRefs | None = None


def _refs(section: ModelSection, data_dir: Path) -> _Refs:
    if section.is_tiny:
        from .tiny import build_tiny_all

        root = build_tiny_all(data_dir / "models" / "tiny")
        tiny_encoders = {m: WeightRef(str(root / "encoders" / m)) for m in MODALITIES}
        controlnets = {"depth": WeightRef(str(root / "controlnets" / "depth"))} | dict(section.controlnets)
        draft = section.draft_motion_adapter or WeightRef(str(root / "motion_adapter_draft"))
        base, adapter = WeightRef(str(root / "base")), WeightRef(str(root / "motion_adapter"))
        ip_adapter = section.ip_adapter or IPAdapterRefs(
            WeightRef(str(root / "ip_adapter" / "models" / "ip-adapter_sd15.safetensors"))
        )
        encoders = tiny_encoders | dict(section.encoders)
        return _Refs(TINY_NAME, base, adapter, draft, encoders, controlnets, ip_adapter)
    if section.base is None:
        raise ModelLoadError("no base model configured: set [model] base in the config file (docs/weights.md)")
    _located(section.base, "base", "base model", section)  # a missing base is the first thing to say
    if section.motion_adapter is None:
        raise ModelLoadError(
            "no motion adapter configured: set [model] motion_adapter (e.g. v3_sd15_mm.ckpt; docs/weights.md)"
        )
    name = section.name or Path(section.base.ref).stem or section.base.ref
    adapters = (section.motion_adapter, section.draft_motion_adapter)
    conditions = (dict(section.encoders), dict(section.controlnets), section.ip_adapter)
    return _Refs(name, section.base, *adapters, *conditions)


def _motion_unet(refs: _Refs, base: dict[str, Any], section: ModelSection, data_dir: Path, dtype: torch.dtype):
    """(the UNet with motion modules, {"final": adapter, "draft": adapter}); the domain adapter merged in."""
    adapter = load_motion_adapter(refs.motion_adapter, "motion adapter", section, data_dir, dtype)
    draft = None
    if refs.draft_motion_adapter is not None:
        draft = load_motion_adapter(refs.draft_motion_adapter, "draft motion adapter", section, data_dir, dtype)
    try:
        unet = build_motion_unet(base["unet"], adapter, draft).to(dtype)  # tries the draft too
    except Exception as e:
        if draft is not None and _fits(base["unet"], adapter):
            raise ModelLoadError(
                f"the draft motion adapter {refs.draft_motion_adapter} does not fit beside the motion adapter "
                f"{refs.motion_adapter}: {e}"
            ) from e
        raise ModelLoadError(
            f"the motion adapter {refs.motion_adapter} does not fit the UNet of {refs.base}: {e}"
        ) from e
    if section.domain_adapter is not None:
        ref = section.domain_adapter
        where = _located(ref, "lora", "domain adapter", section).path
        _load("domain adapter", where, merge_domain_adapter, unet, where, ref.scale)
    return unet, {"final": adapter} | ({"draft": draft} if draft is not None else {})


def load_ip_adapter(refs: IPAdapterRefs, section: ModelSection, dtype: torch.dtype) -> IPAdapterWeights:
    """The IP-Adapter a job's reference uses and its image encoder: the configured one, else h94's image_encoder
    folder beside the adapter, else a ViT-H/14 file in the clip_vision folders (weights/ip_adapter.py)."""
    adapter = _located(refs.adapter, "ip_adapter", "IP-Adapter", section).path
    if refs.image_encoder is not None:
        encoder = _located(refs.image_encoder, "clip_vision", "IP-Adapter image encoder", section).path
    else:
        found = find_image_encoder(adapter, section.search)
        encoder = found[1].path if found is not None else None
    if encoder is None:
        _load("IP-Adapter", adapter, read_ip_adapter, adapter)  # a file that is no IP-Adapter says so first
        raise ModelLoadError(
            f"IP-Adapter image encoder: none beside {adapter} (h94's models/image_encoder) and no "
            f"{' / '.join(CLIP_VISION_NAMES[:2])} file in {section.search.described('clip_vision')}: set "
            "[model.ip_adapter] image_encoder (docs/weights.md)"
        )
    return _load("IP-Adapter", adapter, load_ip_adapter_weights, adapter, encoder, dtype)


def load_model(section: ModelSection, data_dir: Path, performance=None) -> LoadedModel:
    """Load everything `section` names onto its device. `base = "tiny"` builds the tiny model first.
    `performance` ([performance]): its offload setting decides whether the models move to the GPU now."""
    started = time.perf_counter()
    refs = _refs(section, data_dir)
    device = resolve_device(section.device)
    dtype = resolve_dtype(section.dtype, device)
    base = load_base(section, refs.base, data_dir, dtype)
    unet, motion_adapters = _motion_unet(refs, base, section, data_dir, dtype)
    del base["unet"]
    encoders = {
        m: load_encoder(refs.encoders[m], m, section, data_dir, dtype).eval() for m in MODALITIES if m in refs.encoders
    }
    controlnets = {n: load_controlnet(r, n, section, data_dir, dtype).eval() for n, r in refs.controlnets.items()}
    ip_adapter = load_ip_adapter(refs.ip_adapter, section, dtype) if refs.ip_adapter is not None else None
    if section.temporal_norm == "per_frame":  # the ControlNets are per frame already: no temporal layers
        for module in (unet, *encoders.values()):
            use_per_frame_temporal_norm(module)
    for module in (base["text_encoder"], base["vae"], unet):
        module.eval().requires_grad_(False)
    for encoder in (*encoders.values(), *controlnets.values()):
        encoder.requires_grad_(False)
    parts = (base["vae"], base["text_encoder"], base["tokenizer"], unet, base["scheduler_config"])
    model = LoadedModel(refs.name, section.is_tiny, device, dtype, *parts, encoders, motion_adapters, controlnets)
    model.encoders_on_device = section.encoders_on_device
    model.ip_adapter = ip_adapter
    if performance is not None:
        model.offload = pick_offload(model, performance)
    if model.offload == "none":  # offloaded models stay on the CPU; diffusers' hooks move them per job
        on_device = (
            model.text_encoder,
            model.vae,
            model.unet,
            *(encoders.values() if section.encoders_on_device else ()),
            *(controlnets.values() if section.encoders_on_device else ()),
        )
        for module in on_device:
            module.to(device)
    if section.loras:
        model.loras = _load("LoRAs", data_dir, load_loras, unet, model.text_encoder, section, model.has_draft_adapter)
    loras = f"; ControlNets: {', '.join(controlnets)}" if controlnets else ""
    loras += f"; IP-Adapter: {ip_adapter.name} ({ip_adapter.kind})" if ip_adapter else ""
    loras += f"; LoRAs: {', '.join(model.loras)}" if model.loras else ""
    seconds = time.perf_counter() - started
    log.info(
        "loaded model %s on %s (%s) in %.1f s; modalities: %s%s",
        *(refs.name, device, str(dtype).removeprefix("torch."), seconds, ", ".join(model.modalities) or "none", loras),
    )
    if model.tiny:
        log.warning(
            "model '%s' has RANDOM weights (built offline for tests): its videos are noise, not previews", refs.name
        )
    return model
