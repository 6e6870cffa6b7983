"""Per-keyframe strength and guidance windows (#16 item 3): a depth ControlNet's window equals diffusers'
control_guidance_start/end on AnimateDiffControlNetPipeline bit for bit; keyframe strengths scale the SparseCtrl
encoder per frame (uniform strengths equal conditioning_scale, in one window or many); the defaults change
nothing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from server.engine.windowed import guided, keyframe_frame_scales  # guided: request.model's, used there
from server.request.model import Keyframe
from tests.conftest import sketch
from tests.server.test_dense_controlnet import bare_controlnet_pipeline, depth_frames, with_depth
from tests.server.test_engine import make_request


def test_guided_steps_are_diffusers_controlnet_keep():
    for steps in (1, 4, 25):
        for window in ((0.0, 1.0), (0.0, 0.3), (0.2, 0.6), (0.5, 1.0)):
            keep = [1.0 - float(i / steps < window[0] or (i + 1) / steps > window[1]) for i in range(steps)]
            assert [guided(i, steps, window) for i in range(steps)] == [k == 1.0 for k in keep]
    assert [i for i in range(25) if guided(i, 25, (0.0, 0.3))] == list(range(7))  # a scribble end of 0.3


def test_keyframe_strengths_become_per_frame_scales():
    assert keyframe_frame_scales([0, 7], [1.0, 1.0], 8, 0.8) is None  # the scalar path, as before
    scales = keyframe_frame_scales([2, 6], [0.5, 1.5], 9, 2.0)
    assert scales == pytest.approx([1.0, 1.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.0, 3.0])  # flat beyond the ends
    assert keyframe_frame_scales([4], [0.25], 3, 1.0) == [0.25] * 3


def test_a_depth_controlnet_guidance_window_equals_diffusers_control_guidance(engine, tiny_root, tiny_config):
    request = make_request(keyframes=[], modality="")
    images = depth_frames(request.num_frames)
    full = engine.generate(with_depth(request, images)).frames
    for start, end in ((0.0, 0.5), (0.25, 1.0)):
        job = with_depth(request, images)
        group = dataclasses.replace(job.controlnets[0], guidance_start=start, guidance_end=end)
        frames = engine.generate(dataclasses.replace(job, controlnets=(group,))).frames
        bare = bare_controlnet_pipeline(
            tiny_root, tiny_config, request, images, control_guidance_start=start, control_guidance_end=end
        )
        np.testing.assert_array_equal(frames, bare)
        assert not np.array_equal(frames, full)


def keyframes(*strengths):
    return [
        Keyframe.of_image(0, sketch(), strength=strengths[0]),
        Keyframe.of_image(7, sketch(shift=12), strength=strengths[1]),
    ]


def test_keyframe_strengths_scale_the_encoder_per_frame(engine):
    request = make_request(steps=3)
    plain = engine.generate(request).frames
    np.testing.assert_array_equal(
        engine.generate(dataclasses.replace(request, keyframes=keyframes(1, 1))).frames, plain
    )
    # Uniform strengths through the per-frame path equal the scalar conditioning_scale, CFG's halves included.
    half = engine.generate(dataclasses.replace(request, conditioning_scale=0.5)).frames
    np.testing.assert_array_equal(
        engine.generate(dataclasses.replace(request, keyframes=keyframes(0.5, 0.5))).frames, half
    )
    # And across context windows (24 frames in windows of 16): each window its slice of the scales.
    long = dataclasses.replace(request, num_frames=24, steps=2)
    long_keys = [dataclasses.replace(k, strength=0.5) for k in keyframes(1, 1)]
    assert engine.long_video.window_length < 24
    np.testing.assert_array_equal(
        engine.generate(dataclasses.replace(long, keyframes=long_keys)).frames,
        engine.generate(dataclasses.replace(long, conditioning_scale=0.5)).frames,
    )
    # A weak first keyframe and a strong last one: neither today's clip nor the uniform one.
    ramp = engine.generate(dataclasses.replace(request, keyframes=keyframes(0.2, 1.8))).frames
    assert not np.array_equal(ramp, plain) and not np.array_equal(ramp, half)


def test_a_keyframe_guidance_window_steers_only_its_steps(engine):
    request = make_request(steps=4)
    plain = engine.generate(request).frames
    np.testing.assert_array_equal(
        engine.generate(dataclasses.replace(request, keyframe_guidance_start=0.0, keyframe_guidance_end=1.0)).frames,
        plain,
    )
    # A window no step falls in: the encoder never runs, which is the encoder at scale 0 (it adds zeros).
    none = engine.generate(dataclasses.replace(request, keyframe_guidance_start=0.9)).frames
    np.testing.assert_array_equal(none, engine.generate(dataclasses.replace(request, conditioning_scale=0.0)).frames)
    early = engine.generate(dataclasses.replace(request, keyframe_guidance_end=0.5)).frames
    assert not np.array_equal(early, plain) and not np.array_equal(early, none)


def test_per_frame_scales_are_applied_in_float32_in_a_bf16_job(tiny_config, tiny_root):
    """In half precision, uniform strengths of 0.9 equal conditioning_scale 0.9 bit for bit: the per-frame scales
    multiply the residuals in float32, as a Python scale does (a bf16 tensor of 0.9 would be 0.8984)."""
    from server.config import load_config
    from server.engine.engine import Engine
    from server.engine.models import load_model

    data_dir = str(tiny_root.parent.parent)
    config = load_config(overrides={"model": {"base": "tiny", "dtype": "bfloat16"}, "server": {"data_dir": data_dir}})
    engine = Engine(load_model(config.model, config.data_dir), config.scheduler, config.long_video)
    assert engine.model.dtype == torch.bfloat16
    request = make_request(steps=2, width=32, height=32, num_frames=4)
    request = dataclasses.replace(
        request, keyframes=[dataclasses.replace(k, index=k.index // 2) for k in keyframes(1, 1)]
    )
    scalar = engine.generate(dataclasses.replace(request, conditioning_scale=0.9)).frames
    per_frame = [dataclasses.replace(k, strength=0.9) for k in request.keyframes]
    np.testing.assert_array_equal(engine.generate(dataclasses.replace(request, keyframes=per_frame)).frames, scalar)
