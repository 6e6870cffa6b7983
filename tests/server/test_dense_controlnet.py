"""Per-frame ControlNets beside SparseCtrl (#16 item 2): a depth-only job (a request's controlnets, no
keyframes) equals diffusers' own AnimateDiffControlNetPipeline on the same tiny weights, bit for bit; mixed with
SparseCtrl keyframes, on a subset of the frames and across context windows it runs and steers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from server.engine.engine import to_uint8
from server.engine.windowed import DenseCondition, _dense_residuals, generate_windowed, prepare_dense_frames
from server.request.model import DenseGroup, Keyframe
from tests.server.test_engine import make_request


def depth_frames(count: int, size: int = 64, shift: int = 0) -> list[Image.Image]:
    """A near box moving right over a far floor, near = white as lllyasviel's depth maps (and our pass) are."""
    frames = []
    for i in range(count):
        depth = np.full((size, size), 40, np.uint8)
        depth[size // 2 :] = np.linspace(60, 140, size - size // 2, dtype=np.uint8)[:, None]  # the floor
        x = 4 + shift + i * 3
        depth[16:44, x : x + 20] = 230  # the box
        frames.append(Image.fromarray(np.repeat(depth[:, :, None], 3, axis=2)))
    return frames


def with_depth(request, images, indices=None, strength=1.0):
    """The request with a depth group: `images` at `indices` (default: every frame)."""
    indices = range(len(images)) if indices is None else indices
    frames = tuple(Keyframe.of_image(i, img) for i, img in zip(indices, images, strict=True))
    return dataclasses.replace(request, controlnets=(DenseGroup("depth", strength, frames),))


def ours(engine, request, images, *, dense_scale=1.0, window_length=16, sparse=False, depth=None, halves=False):
    """The engine's own denoising (windowed.generate_windowed) with the tiny depth ControlNet on every frame."""
    modality = request.modality if sparse else None
    pipe = engine.build_pipeline(modality, request.scheduler)
    m = engine.model
    controlnet = m.controlnets["depth"].to(m.device)
    frames = prepare_dense_frames(
        depth or images, request.width, request.height, m.device, controlnet.dtype, pipe.vae_scale_factor
    )
    keyframes = sorted(request.keyframes, key=lambda k: k.index) if sparse else []
    with torch.random.fork_rng():
        torch.manual_seed(request.seed)
        prompt_embeds, negative = engine.encode_prompt(pipe, request)
        out = generate_windowed(
            pipe,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative,
            num_frames=request.num_frames,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            conditioning_frames=[k.image for k in keyframes],
            controlnet_frame_indices=[k.index for k in keyframes],
            controlnet_conditioning_scale=request.conditioning_scale,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            window_length=window_length,
            window_overlap=4,
            shared_noise=True,
            decode_chunk=16,
            dense=[DenseCondition(controlnet, frames, dense_scale)],
            sequential_cfg=halves,
        )
    return to_uint8(out)


def bare_controlnet_pipeline(tiny_root, tiny_config, request, images, **pipe_kwargs) -> np.ndarray:
    """What a user gets from diffusers' AnimateDiffControlNetPipeline on the same folders (with the official
    per-frame normalisation in the motion modules, as every job here has; a ControlNet has no temporal layers)."""
    from diffusers import AnimateDiffControlNetPipeline, ControlNetModel, DDIMScheduler, MotionAdapter

    from server.engine.schedulers import overrides_for
    from server.engine.temporal_norm import use_per_frame_temporal_norm
    from server.engine.tiny import build_tiny_controlnet

    controlnet = build_tiny_controlnet(tiny_root / "controlnets" / "depth", tiny_root / "base" / "unet")

    pipe = AnimateDiffControlNetPipeline.from_pretrained(
        tiny_root / "base",
        motion_adapter=MotionAdapter.from_pretrained(tiny_root / "motion_adapter"),
        controlnet=ControlNetModel.from_pretrained(controlnet),
        scheduler=DDIMScheduler.from_pretrained(
            tiny_root / "base", subfolder="scheduler", **overrides_for("ddim", tiny_config.scheduler)
        ),
    )
    assert use_per_frame_temporal_norm(pipe.unet) > 0
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(request.seed)
    out = pipe(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_frames=request.num_frames,
        width=request.width,
        height=request.height,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        conditioning_frames=images,
        controlnet_conditioning_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
        **pipe_kwargs,
    )
    return to_uint8(out.frames[0])


def test_a_depth_controlnet_job_equals_diffusers_animatediff_controlnet_pipeline(engine, tiny_root, tiny_config):
    request = make_request(keyframes=[], modality="")
    images = depth_frames(request.num_frames)
    frames = engine.generate(with_depth(request, images)).frames
    np.testing.assert_array_equal(frames, bare_controlnet_pipeline(tiny_root, tiny_config, request, images))
    np.testing.assert_array_equal(frames, ours(engine, request, images))
    # The depth steers: another motion of the box, or no strength, is another clip.
    assert not np.array_equal(frames, ours(engine, request, images, depth=depth_frames(request.num_frames, shift=20)))
    assert not np.array_equal(frames, ours(engine, request, images, dense_scale=0.0))


def test_depth_on_every_frame_mixes_with_sparsectrl_keyframes_and_runs_in_context_windows(engine):
    request = make_request()  # line-art keyframes at 0 and 7
    images = depth_frames(request.num_frames)
    mixed = ours(engine, request, images, sparse=True)
    assert mixed.shape == (8, 64, 64, 3)
    assert not np.array_equal(mixed, ours(engine, request, images))  # the keyframes add to the depth
    assert not np.array_equal(mixed, engine.generate(request).frames)  # the depth adds to the keyframes
    # CFG's halves in turn (the memory lever): the depth frames go to each half undoubled; the same clip up to
    # the float rounding of another batch size, as for SparseCtrl alone.
    halves = ours(engine, request, images, sparse=True, halves=True)
    assert np.abs(halves.astype(int) - mixed.astype(int)).max() <= 2

    # 24 frames in windows of 16 (overlap 4): each window gets its slice of the depth frames.
    long = dataclasses.replace(request, num_frames=24, steps=2)
    windowed = ours(engine, long, depth_frames(24), sparse=True)
    assert windowed.shape == (24, 64, 64, 3) and windowed.std() > 0


def test_a_dense_condition_must_cover_every_frame(engine):
    request = make_request(keyframes=[])
    with pytest.raises(ValueError, match="needs 8 frames, got 5"):
        ours(engine, request, depth_frames(5))


def test_a_mixed_job_of_requests_runs_windowed_with_depth_on_every_frame_or_on_some(engine):
    request = make_request(steps=2)  # line-art keyframes at 0 and 7
    images = depth_frames(request.num_frames)
    mixed = engine.generate(with_depth(request, images)).frames
    np.testing.assert_array_equal(mixed, ours(engine, request, images, sparse=True))
    weaker = engine.generate(with_depth(request, images, strength=0.3)).frames
    assert not np.array_equal(mixed, weaker)
    # Depth on some frames only: not the every-frame clip, and not the keyframes alone.
    some = engine.generate(with_depth(request, images[2:5], indices=[2, 3, 4])).frames
    assert not np.array_equal(some, mixed) and not np.array_equal(some, engine.generate(request).frames)

    # 24 frames in the engine's context windows; depth on frames 0..9 only: the last window has none of it.
    long = dataclasses.replace(request, num_frames=24, keyframes=[Keyframe.of_image(0, images[0])])
    assert engine.long_video.window_length < 24
    clip = engine.generate(with_depth(long, depth_frames(10), indices=range(10))).frames
    assert clip.shape == (24, 64, 64, 3) and clip.std() > 0
    assert engine.generate(with_depth(long, depth_frames(24))).frames.shape == (24, 64, 64, 3)


def test_a_subset_adds_its_controlnet_at_its_frames_and_nothing_elsewhere(engine):
    """The rows of a subset's residuals are the every-frame run's rows at its frames, and zero at the others."""
    controlnet = engine.model.controlnets["depth"]
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 3, 8, 8)  # CFG's halves, three frames
    embeds = torch.randn(6, 77, controlnet.config.cross_attention_dim)
    frames = prepare_dense_frames(depth_frames(3), 64, 64, "cpu", torch.float32, 8)
    t = torch.tensor(500)
    full_down, full_mid = _dense_residuals(
        latents, t, embeds, [(controlnet, torch.cat([frames] * 2), 1.0, None, (0.0, 1.0))], None, None
    )
    one = torch.cat([frames[1:2]] * 2)
    down, mid = _dense_residuals(latents, t, embeds, [(controlnet, one, 1.0, (1,), (0.0, 1.0))], None, None)
    rows, others = [1, 4], [0, 2, 3, 5]  # frame 1 of each half
    for sub, full in zip([*down, mid], [*full_down, full_mid], strict=True):
        torch.testing.assert_close(sub[rows], full[rows], rtol=1e-5, atol=1e-6)
        assert not sub[others].any()
