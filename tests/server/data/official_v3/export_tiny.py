"""Step 1 of regenerating the official clips (README.md beside this file), run in the project's venv.

Writes the tiny model (server.engine.tiny, TINY_VERSION) in the layout the official AnimateDiff code loads — a
diffusers-0.11 base folder, the v3 motion module and the SparseCtrl encoders as original .ckpt files — and the
keyframe PNGs the cases use (kept in this folder, so both sides read the same pixels).

    .venv/bin/python -m tests.server.data.official_v3.export_tiny OUT_DIR
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent


def keyframe_images() -> dict[str, object]:
    """Line-art sketches (white on black) and colour images, each at its own size and aspect ratio."""
    from PIL import Image, ImageDraw

    sizes = json.loads((HERE / "cases.json").read_text())["keyframe_sizes"]
    images = {}
    for i, (w, h) in enumerate(sizes):
        sketch = Image.new("RGB", (w, h))
        draw = ImageDraw.Draw(sketch)
        draw.rectangle((6 + 5 * i, 10, w // 2 + 7 * i, h - 9), outline="white", width=2)
        draw.ellipse((w // 2, 4 + 3 * i, w - 6, h // 2 + 2 * i), outline="white", width=1)
        draw.line((0, h - 5, w, h // 3 + 4 * i), fill="white", width=2)
        images[f"lineart_{i}.png"] = sketch

        colour = Image.new("RGB", (w, h))
        draw = ImageDraw.Draw(colour)
        for y in range(h):  # a sky-to-ground gradient, then shapes in saturated colours
            draw.line((0, y, w, y), fill=(40 + 150 * y // h, 90 + 40 * i, 200 - 150 * y // h))
        draw.ellipse((8 + 6 * i, 8, w // 2 + 6 * i, h // 2), fill=(230, 200 - 60 * i, 40))
        draw.rectangle((w // 3, h // 2 + i, w - 10, h - 6), fill=(30 + 80 * i, 160, 60))
        images[f"rgb_{i}.png"] = colour
    return images


def _vae_state_dict_for_diffusers_0_11(state_dict: dict) -> dict:
    """diffusers 0.11's VAE AttentionBlock named its layers query/key/value/proj_attn (today: to_q, …, to_out.0)."""
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    out = {}
    for key, value in state_dict.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        out[key] = value
    return out


def _slow_tokenizer_files(folder: Path) -> None:
    """transformers 4.25's CLIPTokenizer reads vocab.json + merges.txt; transformers 5 writes only tokenizer.json."""
    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def _text_encoder_with_prefix(folder: Path) -> None:
    """transformers 5 saves CLIPTextModel's keys without the `text_model.` prefix SD1.5's files (and 4.25) use."""
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    state = load_file(weights)
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    save_file(state, weights, metadata={"format": "pt"})


def officialise_base(base: Path) -> None:
    """A diffusers base folder written today, in the formats diffusers 0.11 and transformers 4.25 read."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(base / "vae")
    for weights in (base / "vae").glob("diffusion_pytorch_model.*"):
        weights.unlink()
    torch.save(_vae_state_dict_for_diffusers_0_11(vae.state_dict()), base / "vae" / "diffusion_pytorch_model.bin")
    _slow_tokenizer_files(base / "tokenizer")
    _text_encoder_with_prefix(base / "text_encoder")
    # diffusers 0.11 wrote no mid_block_type (SD1.5's unet/config.json has none); today's name is a 2-D class name
    # that the official UNet3DConditionModel would take literally.
    unet_config = json.loads((base / "unet" / "config.json").read_text())
    assert unet_config.pop("mid_block_type") == "UNetMidBlock2DCrossAttn"
    (base / "unet" / "config.json").write_text(json.dumps(unet_config, indent=1))


def write_original_ckpts(adapter, encoders: dict, out: Path) -> dict[str, str]:
    """The motion module and the encoders (modality -> SparseControlNetModel) as the original .ckpt files."""
    import torch

    from tests.original_layout import animatediff_state_dict

    files = {"motion_module": str(out / "v3_sd15_mm.ckpt")}
    torch.save(animatediff_state_dict(adapter.state_dict()), files["motion_module"])
    for modality, encoder in encoders.items():
        files[modality] = str(out / f"v3_sd15_sparsectrl_{'scribble' if modality == 'lineart' else modality}.ckpt")
        torch.save({"controlnet": animatediff_state_dict(encoder.state_dict())}, files[modality])
    return files


def export(out: Path) -> dict[str, str]:
    from diffusers import MotionAdapter, SparseControlNetModel

    from server.engine.tiny import TINY_VERSION, build_tiny_model

    for name, image in keyframe_images().items():
        image.save(HERE / name)

    out = Path(out)
    tiny = build_tiny_model(out / "tiny")
    base = out / "official" / "base"
    shutil.rmtree(base, ignore_errors=True)
    shutil.copytree(tiny / "base", base)
    officialise_base(base)
    adapter = MotionAdapter.from_pretrained(tiny / "motion_adapter")
    encoders = {m: SparseControlNetModel.from_pretrained(tiny / "encoders" / m) for m in ("lineart", "rgb")}
    files = {"base": str(base), "tiny_version": TINY_VERSION}
    files |= write_original_ckpts(adapter, encoders, out / "official")
    (out / "official" / "files.json").write_text(json.dumps(files, indent=1))
    return files


if __name__ == "__main__":
    print(json.dumps(export(Path(sys.argv[1])), indent=1))
