"""SparseCtrl as the official AnimateDiff code computes it (diffusers issue 9508; docs/rgb-correctness.md).

tests/server/data/official_sparsectrl_rgb_tiny.safetensors holds one denoising step of the official implementation
(guoyww/AnimateDiff at e92bd56: its UNet3DConditionModel + SparseControlNetModel) run on the tiny model's weights,
converted to the original layout (tests/original_layout.py) and loaded by the official code with strict key
matching, with the inputs stored beside them. Regenerate it with the recipe in docs/rgb-correctness.md when the
tiny model changes (TINY_VERSION).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from server.engine.temporal_norm import PerFrameGroupNorm, use_joint_temporal_norm, use_per_frame_temporal_norm
from server.engine.tiny import TINY_VERSION

FIXTURE = Path(__file__).parent / "data" / "official_sparsectrl_rgb_tiny.safetensors"


def test_per_frame_group_norm_normalises_each_frame_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 4, 4)  # (batch, channels, frames, h, w)
    norm = PerFrameGroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    frame_by_frame = torch.stack([nn.functional.group_norm(x[:, :, f], 4, norm.weight, norm.bias) for f in range(5)], 2)
    torch.testing.assert_close(norm(x), frame_by_frame)

    # A loud conditioned frame leaves its neighbours' normalisation alone; diffusers' joint norm does not.
    loud = x.clone()
    loud[:, :, 0] *= 50
    assert torch.allclose(norm(loud)[:, :, 1:], norm(x)[:, :, 1:], atol=1e-5)
    joint = nn.GroupNorm(4, 8)
    joint.load_state_dict(norm.state_dict())
    assert not torch.allclose(joint(loud)[:, :, 1:], joint(x)[:, :, 1:], atol=1e-2)


def test_engine_loads_per_frame_norms_with_the_same_weights(engine, tiny_root):
    from diffusers import SparseControlNetModel

    encoder = engine.model.encoders["rgb"]
    assert any(isinstance(m, PerFrameGroupNorm) for m in encoder.modules()), "temporal_norm defaults to per_frame"
    assert any(isinstance(m, PerFrameGroupNorm) for m in engine.model.unet.modules())
    assert use_per_frame_temporal_norm(encoder) == 0  # already per-frame: nothing to do
    on_disk = SparseControlNetModel.from_pretrained(tiny_root / "encoders" / "rgb").state_dict()
    loaded = encoder.state_dict()
    assert loaded.keys() == on_disk.keys() and all(torch.equal(loaded[k], on_disk[k]) for k in on_disk)


def _one_step(unet, encoder, fixture) -> dict[str, torch.Tensor]:
    latents, text, cond_latent = fixture["in_latents"], fixture["in_text"], fixture["in_cond_latent"]
    frames = latents.shape[2]
    sample = torch.cat([latents] * 2)  # classifier-free guidance batch, as both pipelines run it
    cond = torch.zeros(1, 4, frames, *latents.shape[3:])
    mask = torch.zeros(1, 1, frames, *latents.shape[3:])
    cond[:, :, 0], mask[:, :, 0] = cond_latent[:, :, 0], 1  # one keyframe at frame 0
    text = text.repeat_interleave(frames, dim=0)  # diffusers' pipeline repeats prompt embeddings per frame
    t = torch.tensor(int(fixture["timestep"]))
    with torch.no_grad():
        down, mid = encoder(
            sample, t, encoder_hidden_states=text, controlnet_cond=cond, conditioning_mask=mask, return_dict=False
        )
        noise = unet(
            sample,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample

    def as_5d(x, like):  # diffusers keeps residuals as (batch*frames, c, h, w)
        b, c, f = like.shape[:3]
        return x.reshape(b, f, c, *x.shape[2:]).permute(0, 2, 1, 3, 4)

    return {
        "mid": as_5d(mid, fixture["official_mid"]),
        "down3": as_5d(down[3], fixture["official_down3"]),
        "noise": noise,
    }


@pytest.fixture(scope="module")
def fixture():
    from safetensors import safe_open

    with safe_open(FIXTURE, framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    assert meta["tiny_version"] == TINY_VERSION, "the tiny model changed: regenerate the fixture (see docstring)"
    return tensors | {"timestep": meta["timestep"]}


@pytest.fixture(scope="module")
def tiny_modules(tiny_root):
    from diffusers import MotionAdapter, SparseControlNetModel, UNet2DConditionModel, UNetMotionModel

    unet = UNetMotionModel.from_unet2d(
        UNet2DConditionModel.from_pretrained(tiny_root / "base" / "unet"),
        MotionAdapter.from_pretrained(tiny_root / "motion_adapter"),
    ).eval()
    encoder = SparseControlNetModel.from_pretrained(tiny_root / "encoders" / "rgb").eval()
    return unet, encoder


def test_rgb_step_matches_the_official_implementation(tiny_modules, fixture):
    unet, encoder = tiny_modules
    try:
        use_per_frame_temporal_norm(unet), use_per_frame_temporal_norm(encoder)
        ours = _one_step(unet, encoder, fixture)
        # diffusers as shipped, for contrast: the premise of this test (and of diffusers issue 9508).
        use_joint_temporal_norm(unet), use_joint_temporal_norm(encoder)
        diffusers_as_is = _one_step(unet, encoder, fixture)
    finally:
        use_joint_temporal_norm(unet), use_joint_temporal_norm(encoder)
    for name in ("mid", "down3", "noise"):
        official = fixture[f"official_{name}"]
        torch.testing.assert_close(ours[name], official, atol=1e-5, rtol=1e-4)
        assert (diffusers_as_is[name] - official).abs().max() > 1e-2 * official.abs().max()
