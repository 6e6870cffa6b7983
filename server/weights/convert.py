"""Single files in their original layouts -> diffusers modules, through diffusers' single-file loading, cached.

- SD1.5 checkpoints (A1111/ComfyUI/Civitai .safetensors or .ckpt): UNet and VAE via `from_single_file`, the text
  encoder via diffusers' `create_diffusers_clip_model_from_ldm`, each with the diffusers config shipped in
  configs/sd15 (no hub at run time).
- AnimateDiff v3 motion modules (`v3_sd15_mm.ckpt`, AnimateLCM's) and SparseCtrl encoders
  (`v3_sd15_sparsectrl_{scribble,rgb}.ckpt`): diffusers' AnimateDiff key mapping, via `from_single_file` with
  the configs in configs/ (scribble or RGB chosen from the file's keys).
- Per-frame SD1.5 ControlNets (lllyasviel's `control_v11f1p_sd15_depth.pth` with control_model.* names, the
  prefixless .safetensors ComfyUI and A1111 users keep, diffusers-layout files): diffusers' ControlNet mapping
  with configs/controlnet_sd15 (SD1.5's ControlNet: 361 M weights).

Every load is checked for completeness (a missing weight is an error, not a random one), and the result is saved
as safetensors in diffusers layout under the data dir so that the next start skips the conversion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, read_state_dict

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).with_name("configs")
# Bump when a conversion changes, so caches written by an older one are rebuilt.
CONVERTER_VERSION = "1"

SD_UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
SD_EXPECTED = (
    "a Stable Diffusion 1.5 checkpoint (weights named model.diffusion_model.*, first_stage_model.*, "
    "cond_stage_model.transformer.*), e.g. RealisticVision or ToonYou as .safetensors"
)


def identify(state_dict: dict[str, Any]) -> str:
    """What a state dict holds, from its key names: sd15 | sdxl | sd2 | motion_module | sparsectrl | controlnet |
    lora | unknown. A ControlNet (lllyasviel's control_model.* .pth, a prefixless or diffusers-layout file, a "full"
    one with the SD UNet inside) is told from a SparseCtrl encoder, which shares its condition embedding's names,
    by SparseCtrl's motion modules: a ControlNet has none."""
    keys = state_dict.keys()
    if _is_controlnet(keys):
        return "controlnet"
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if SD_UNET_KEY in state_dict:
        return "sd2" if any(k.startswith("cond_stage_model.model.") for k in keys) else "sd15"
    if any(k.startswith("controlnet_cond_embedding") for k in keys):
        return "sparsectrl"
    if any(".lora" in k or k.startswith("lora_") or "_lora." in k for k in keys):
        return "lora"
    if any(".motion_modules." in k or k.startswith("motion_modules.") for k in keys):
        return "motion_module"
    return "unknown"


def _is_controlnet(keys) -> bool:
    if any(k.startswith(("control_model.", "input_hint_block.", "zero_convs.")) for k in keys):
        return True
    return any(k.startswith("controlnet_cond_embedding.") for k in keys) and not any(
        ".motion_modules." in k for k in keys
    )


_NAMES = {
    "sd15": "a Stable Diffusion 1.5 checkpoint (set it as [model] base)",
    "sdxl": "an SDXL checkpoint (SparseCtrl and AnimateDiff v3 need Stable Diffusion 1.5)",
    "sd2": "a Stable Diffusion 2 checkpoint (SparseCtrl and AnimateDiff v3 need Stable Diffusion 1.5)",
    "motion_module": "an AnimateDiff motion module (set it as [model] motion_adapter)",
    "sparsectrl": "a SparseCtrl encoder (set it under [model.encoders])",
    "controlnet": (
        "a per-frame ControlNet, not a SparseCtrl encoder (SparseCtrl's are v3_sd15_sparsectrl_*.ckpt; set a "
        "ControlNet under [model.controlnets])"
    ),
    "lora": "a LoRA (set it as [model] domain_adapter or under [model.loras])",
    "unknown": "no weights this server knows",
}


