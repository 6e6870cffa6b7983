"""The full-size check's model (README.md beside this file): SD1.5 + v3 motion module + scribble encoder with
the released architectures (server/weights/configs) and seeded random weights, the zero-initialised layers
filled as the tiny model's are, so that motion modules and encoder change the clip.

The test builds the same model in memory (`full_size_model`); `export` writes it in the official layout:

    .venv/bin/python -m tests.server.data.official_v3.export_full OUT_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

SEED = 0


def full_size_parts() -> dict:
    """The 2-D parts, the motion adapter and the scribble encoder; the same weights on every call."""
    import torch
    from diffusers import SparseControlNetModel

    from server.engine.full_size import build_full_size_parts
    from server.engine.tiny import _randomise_zero_params
    from server.weights.convert import CONFIGS

    parts = build_full_size_parts(torch.device("cpu"), torch.float32)  # seeds torch itself
    parts["encoder"] = SparseControlNetModel.from_config(
        SparseControlNetModel.load_config(CONFIGS / "sparsectrl_scribble")
    ).eval()
    generator = torch.Generator().manual_seed(SEED)
    for name in ("adapter", "encoder"):
        _randomise_zero_params(parts[name], generator)
    return parts


def full_size_model(parts: dict):
    """Our engine's model from those parts, as load_model builds one (per-frame temporal norm)."""
    import torch
    from diffusers import DDIMScheduler

    from server.engine.models import LoadedModel
    from server.engine.motion_modules import build_motion_unet
    from server.engine.temporal_norm import use_per_frame_temporal_norm
    from server.weights.convert import CONFIGS

    unet = build_motion_unet(parts["unet2d"], parts["adapter"])
    use_per_frame_temporal_norm(unet)
    use_per_frame_temporal_norm(parts["encoder"])
    cpu = torch.device("cpu")
    return LoadedModel(
        "full-size-parity",
        False,
        cpu,
        torch.float32,
        parts["vae"],
        parts["text_encoder"],
        parts["tokenizer"],
        unet.eval(),
        dict(DDIMScheduler.load_config(CONFIGS / "sd15" / "scheduler")),
        {"lineart": parts["encoder"]},
        {"final": parts["adapter"]},
    )


def export(out: Path) -> dict[str, str]:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from server.weights.convert import CONFIGS
    from tests.server.data.official_v3.export_tiny import officialise_base, write_original_ckpts

    parts = full_size_parts()
    out = Path(out) / "official-full"
    base = out / "base"
    shutil.rmtree(out, ignore_errors=True)
    StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet2d"],
        scheduler=DDIMScheduler.from_config(DDIMScheduler.load_config(CONFIGS / "sd15" / "scheduler")),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(base)
    officialise_base(base)
    files = {"base": str(base), "full_size": True}
    files |= write_original_ckpts(parts["adapter"], {"lineart": parts["encoder"]}, out)
    (out / "files.json").write_text(json.dumps(files, indent=1))
    return files


if __name__ == "__main__":
    print(json.dumps(export(Path(sys.argv[1])), indent=1))
