"""Step 2 of regenerating the official clips (README.md beside this file), run in the OFFICIAL code's venv.

Runs guoyww/AnimateDiff's own `scripts/animate.py` (its `main`, its AnimationPipeline, UNet3DConditionModel,
SparseControlNetModel, motion modules and DDIMScheduler built from configs/inference/inference-v3.yaml) on every
case of cases.json, with the tiny model exported by export_tiny.py, and stores the clips as uint8 frames in
clips.safetensors. Every patch below is what a CPU and the tiny shapes require, nothing else; README.md lists them.

    venv-official/bin/python tests/server/data/official_v3/run_official.py ANIMATEDIFF_REPO EXPORT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
TINY_MOTION_HEADS = 2  # the tiny motion modules' heads (the official configs say 8, for 320+ channels)
TINY_NORM_GROUPS = 8  # the tiny motion modules' GroupNorm groups (the official code hard-codes 32)
TINY_SCRIBBLE_EMBEDDING = (8, 8, 8, 8)  # the tiny scribble encoder's condition embedding (official: 16, 32, 96, 256)


def import_torchvision_on_cpu_torch():
    """Patch 1. PyPI's torchvision wheel carries CUDA kernels that cannot load beside the CPU build of torch; its
    import then fails registering fake kernels for operators that never loaded. The official code uses only
    torchvision.transforms (pure Python), so those registrations are skipped."""
    import torch
    import torch.library

    original = torch.library.register_fake

    def tolerant(op, *args, **kwargs):
        if isinstance(op, str) and op.startswith("torchvision::"):
            try:
                torch._C._dispatch_has_kernel_for_dispatch_key(op, "Meta")
            except RuntimeError:
                return lambda fn=None: fn
        return original(op, *args, **kwargs)

    torch.library.register_fake = tolerant
    import torchvision.transforms  # noqa: F401

    torch.library.register_fake = original


def run_on_cpu():
    """Patch 2. The script moves everything to "cuda"; here everything stays on the CPU."""
    import torch
    from diffusers.pipeline_utils import DiffusionPipeline

    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    to = DiffusionPipeline.to
    DiffusionPipeline.to = lambda self, device=None, *a, **k: to(self, "cpu" if device == "cuda" else device, *a, **k)


def tiny_shapes(repo: Path, work: Path, base: Path) -> dict[str, Path]:
    """Patch 3. The tiny model's shapes: motion-module heads in copies of the official YAMLs (nothing else in them
    changes: noise_scheduler_kwargs stay as published), GroupNorm groups, the scribble embedding's channels, and
    the UNet's two blocks (from_pretrained_2d hard-codes SD1.5's four block types)."""
    from animatediff.models import motion_module, sparse_controlnet, unet
    from omegaconf import OmegaConf

    config_2d = json.loads((base / "unet" / "config.json").read_text())
    from_config = unet.UNet3DConditionModel.from_config.__func__

    def from_config_tiny(cls, config, *args, **kwargs):
        for key in ("down_block_types", "up_block_types"):
            config[key] = [t.replace("2D", "3D") for t in config_2d[key]]
        return from_config(cls, config, *args, **kwargs)

    unet.UNet3DConditionModel.from_config = classmethod(from_config_tiny)

    paths = {}
    for name, rel in (
        ("inference", "configs/inference/inference-v3.yaml"),
        ("image_condition", "configs/inference/sparsectrl/image_condition.yaml"),
        ("latent_condition", "configs/inference/sparsectrl/latent_condition.yaml"),
    ):
        config = OmegaConf.load(repo / rel)
        kwargs = config.get("unet_additional_kwargs") or config.get("controlnet_additional_kwargs")
        kwargs.motion_module_kwargs.num_attention_heads = TINY_MOTION_HEADS
        paths[name] = work / f"tiny-{Path(rel).name}"
        OmegaConf.save(config, paths[name])

    init = motion_module.TemporalTransformer3DModel.__init__

    def init_with_tiny_groups(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "norm_num_groups": TINY_NORM_GROUPS})

    motion_module.TemporalTransformer3DModel.__init__ = init_with_tiny_groups

    from_unet = sparse_controlnet.SparseControlNetModel.from_unet.__func__

    def from_unet_tiny(cls, unet, *args, **kwargs):
        kwargs.setdefault("conditioning_embedding_out_channels", TINY_SCRIBBLE_EMBEDDING)
        return from_unet(cls, unet, *args, **kwargs)

    sparse_controlnet.SparseControlNetModel.from_unet = classmethod(from_unet_tiny)
    return paths


def seeded_vae_posterior(seed: int):
    """Patch 4. The official script samples the RGB keyframes' VAE posterior before it seeds torch (from whatever
    state the RNG is in); we seed it (docs/official-parity.md). Here the same noise: torch seeded just before."""
    import torch
    from diffusers.models import vae

    sample = vae.DiagonalGaussianDistribution.sample

    def seeded(self, generator=None):
        torch.manual_seed(seed)
        return sample(self, generator)

    vae.DiagonalGaussianDistribution.sample = seeded


def capture_videos(animate) -> list:
    """Patch 5. The script writes GIFs (uint8, truncated); the video tensors are kept instead."""
    videos = []
    animate.save_videos_grid = lambda video, path, **k: videos.append(video.clone()) if "/sample/" in path else None
    return videos


def capture_encoder_inputs_and_latents() -> list[dict]:
    """Not a patch (each wrapper calls the original unchanged): per clip, the encoder's condition tensor and mask
    at the first step, and the denoised latents the VAE decodes (tiny models barely look at a condition's pixels,
    so these show preprocessing, keyframe placement and denoising more sharply than decoded frames do)."""
    from animatediff.models.sparse_controlnet import SparseControlNetModel
    from animatediff.pipelines.pipeline_animation import AnimationPipeline

    runs: list[dict] = []
    current: dict = {}
    forward, decode = SparseControlNetModel.forward, AnimationPipeline.decode_latents

    def recording_forward(self, *args, **kwargs):
        if "cond" not in current:
            current.update(cond=kwargs["controlnet_cond"].clone(), mask=kwargs["conditioning_mask"].clone())
        return forward(self, *args, **kwargs)

    def recording_decode(self, latents):
        runs.append({**current, "latents": latents.clone()})
        current.clear()
        return decode(self, latents)

    SparseControlNetModel.forward = recording_forward
    AnimationPipeline.decode_latents = recording_decode
    return runs


def scheduler_facts(repo: Path) -> dict:
    """What DDIMScheduler(**inference-v3.yaml's noise_scheduler_kwargs) does under this diffusers."""
    from diffusers import DDIMScheduler
    from omegaconf import OmegaConf

    kwargs = OmegaConf.to_container(OmegaConf.load(repo / "configs/inference/inference-v3.yaml").noise_scheduler_kwargs)
    facts = {"noise_scheduler_kwargs": kwargs}
    for steps in (4, 25):
        scheduler = DDIMScheduler(**kwargs)
        scheduler.set_timesteps(steps)
        facts[f"timesteps_{steps}"] = [int(t) for t in scheduler.timesteps]
    facts["final_alpha_cumprod"] = float(scheduler.final_alpha_cumprod)
    facts["alphas_cumprod_sum"] = float(scheduler.alphas_cumprod.double().sum())
    return facts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("repo", type=Path, help="a checkout of guoyww/AnimateDiff")
    parser.add_argument("export", type=Path, help="export_tiny.py's (or export_full.py's) OUT_DIR")
    parser.add_argument("--full-size", action="store_true", help="export_full.py's model: no tiny-shape patches")
    args = parser.parse_args()
    repo, export = args.repo.resolve(), args.export.resolve()
    files = json.loads((export / ("official-full" if args.full_size else "official") / "files.json").read_text())
    spec = json.loads((HERE / "cases.json").read_text())
    if args.full_size:
        spec["cases"] = [case for case in spec["cases"] if case["name"] in spec["full_size_cases"]]

    sys.path.insert(0, str(repo))
    sys.path.insert(0, str(repo / "scripts"))
    import_torchvision_on_cpu_torch()
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    work = Path(tempfile.mkdtemp(prefix="official-v3-"))
    run_on_cpu()
    if args.full_size:  # the released architectures: the official YAMLs as published, no shape patches
        configs = {
            "inference": repo / "configs/inference/inference-v3.yaml",
            "image_condition": repo / "configs/inference/sparsectrl/image_condition.yaml",
            "latent_condition": repo / "configs/inference/sparsectrl/latent_condition.yaml",
        }
    else:
        configs = tiny_shapes(repo, work, Path(files["base"]))
    seeded_vae_posterior(spec["seed"])
    import animate  # scripts/animate.py

    videos = capture_videos(animate)
    runs = capture_encoder_inputs_and_latents()

    prompt_config = []
    for case in spec["cases"]:
        rgb = case["modality"] == "rgb"
        prompt_config.append(
            {
                "inference_config": str(configs["inference"]),
                "motion_module": files["motion_module"],
                "controlnet_config": str(configs["latent_condition" if rgb else "image_condition"]),
                "controlnet_path": files[case["modality"]],
                "controlnet_images": [str(HERE / f"{case['modality']}_{i}.png") for i in range(len(case["indices"]))],
                "controlnet_image_indexs": case["indices"],
                "seed": spec["seed"],
                "steps": spec["steps"],
                "guidance_scale": spec["guidance_scale"],
                "prompt": [spec["prompt"]],
                "n_prompt": [spec["negative_prompt"]],
            }
        )
    OmegaConf.save(OmegaConf.create(prompt_config), work / "prompts.yaml")

    os.chdir(work)  # the script writes samples/… under the working directory
    with torch.no_grad():
        animate.main(
            argparse.Namespace(
                pretrained_model_path=files["base"],
                inference_config=str(configs["inference"]),
                config=str(work / "prompts.yaml"),
                L=spec["num_frames"],
                W=spec["width"],
                H=spec["height"],
                without_xformers=True,
            )
        )
    assert len(videos) == len(spec["cases"]), f"{len(videos)} clips for {len(spec['cases'])} cases"

    tensors = {}
    for case, video, run in zip(spec["cases"], videos, runs, strict=True):  # video: (1, c, f, h, w) in [0, 1]
        frames = video[0].permute(1, 2, 3, 0).float().numpy()
        name = case["name"]
        tensors[name] = torch.from_numpy(np.ascontiguousarray((np.clip(frames, 0, 1) * 255).round().astype(np.uint8)))
        tensors[f"{name}.latents"] = run["latents"].float().contiguous()
        tensors[f"{name}.mask"] = run["mask"][0, 0, :, 0, 0].float().contiguous()  # one value per frame
        if case["modality"] == "rgb":  # VAE latents of the keyframes
            tensors[f"{name}.cond"] = run["cond"].float().contiguous()
        else:  # pixels in [0, 1] that were uint8: stored exactly as uint8
            cond = run["cond"][0] * 255
            assert torch.equal(cond, cond.round()), "condition pixels should be whole levels"
            tensors[f"{name}.cond"] = cond.round().to(torch.uint8).contiguous()
    import diffusers

    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    metadata = {
        "model": "full-size random (export_full.py)" if args.full_size else f"tiny {files['tiny_version']}",
        "tiny_version": files.get("tiny_version", ""),
        "official_commit": commit.strip() or "e92bd5671ba62c0d774a32951453e328018b7c5b",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "scheduler": json.dumps(scheduler_facts(repo)),
    }
    save_file(tensors, str(HERE / ("clips_full_size.safetensors" if args.full_size else "clips.safetensors")), metadata)
    print(json.dumps(metadata, indent=1))


if __name__ == "__main__":
    main()
