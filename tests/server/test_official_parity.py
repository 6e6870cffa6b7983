"""Our default clip is what the official AnimateDiff v3 code computes, end to end (docs/official-parity.md).

tests/server/data/official_v3/clips.safetensors holds clips made by guoyww/AnimateDiff's own scripts/animate.py
(v3 inference config, DDIM from its noise_scheduler_kwargs) on the tiny model exported in the official layout,
for the requests in cases.json: line art and RGB, keyframes at frame 0, first and last, and three spread indices,
from keyframe PNGs of other sizes and aspect ratios than the clip's. README.md beside the data says how they were
made and lists every patch. Here the same requests go through our public paths (an HTTP job on a real server,
`python -m server generate`) with nothing but the request's own fields set: scheduler, its spacing and image
fitting are our defaults. Decoded frames must agree within 3/255; in-process, the encoder's condition inputs
must be identical and the denoised latents agree to float precision.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from server.engine.tiny import TINY_VERSION
from tests.conftest import ROOT

DATA = Path(__file__).parent / "data" / "official_v3"
SPEC = json.loads((DATA / "cases.json").read_text())
CASES = {case["name"]: case for case in SPEC["cases"]}
TOLERANCE = 3  # out of 255, on decoded frames


@pytest.fixture(scope="module")
def official():
    from safetensors import safe_open

    with safe_open(DATA / "clips.safetensors", framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    assert meta["tiny_version"] == TINY_VERSION, "the tiny model changed: regenerate (data/official_v3/README.md)"
    return tensors, meta


def keyframe_paths(case: dict) -> list[tuple[int, Path]]:
    return [(index, DATA / f"{case['modality']}_{n}.png") for n, index in enumerate(case["indices"])]


def keyframes(case: dict, base64_images: bool = False) -> list[dict]:
    def image(path: Path):
        return base64.b64encode(path.read_bytes()).decode() if base64_images else path.read_bytes()

    return [{"index": index, "image": image(path)} for index, path in keyframe_paths(case)]


def request_fields(case: dict) -> dict:
    """What the request states; everything else (scheduler, spacing, fitting, conditioning scale) is a default."""
    return {
        "prompt": SPEC["prompt"],
        "negative_prompt": SPEC["negative_prompt"],
        "modality": case["modality"],
        "num_frames": SPEC["num_frames"],
        "width": SPEC["width"],
        "height": SPEC["height"],
        "steps": SPEC["steps"],
        "guidance_scale": SPEC["guidance_scale"],
        "seed": SPEC["seed"],
    }


def assert_frames_match(ours: np.ndarray, official: torch.Tensor, what: str) -> None:
    assert ours.shape == tuple(official.shape), what
    diff = np.abs(ours.astype(int) - official.numpy().astype(int))
    assert diff.max() <= TOLERANCE, f"{what}: max |diff| {diff.max()}/255 (mean {diff.mean():.3f})"


def test_default_ddim_is_the_official_scheduler(tiny_config, official):
    """DDIM as the official code builds it: DDIMScheduler(**inference-v3.yaml's noise_scheduler_kwargs) in
    diffusers 0.11 ("leading" spacing, set_alpha_to_one), from the SD1.5 config our loaders read."""
    from diffusers import DDIMScheduler

    from server.engine.schedulers import build_scheduler
    from server.weights.convert import CONFIGS

    facts = json.loads(official[1]["scheduler"])
    sd15 = dict(DDIMScheduler.load_config(CONFIGS / "sd15" / "scheduler"))
    ours = build_scheduler(tiny_config.generation.scheduler, sd15, tiny_config.scheduler)
    assert isinstance(ours, DDIMScheduler)
    for key, value in facts["noise_scheduler_kwargs"].items():
        assert ours.config[key] == value, key
    for steps in (4, 25):
        ours.set_timesteps(steps)
        assert ours.timesteps.tolist() == facts[f"timesteps_{steps}"]
    assert float(ours.final_alpha_cumprod) == facts["final_alpha_cumprod"] == 1.0
    assert float(ours.alphas_cumprod.double().sum()) == pytest.approx(facts["alphas_cumprod_sum"], rel=1e-12)
    # And in today's diffusers, the official kwargs alone (class defaults for the rest) give the same config.
    bare = DDIMScheduler(**facts["noise_scheduler_kwargs"])
    assert {k: ours.config[k] for k in bare.config if not k.startswith("_")} == {
        k: v for k, v in bare.config.items() if not k.startswith("_")
    }


def test_other_schedulers_keep_their_own_spacing(tiny_config):
    from diffusers import DDIMScheduler

    from server.engine.schedulers import SCHEDULERS, build_scheduler
    from server.weights.convert import CONFIGS

    sd15 = dict(DDIMScheduler.load_config(CONFIGS / "sd15" / "scheduler"))
    for name in SCHEDULERS:
        scheduler = build_scheduler(name, sd15, tiny_config.scheduler)
        assert scheduler.config.beta_schedule == "linear", name
        if name != "ddim" and "timestep_spacing" in scheduler.config:
            assert scheduler.config.timestep_spacing == "linspace", name
        if name != "ddim" and "set_alpha_to_one" in scheduler.config:
            assert scheduler.config.set_alpha_to_one is False, name  # SD1.5's value, as before


@pytest.mark.parametrize("name", sorted(CASES))
def test_engine_conditions_latents_and_frames_match_the_official_code(engine, official, name, monkeypatch):
    from server.config import load_config
    from server.request.resolve import resolve_request

    tensors, _ = official
    case = CASES[name]
    encoder = engine.model.encoders[case["modality"]]
    seen: dict[str, torch.Tensor] = {}

    def first_inputs(_module, _args, kwargs):
        seen.setdefault("cond", kwargs["controlnet_cond"].detach().clone())
        seen.setdefault("mask", kwargs["conditioning_mask"].detach().clone())

    decoded: list[torch.Tensor] = []
    vae_decode = engine.model.vae.decode

    def recording_decode(z, *args, **kwargs):
        decoded.append(z.clone())
        return vae_decode(z, *args, **kwargs)

    monkeypatch.setattr(engine.model.vae, "decode", recording_decode)
    hook = encoder.register_forward_pre_hook(first_inputs, with_kwargs=True)
    try:
        fields = request_fields(case) | {"keyframes": keyframes(case)}
        config = load_config(overrides={"model": {"base": "tiny"}})
        request = resolve_request(fields, config, engine.modalities, seed=0)
        frames = engine.generate(request).frames
    finally:
        hook.remove()

    # The encoder's inputs: keyframe pixels (line art) or their VAE latents (RGB) at the same frames, same mask.
    assert seen["mask"][0, 0, :, 0, 0].tolist() == tensors[f"{name}.mask"].tolist()
    official_cond = tensors[f"{name}.cond"]
    if case["modality"] == "lineart":
        ours_levels = seen["cond"][0] * 255
        assert torch.equal(ours_levels.round().to(torch.uint8), official_cond), "fitted keyframe pixels differ"
    else:
        torch.testing.assert_close(seen["cond"], official_cond, atol=1e-5, rtol=1e-4)
    # The denoised latents the VAE decodes (the pipeline hands them over scaled and frame by frame).
    latents = torch.cat(decoded) * engine.model.vae.config.scaling_factor
    official_latents = tensors[f"{name}.latents"][0].permute(1, 0, 2, 3)
    torch.testing.assert_close(latents, official_latents, atol=1e-4 * official_latents.abs().max().item(), rtol=0)
    assert_frames_match(frames, tensors[name], name)


def test_the_fixture_would_catch_a_wrong_default(engine, official):
    """The premise: with the spacing SD1.5's config and our old defaults gave, the clip is a different sample."""
    from server.config import load_config
    from server.engine.engine import Engine
    from server.request.resolve import resolve_request

    tensors, _ = official
    case = CASES["lineart_first_last"]
    config = load_config(overrides={"model": {"base": "tiny"}, "scheduler": {"ddim": {"timestep_spacing": "linspace"}}})
    config.scheduler["ddim"]["set_alpha_to_one"] = False
    old = Engine(engine.model, config.scheduler, config.long_video)
    fields = request_fields(case) | {"keyframes": keyframes(case)}
    frames = old.generate(resolve_request(fields, config, engine.modalities, seed=0)).frames
    assert np.abs(frames.astype(int) - tensors[case["name"]].numpy().astype(int)).max() > 20


@pytest.mark.slow
def test_http_jobs_match_the_official_code(tmp_path, tiny_root, official):
    """Every case as an HTTP job on a real server (defaults from server/defaults.toml), PNG frames compared."""
    import shutil

    from tests.e2e.server_process import ServerProcess

    tensors, _ = official
    shutil.copytree(tiny_root, tmp_path / "models" / "tiny")
    server = ServerProcess(["--model", "tiny"], tmp_path, tmp_path / "server.log")
    try:
        ids = {}
        for name, case in CASES.items():
            body = request_fields(case) | {"keyframes": keyframes(case, base64_images=True)}
            response = server.client.post("/v1/jobs", json=body)
            assert response.status_code == 202, response.text
            ids[name] = response.json()["id"]
        for name, job_id in ids.items():
            job = server.wait_for(job_id)
            assert job["status"] == "succeeded", job
            assert job["request"]["scheduler"] == "ddim"
            frames = np.stack(
                [
                    np.asarray(Image.open(io.BytesIO(server.client.get(f"/v1/jobs/{job_id}/frames/{n}.png").content)))
                    for n in range(SPEC["num_frames"])
                ]
            )
            assert_frames_match(frames[..., :3], tensors[name], f"HTTP {name}")
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_cli_generate_matches_the_official_code(tmp_path, tiny_root, official, name):
    import shutil

    tensors, _ = official
    case = CASES[name]
    shutil.copytree(tiny_root, tmp_path / "models" / "tiny")
    fields = request_fields(case)
    args = [sys.executable, "-m", "server", "generate", "--model", "tiny", "--data-dir", str(tmp_path)]
    args += ["--modality", case["modality"], "--prompt", fields["prompt"]]
    args += ["--negative-prompt", fields["negative_prompt"]]
    args += ["--frames", str(fields["num_frames"]), "--width", str(fields["width"]), "--height", str(fields["height"])]
    args += ["--steps", str(fields["steps"]), "--guidance-scale", str(fields["guidance_scale"])]
    args += ["--seed", str(fields["seed"]), "--out", str(tmp_path / "clip.mp4"), "--frames-dir", str(tmp_path / "f")]
    for index, path in keyframe_paths(case):
        args += ["--keyframe", f"{index}:{path}"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    pngs = sorted((tmp_path / "f").glob("*.png"))
    assert len(pngs) == SPEC["num_frames"]
    frames = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
    assert_frames_match(frames, tensors[name], f"server generate {name}")


@pytest.mark.slow
def test_full_size_architecture_matches_the_official_code():
    """The same contract on the released architectures (SD1.5, v3 motion module, scribble encoder: the official
    YAMLs unpatched) with seeded random weights, at 8×64² (clips_full_size.safetensors; export_full.py)."""
    from safetensors import safe_open

    from server.config import load_config
    from server.engine.engine import Engine
    from server.request.resolve import resolve_request
    from tests.server.data.official_v3.export_full import full_size_model, full_size_parts

    with safe_open(DATA / "clips_full_size.safetensors", framework="pt") as f:
        official = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = SPEC["full_size_cases"][0]
    case = CASES[name]
    model = full_size_model(full_size_parts())
    config = load_config(overrides={"model": {"base": "tiny"}})  # the defaults; "tiny" only to skip weight checks
    engine = Engine(model, config.scheduler, config.long_video)
    seen: dict[str, torch.Tensor] = {}
    decoded: list[torch.Tensor] = []
    vae_decode = model.vae.decode

    def recording_decode(z, *args, **kwargs):
        decoded.append(z.clone())
        return vae_decode(z, *args, **kwargs)

    def first_condition(_module, _args, kwargs):
        seen.setdefault("cond", kwargs["controlnet_cond"].clone())

    model.vae.decode = recording_decode
    hook = model.encoders["lineart"].register_forward_pre_hook(first_condition, with_kwargs=True)
    try:
        fields = request_fields(case) | {"keyframes": keyframes(case)}
        frames = engine.generate(resolve_request(fields, config, engine.modalities, seed=0)).frames
    finally:
        hook.remove()
    assert torch.equal((seen["cond"][0] * 255).round().to(torch.uint8), official[f"{name}.cond"])
    latents = torch.cat(decoded) * model.vae.config.scaling_factor
    official_latents = official[f"{name}.latents"][0].permute(1, 0, 2, 3)
    torch.testing.assert_close(latents, official_latents, atol=1e-4 * official_latents.abs().max().item(), rtol=0)
    assert_frames_match(frames, official[name], f"full size {name}")
