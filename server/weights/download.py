"""`python -m server download`: the default weights into the Hugging Face cache, the one command that goes online.

huggingface_hub does the work: a progress bar per file, resuming an interrupted download where it stopped, and a
cache that the server then reads offline by repo id (server/weights/locate.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Download:
    name: str
    repo_id: str
    files: tuple[str, ...]  # allow-patterns of the repo's files
    size: str  # roughly, for the listing
    what: str
    config: str  # the line to put in the config
    table: str = "model"  # the config table it goes in


# diffusers-format SD1.5 without the safety checker and the duplicate .ckpt/fp16/non-safetensors weights.
_SD15_FILES = (
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
_DIFFUSERS_MODEL = ("config.json", "diffusion_pytorch_model.safetensors")
# h94's CLIP ViT-H/14 (~2.5 GB, float32 on disk), found beside the adapter once fetched (weights/ip_adapter.py).
_IMAGE_ENCODER = ("models/image_encoder/config.json", "models/image_encoder/model.safetensors")
_ENCODER_LINE = 'image_encoder = "h94/IP-Adapter/models/image_encoder"'

DOWNLOADS = {
    d.name: d
    for d in (
        Download(
            "sd15",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            _SD15_FILES,
            "~4.3 GB",
            "Stable Diffusion 1.5 base (also the CLIP tokenizer single-file bases need)",
            'base = "stable-diffusion-v1-5/stable-diffusion-v1-5"',
        ),
        Download(
            "motion-v3",
            "guoyww/animatediff-motion-adapter-v1-5-3",
            _DIFFUSERS_MODEL,
            "~1.7 GB",
            "AnimateDiff v3 motion module",
            'motion_adapter = "guoyww/animatediff-motion-adapter-v1-5-3"',
        ),
        Download(
            "sparsectrl-scribble",
            "guoyww/animatediff-sparsectrl-scribble",
            _DIFFUSERS_MODEL,
            "~2 GB",
            "SparseCtrl scribble encoder (line-art keyframes)",
            'encoders.lineart = "guoyww/animatediff-sparsectrl-scribble"',
        ),
        Download(
            "sparsectrl-rgb",
            "guoyww/animatediff-sparsectrl-rgb",
            _DIFFUSERS_MODEL,
            "~2 GB",
            "SparseCtrl RGB encoder (shaded keyframes)",
            'encoders.rgb = "guoyww/animatediff-sparsectrl-rgb"',
        ),
        Download(
            "controlnet-depth",
            "lllyasviel/control_v11f1p_sd15_depth",
            _DIFFUSERS_MODEL,
            "~1.4 GB",
            "SD1.5 depth ControlNet (Blender's depth on every frame; on request, not in the default set)",
            'controlnets.depth = "lllyasviel/control_v11f1p_sd15_depth"',
        ),
        Download(
            "domain-adapter",
            "guoyww/animatediff",
            ("v3_sd15_adapter.ckpt",),
            "~0.1 GB",
            "AnimateDiff v3 domain adapter LoRA (optional)",
            'domain_adapter = "guoyww/animatediff/v3_sd15_adapter.ckpt"',
        ),
        Download(
            "ip-adapter",
            "h94/IP-Adapter",
            ("models/ip-adapter_sd15.safetensors", *_IMAGE_ENCODER),
            "~2.6 GB",
            "SD1.5 IP-Adapter + its ViT-H/14 image encoder, for a job's reference look (on request)",
            'adapter = "h94/IP-Adapter/models/ip-adapter_sd15.safetensors"\n' + _ENCODER_LINE,
            "model.ip_adapter",
        ),
        Download(
            "ip-adapter-plus",
            "h94/IP-Adapter",
            ("models/ip-adapter-plus_sd15.safetensors", *_IMAGE_ENCODER),
            "~2.6 GB",
            "SD1.5 IP-Adapter Plus (closer to the reference) + its image encoder (on request)",
            'adapter = "h94/IP-Adapter/models/ip-adapter-plus_sd15.safetensors"\n' + _ENCODER_LINE,
            "model.ip_adapter",
        ),
        Download(
            "ip-adapter-plus-face",
            "h94/IP-Adapter",
            ("models/ip-adapter-plus-face_sd15.safetensors", *_IMAGE_ENCODER),
            "~2.6 GB",
            "SD1.5 IP-Adapter Plus Face (a character's face) + its image encoder (on request)",
            'adapter = "h94/IP-Adapter/models/ip-adapter-plus-face_sd15.safetensors"\n' + _ENCODER_LINE,
            "model.ip_adapter",
        ),
        Download(
            "animatelcm",
            "wangfuyun/AnimateLCM",
            _DIFFUSERS_MODEL,
            "~1.8 GB",
            "AnimateLCM motion module for draft quality (optional)",
            'draft_motion_adapter = "wangfuyun/AnimateLCM"',
        ),
    )
}
DEFAULT_SET = ("sd15", "motion-v3", "sparsectrl-scribble", "sparsectrl-rgb")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def describe() -> str:
    lines = []
    for d in DOWNLOADS.values():
        mark = "*" if d.name in DEFAULT_SET else " "
        lines.append(f" {mark} {d.name:20s} {d.size:>8s}  {d.repo_id:45s} {d.what}")
    return "\n".join(lines) + "\n(* = downloaded when no names are given)"


def download(names: list[str], say: Callable[[str], None] = print) -> int:
    """Fetch `names` (default: DEFAULT_SET) into the HF cache. Returns a process exit code."""
    from huggingface_hub import snapshot_download

    unknown = [n for n in names if n not in DOWNLOADS]
    if unknown:
        say(f"error: unknown download {', '.join(unknown)}; known:\n{describe()}")
        return 2
    chosen = [DOWNLOADS[n] for n in (names or DEFAULT_SET)]
    if offline():
        say(
            "error: offline (HF_HUB_OFFLINE is set), nothing can be downloaded. Unset it on a machine with internet, "
            "or copy a Hugging Face cache (~/.cache/huggingface/hub) over from one."
        )
        return 2
    for d in chosen:
        say(f"{d.name}: {d.repo_id} ({d.size}, {d.what})")
        try:
            snapshot_download(d.repo_id, allow_patterns=list(d.files))
        except KeyboardInterrupt:
            say("interrupted: run the same command again to resume where it stopped")
            return 130
        except Exception as e:
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            say(
                f"error: could not download {d.repo_id}: {first}\n"
                "Is this machine online (and huggingface.co reachable)? What was fetched stays in the cache; "
                "run the same command again to resume."
            )
            return 2
    say("done. In the config file:\n" + config_lines(chosen))
    return 0


def config_lines(chosen: list[Download]) -> str:
    """The TOML to paste for `chosen`, each line under its table ([model], [model.ip_adapter])."""
    tables: dict[str, list[str]] = {}
    for d in chosen:
        tables.setdefault(d.table, []).append(d.config)
    return "\n".join(f"[{table}]\n" + "\n".join(lines) for table, lines in tables.items())