def _wrong_kind(path: Path, found: str, expected: str) -> CheckpointError:
    return CheckpointError(f"{path}: holds {_NAMES[found]}; expected {expected}")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _validate(cls, state_dict: dict, config: Path, subfolder: str, what: str, path: Path) -> None:
    """Run diffusers' own single-file key mapping for `cls` and compare with the model the config describes.

    diffusers leaves a weight the file lacks uninitialised and only warns about weights it cannot place; for us
    both mean "not the architecture you think", so they are one clear error naming the file and the weights.
    """
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_model import SINGLE_FILE_LOADABLE_CLASSES

    try:
        model_config = cls.load_config(str(config), subfolder=subfolder or None, local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"no {what} config in {config / subfolder}: {e}") from e
    with init_empty_weights():
        empty = cls.from_config(model_config)
    params = {name: p.shape for name, p in empty.named_parameters()}
    known = set(params) | {name for name, _ in empty.named_buffers()}
    mapping = SINGLE_FILE_LOADABLE_CLASSES[cls.__name__]["checkpoint_mapping_fn"]
    try:
        converted = mapping(checkpoint=dict(state_dict), config=model_config)
    except Exception as e:
        raise CheckpointError(
            f"{path}: its weights do not follow the layout of a {what} ({type(e).__name__}: {e})"
        ) from e
    converted = {k: v for k, v in converted.items() if v is not None}  # ControlNet's mapping: None for missing
    missing = sorted(set(params) - set(converted))
    unexpected = sorted(set(converted) - known)
    wrong_shape = sorted(k for k in set(params) & set(converted) if tuple(converted[k].shape) != tuple(params[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing ({_listed(missing)})")
    if wrong_shape:
        k = wrong_shape[0]
        problems.append(
            f"{len(wrong_shape)} of another shape (e.g. {k}: {tuple(converted[k].shape)} in the file, "
            f"{tuple(params[k])} expected)"
        )
    if unexpected:
        problems.append(f"{len(unexpected)} weights it has no place for ({_listed(unexpected)})")
    if problems:
        raise CheckpointError(
            f"{path}: is not the {what} expected ({'; '.join(problems)}). A different architecture needs its "
            'diffusers config folder: { path = "...", config = "..." }'
        )


def _from_single_file(cls, state_dict: dict, config: Path, subfolder: str, dtype, what: str, path: Path):
    _validate(cls, state_dict, config, subfolder, what, path)
    model = cls.from_single_file(
        state_dict, config=str(config), subfolder=subfolder or None, local_files_only=True, torch_dtype=dtype
    )
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# The conversion cache


def _cache_dir(cache_root: Path, kind: str, path: Path, config: Path, dtype: torch.dtype) -> Path:
    stat = path.stat()
    key = json.dumps(
        [CONVERTER_VERSION, kind, str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(config), str(dtype)]
    )
    return cache_root / f"{path.stem[:48]}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _save_cache(folder: Path, modules: dict[str, Any], source: Path) -> None:
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for sub, module in modules.items():
            module.save_pretrained(tmp / sub if sub else tmp, safe_serialization=True)
        (tmp / "converted.json").write_text(json.dumps({"source": str(source), "version": CONVERTER_VERSION}))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    except OSError as e:  # a full disk only costs the next start a conversion
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning("could not cache the conversion of %s in %s: %s", source, folder, e)


def _cached(folder: Path | None) -> bool:
    return folder is not None and (folder / "converted.json").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Stable Diffusion 1.5 single files


def load_sd15_file(
    path: Path, dtype: torch.dtype, cache_root: Path | None, config: Path | None = None
) -> dict[str, Any]:
    """{"unet": UNet2DConditionModel, "vae": AutoencoderKL or None, "text_encoder": CLIPTextModel} from one file.

    "vae" is None for the "noVAE" fine-tunes that ship without one ([model] vae must name one then).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    config = Path(config) if config else CONFIGS / "sd15"
    folder = _cache_dir(cache_root, "sd15", path, config, dtype) if cache_root else None
    started = time.perf_counter()
    if _cached(folder):
        out = {
            "unet": UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype),
            "vae": (
                AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype) if (folder / "vae").is_dir() else None
            ),
            "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype),
        }
        log.info("loaded %s from its converted copy %s in %.1f s", path.name, folder, time.perf_counter() - started)
        return out

    state_dict = read_state_dict(path)
    kind = identify(state_dict)
    if kind != "sd15":
        raise _wrong_kind(path, kind, SD_EXPECTED)
    unet = _from_single_file(UNet2DConditionModel, state_dict, config, "unet", dtype, "Stable Diffusion 1.5 UNet", path)
    vae = None
    if any(k.startswith(("first_stage_model.", "vae.")) for k in state_dict):
        vae = _from_single_file(AutoencoderKL, state_dict, config, "vae", dtype, "Stable Diffusion 1.5 VAE", path)
    try:
        text_encoder = create_diffusers_clip_model_from_ldm(
            CLIPTextModel,
            state_dict,
            subfolder="text_encoder",
            config=str(config),
            local_files_only=True,
            torch_dtype=dtype,
        )
    except Exception as e:
        raise CheckpointError(
            f"{path}: its text encoder does not fit CLIP ViT-L/14 as SD1.5 uses it ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0][:300]})"
        ) from e
    missing = [n for n, p in text_encoder.named_parameters() if p.is_meta]
    if missing:
        raise CheckpointError(f"{path}: its CLIP text encoder lacks {len(missing)} weights ({_listed(missing)})")
    del state_dict
    out = {"unet": unet, "vae": vae, "text_encoder": text_encoder.eval()}
    log.info("converted %s (SD1.5 single file) in %.1f s", path.name, time.perf_counter() - started)
    if folder is not None:
        _save_cache(folder, {k: v for k, v in out.items() if v is not None}, path)
    return out


def load_vae_file(path: Path, dtype: torch.dtype, config: Path | None = None):
    """A stand-alone VAE file (e.g. vae-ft-mse-840000-ema-pruned.safetensors) in LDM or diffusers layout."""
    from diffusers import AutoencoderKL

    config = Path(config) if config else CONFIGS / "sd15"
    state_dict = read_state_dict(path)
    if not any(k.startswith(("encoder.", "decoder.", "first_stage_model.", "vae.")) for k in state_dict):
        raise _wrong_kind(path, identify(state_dict), "a Stable Diffusion VAE (encoder.*, decoder.* weights)")
    return _from_single_file(AutoencoderKL, state_dict, config, "vae", dtype, "Stable Diffusion VAE", path)


# ---------------------------------------------------------------------------------------------------------------
# AnimateDiff motion modules and SparseCtrl encoders


def _load_animatediff_file(cls, kind: str, expected: str, what: str, path: Path, dtype, cache_root, config, default):
    """An AnimateDiff-layout (or ControlNet) single file -> `cls`, through the conversion cache.
    `default(state_dict)` picks the shipped config when `config` is None."""
    folder = _cache_dir(cache_root, kind, path, Path(config) if config else CONFIGS, dtype) if cache_root else None
    if _cached(folder):
        return cls.from_pretrained(folder, torch_dtype=dtype)
    started = time.perf_counter()
    state_dict = read_state_dict(path)
    found = identify(state_dict)
    if found != kind:
        raise _wrong_kind(path, found, expected)
    state_dict = {k: v for k, v in state_dict.items() if not k.endswith("pos_encoder.pe")}  # recomputed
    model = _from_single_file(cls, state_dict, Path(config) if config else default(state_dict), "", dtype, what, path)
    log.info("converted %s (%s) in %.1f s", path.name, what, time.perf_counter() - started)
    if folder is not None:
        _save_cache(folder, {"": model}, path)
    return model


def motion_config_for(state_dict: dict[str, Any]) -> Path:
    """The released motion-module layout a file matches: v3 (no middle-block module) or the one with a
    middle-block module (AnimateLCM_sd15_t2v.ckpt, AnimateDiff v2's mm_sd_v15_v2.ckpt)."""
    has_mid = any(k.startswith("mid_block.motion_modules.") for k in state_dict)
    return CONFIGS / ("motion_adapter_mid_block" if has_mid else "motion_adapter_v3")


def load_motion_module_file(path: Path, dtype: torch.dtype, cache_root: Path | None, config: Path | None = None):
    """`v3_sd15_mm.ckpt`, `AnimateLCM_sd15_t2v.ckpt` (or another AnimateDiff motion module file) -> MotionAdapter."""
    from diffusers import MotionAdapter

    expected = "an AnimateDiff motion module (v3_sd15_mm.ckpt: *.motion_modules.* weights)"
    return _load_animatediff_file(
        MotionAdapter,
        "motion_module",
        expected,
        "AnimateDiff motion module",
        path,
        dtype,
        cache_root,
        config,
        motion_config_for,
    )


def sparsectrl_config_for(state_dict: dict[str, Any]) -> Path:
    """The released encoder a SparseCtrl file matches: RGB (latents through one conv) or scribble (pixels)."""
    return CONFIGS / ("sparsectrl_rgb" if "controlnet_cond_embedding.weight" in state_dict else "sparsectrl_scribble")


def load_sparsectrl_file(path: Path, dtype: torch.dtype, cache_root: Path | None, config: Path | None = None):
    """`v3_sd15_sparsectrl_{scribble,rgb}.ckpt` -> SparseControlNetModel."""
    from diffusers import SparseControlNetModel

    expected = "a SparseCtrl encoder (v3_sd15_sparsectrl_*.ckpt: controlnet_cond_embedding.*)"
    return _load_animatediff_file(
        SparseControlNetModel,
        "sparsectrl",
        expected,
        "SparseCtrl encoder",
        path,
        dtype,
        cache_root,
        config,
        sparsectrl_config_for,
    )


def load_controlnet_file(path: Path, dtype: torch.dtype, cache_root: Path | None, config: Path | None = None):
    """`control_v11f1p_sd15_depth.pth` (or another SD1.5 ControlNet file, any of its layouts) -> ControlNetModel."""
    from diffusers import ControlNetModel

    expected = "a per-frame SD1.5 ControlNet (control_model.*, zero_convs.* or controlnet_cond_embedding.* weights)"
    return _load_animatediff_file(
        ControlNetModel,
        "controlnet",
        expected,
        "SD1.5 ControlNet",
        path,
        dtype,
        cache_root,
        config,
        lambda _state_dict: CONFIGS / "controlnet_sd15",
    )
