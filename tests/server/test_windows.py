"""Context windows, shared noise and retiming: the schedule itself (pure) and the windowed engine."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from server.engine.windowed import generate_windowed
from server.engine.windows import context_windows, share_noise
from server.request.model import SCHEDULER_NAMES, Keyframe
from server.video.deliver import deliver
from server.video.retime import retime, timing
from tests.conftest import sketch
from tests.server.test_engine import make_request

CASES = [(1, 16, 4), (16, 16, 4), (17, 16, 4), (40, 16, 4), (64, 16, 4), (100, 16, 8), (256, 16, 4), (33, 8, 0)]


@pytest.mark.parametrize("n, length, overlap", CASES, ids=[f"{n}f-{ln}w-{o}o" for n, ln, o in CASES])
def test_every_frame_is_covered_and_weights_sum_to_one(n, length, overlap):
    windows = context_windows(n, length, overlap)
    totals = np.zeros(n)
    for w in windows:
        assert len(w) == min(n, length) and 0 <= w.start < w.stop <= n
        totals[w.start : w.stop] += w.weights
    np.testing.assert_allclose(totals, 1.0, atol=1e-12)
    assert windows[0].start == 0 and windows[-1].stop == n
    for a, b in zip(windows, windows[1:], strict=False):
        assert b.start - a.start <= length - overlap and b.start < a.stop or overlap == 0


def test_a_short_clip_is_one_window_of_weight_one():
    (w,) = context_windows(12, 16, 4)
    assert (w.start, w.stop) == (0, 12) and set(w.weights) == {1.0}


def test_overlaps_cross_fade_smoothly():
    first, second = context_windows(28, 16, 4)[:2]  # overlap on frames 12..15
    fade = [second.weights[f - second.start] for f in range(12, 16)]
    assert fade == sorted(fade) and 0 < fade[0] < fade[-1] < 1


def test_shared_noise_repeats_shuffled_earlier_noise_and_leaves_short_clips_alone():
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 40, 2, 2, generator=g)
    shared = share_noise(latents, 16, 4, torch.Generator().manual_seed(1))
    assert torch.equal(shared[:, :, :16], latents[:, :, :16])
    # Frames 16..27 are a shuffled copy of frames 0..11 (the block one window earlier).
    block = sorted(tuple(latents[0, 0, f].flatten().tolist()) for f in range(0, 12))
    assert sorted(tuple(shared[0, 0, f].flatten().tolist()) for f in range(16, 28)) == block
    assert not torch.equal(shared[:, :, 16:28], latents[:, :, 0:12])  # shuffled, not copied in order
    assert torch.equal(share_noise(latents[:, :, :16], 16, 4, g), latents[:, :, :16])


def test_timing_pins_keyframes_and_ends():
    positions = timing(16, 48, [(23, 8)])
    assert positions[0] == 0 and positions[47] == 15 and positions[23] == 8
    assert np.all(np.diff(positions) > 0)
    np.testing.assert_array_equal(timing(16, 16, []), np.arange(16))


def test_retime_shows_exact_frames_at_whole_positions_and_blends_between():
    frames = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (0, 100, 200)])
    out = retime(frames, np.array([0.0, 0.5, 1.0, 1.25, 2.0]))
    assert [int(f[0, 0, 0]) for f in out] == [0, 50, 100, 125, 200]


def test_windowed_loop_with_one_window_equals_the_plain_pipeline_bit_for_bit(engine):
    for scheduler in ("ddim", "euler_a", "dpm++ 2m"):
        request = make_request(scheduler=scheduler, steps=3)
        plain = engine.generate(request).frames  # diffusers' own pipeline call
        pipe = engine.build_pipeline(request.modality, request.scheduler)
        with torch.random.fork_rng():
            torch.manual_seed(request.seed)
            prompt_embeds, negative_prompt_embeds = engine.encode_prompt(pipe, request)
            ours = generate_windowed(
                pipe,
                prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds,
                num_frames=request.num_frames,
                width=request.width,
                height=request.height,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                conditioning_frames=[k.image for k in request.keyframes],
                controlnet_frame_indices=[k.index for k in request.keyframes],
                controlnet_conditioning_scale=request.conditioning_scale,
                generator=torch.Generator().manual_seed(request.seed),
                window_length=16,
                window_overlap=4,
                shared_noise=True,
                decode_chunk=16,
            )
        from server.engine.engine import to_uint8

        np.testing.assert_array_equal(to_uint8(ours), plain, err_msg=scheduler)


def test_keyframes_condition_exactly_the_windows_that_contain_them(engine):
    seen = []
    encoder = engine.model.encoders["lineart"]
    handle = encoder.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["conditioning_mask"][0, 0, :, 0, 0].tolist()), with_kwargs=True
    )
    try:
        keyframes = [
            Keyframe.of_image(0, sketch()),
            Keyframe.of_image(20, sketch(shift=5)),
            Keyframe.of_image(39, sketch(shift=9)),
        ]
        engine.generate(make_request(num_frames=40, steps=1, keyframes=keyframes))
    finally:
        handle.remove()
    windows = context_windows(40, 16, 4)
    assert [(w.start, w.stop) for w in windows] == [(0, 16), (12, 28), (24, 40)]
    assert len(seen) == len(windows)  # one encoder call per window per step
    for mask, w in zip(seen, windows, strict=True):
        expected = [k - w.start for k in (0, 20, 39) if w.start <= k < w.stop]
        assert [i for i, v in enumerate(mask) if v == 1.0] == expected


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_long_clips_work_with_every_scheduler_and_guidance(engine, scheduler):
    result = engine.generate(make_request(num_frames=24, steps=2, scheduler=scheduler))
    assert result.frames.shape == (24, 64, 64, 3) and result.frames.std() > 0


def test_long_clips_are_deterministic_and_report_progress(engine):
    steps = []
    request = make_request(num_frames=40, steps=3)
    a = engine.generate(request, on_step=lambda s, t: steps.append((s, t))).frames
    assert steps == [(1, 3), (2, 3), (3, 3)]
    np.testing.assert_array_equal(a, engine.generate(request).frames)


def test_output_frames_retime_with_keyframes_on_their_output_frames(engine):
    keyframes = [
        Keyframe.of_image(0, sketch(), 0),
        Keyframe.of_image(8, sketch(shift=7), 30),
        Keyframe.of_image(15, sketch(shift=3), 47),
    ]
    request = make_request(num_frames=16, steps=2, keyframes=keyframes)
    generated = engine.generate(request).frames
    retimed_request = dataclasses.replace(request, output_frames=48)
    assert engine.generate(retimed_request).frames.shape == (16, 64, 64, 3)  # the engine stops at generated frames
    retimed = deliver(engine.generate(retimed_request).frames, retimed_request)
    assert retimed.shape == (48, 64, 64, 3)
    for k in keyframes:
        np.testing.assert_array_equal(retimed[k.output_index], generated[k.index])


def test_256_frames_the_issues_upper_bound(engine):
    keyframes = [
        Keyframe.of_image(0, sketch()),
        Keyframe.of_image(128, sketch(shift=6)),
        Keyframe.of_image(255, sketch(shift=12)),
    ]
    result = engine.generate(make_request(num_frames=256, steps=1, keyframes=keyframes))
    assert result.frames.shape == (256, 64, 64, 3)
    assert len(context_windows(256, 16, 4)) == 21
