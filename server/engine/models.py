"""Loading the base model, the motion module and one condition encoder per modality from diffusers folders.

The base (SD1.5 UNet + motion adapter -> UNetMotionModel, VAE, text encoder) is loaded once; encoders are
loaded at start too, so a broken folder is reported before any job, and swapped per request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import MODALITIES, ModelSection

log = logging.getLogger(__name__)

TINY_NAME = "tiny-random"


class _DropEmptyFp32Warning(logging.Filter):
    """diffusers warns that modules "should be kept in float32: []" when casting UNetMotionModel: an empty list."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropEmptyFp32Warning())


class ModelLoadError(RuntimeError):
    """Weights that cannot be loaded; the message names the folder and what was expected there."""


@dataclass
class LoadedModel:
    name: str
    tiny: bool
    device: torch.device
    dtype: torch.dtype
    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any  # UNetMotionModel
    scheduler_config: dict[str, Any]
    encoders: dict[str, Any] = field(default_factory=dict)  # modality -> SparseControlNetModel
    # "final" (the one merged into unet) and, if configured, "draft": MotionAdapters kept on the CPU to swap in.
    motion_adapters: dict[str, Any] = field(default_factory=dict)

    @property
    def has_draft_adapter(self) -> bool:
        return "draft" in self.motion_adapters

    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if m in self.encoders]


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


def _require_folder(path: str, what: str, expected: str) -> Path:
    if not path:
        raise ModelLoadError(f"no {what} configured: set it in the config file (see docs/weights.md)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"{what} folder not found: {folder} (expected {expected})")
    return folder


def _load(what: str, folder: Path, loader, **kwargs):
    try:
        return loader(folder, **kwargs)
    except Exception as e:
        raise ModelLoadError(f"could not load the {what} from {folder}: {type(e).__name__}: {e}") from e


def load_model(section: ModelSection, data_dir: Path) -> LoadedModel:
    """Load everything `section` names onto its device. `base = "tiny"` builds the tiny model first."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        MotionAdapter,
        SparseControlNetModel,
        UNet2DConditionModel,
        UNetMotionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    started = time.perf_counter()
    encoders_cfg = dict(section.encoders)
    if section.is_tiny:
        from .tiny import build_tiny_model

        root = build_tiny_model(data_dir / "models" / "tiny")
        base, adapter_path = str(root / "base"), str(root / "motion_adapter")
        draft_path = section.draft_motion_adapter or str(root / "motion_adapter_draft")
        encoders_cfg = {m: str(root / "encoders" / m) for m in MODALITIES} | encoders_cfg
        name = TINY_NAME
    else:
        base, adapter_path = section.base, section.motion_adapter
        draft_path = section.draft_motion_adapter
        name = section.name or Path(base).expanduser().name

    device = resolve_device(section.device)
    dtype = resolve_dtype(section.dtype, device)
    base_dir = _require_folder(
        base, "base model", "a diffusers SD1.5 folder with unet/, vae/, text_encoder/, tokenizer/"
    )
    adapter_dir = _require_folder(adapter_path, "motion adapter", "a diffusers MotionAdapter folder with config.json")

    tokenizer = _load("tokenizer", base_dir / "tokenizer", CLIPTokenizer.from_pretrained)
    text_encoder = _load("text encoder", base_dir / "text_encoder", CLIPTextModel.from_pretrained, torch_dtype=dtype)
    vae = _load("VAE", base_dir / "vae", AutoencoderKL.from_pretrained, torch_dtype=dtype)
    unet2d = _load("UNet", base_dir / "unet", UNet2DConditionModel.from_pretrained, torch_dtype=dtype)
    adapter = _load("motion adapter", adapter_dir, MotionAdapter.from_pretrained, torch_dtype=dtype)
    try:
        unet = UNetMotionModel.from_unet2d(unet2d, adapter).to(dtype)
    except Exception as e:
        raise ModelLoadError(
            f"the motion adapter in {adapter_dir} does not fit the UNet in {base_dir / 'unet'}: {e}"
        ) from e
    del unet2d
    motion_adapters = {"final": adapter}
    if draft_path:
        draft_dir = _require_folder(draft_path, "draft motion adapter", "a diffusers MotionAdapter folder")
        draft = _load("draft motion adapter", draft_dir, MotionAdapter.from_pretrained, torch_dtype=dtype)
        if draft.config.block_out_channels != adapter.config.block_out_channels:
            raise ModelLoadError(
                f"the draft motion adapter in {draft_dir} does not fit the UNet in {base_dir / 'unet'}"
            )
        motion_adapters["draft"] = draft
    try:
        scheduler_config = dict(DDIMScheduler.load_config(base_dir / "scheduler"))
    except Exception as e:
        raise ModelLoadError(f"no scheduler config in {base_dir / 'scheduler'}: {e}") from e

    encoders = {}
    for modality in MODALITIES:
        if modality not in encoders_cfg:
            continue
        folder = _require_folder(encoders_cfg[modality], f"{modality} encoder", "a SparseControlNetModel folder")
        encoders[modality] = _load(
            f"{modality} encoder", folder, SparseControlNetModel.from_pretrained, torch_dtype=dtype
        ).eval()

    for module in (text_encoder, vae, unet):
        module.to(device).eval().requires_grad_(False)
    for encoder in encoders.values():
        encoder.requires_grad_(False)
        if section.encoders_on_device:
            encoder.to(device)

    model = LoadedModel(
        name,
        section.is_tiny,
        device,
        dtype,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler_config,
        encoders,
        motion_adapters,
    )
    log.info(
        "loaded model %s on %s (%s) in %.1f s; modalities: %s",
        name,
        device,
        str(dtype).removeprefix("torch."),
        time.perf_counter() - started,
        ", ".join(model.modalities) or "none",
    )
    if model.tiny:
        log.warning("model '%s' has RANDOM weights (built offline for tests): its videos are noise, not previews", name)
    return model
