"""Known frames in the denoising loop (#28): a retake keeps every generated frame outside its span bit for bit,
in one context window and across windows (running only the windows its span touches); a span over the whole
clip is the plain job; a pinned RGB keyframe's frame is its picture's VAE round trip; the step hooks' contract;
requests, records and bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from server.engine.engine import to_uint8
from server.engine.step_hooks import StepHook
from server.jobs.execute import take_files
from server.request.errors import RequestError
from server.request.model import (
    PARENT_FRAMES,
    PARENT_LATENTS,
    TAKE_FRAMES,
    TAKE_LATENTS,
    GenerationRequest,
    Keyframe,
    Retake,
    image_paths,
)
from server.request.resolve import resolve_request
from tests.conftest import png_bytes, sketch
from tests.server.test_engine import make_request
from tests.server.test_several_encoders import painting


def retake_of(engine, parent_request: GenerationRequest, start: int, end: int, **changes) -> GenerationRequest:
    """A retake of `parent_request`'s job (generated now) over start..end, with `changes` (a new seed...)."""
    take = take_files(engine.generate(parent_request))
    retake = Retake("0" * 32, start, end, take[TAKE_LATENTS], take[TAKE_FRAMES])
    return dataclasses.replace(parent_request, retake=retake, **changes)


def test_a_retake_keeps_every_frame_outside_its_span(engine):
    parent = make_request(steps=3)
    child = retake_of(engine, parent, 2, 5, seed=99, prompt="a blue ball")
    frames = engine.generate(child).frames
    kept = child.retake.frames
    for f in (0, 1, 6, 7):
        np.testing.assert_array_equal(frames[f], kept[f])
    assert all(not np.array_equal(frames[f], kept[f]) for f in range(2, 6))
    # Retakes of retakes: the second keeps the first's frames, span and all.
    grandchild_take = take_files(engine.generate(child))
    again = dataclasses.replace(
        child, seed=7, retake=Retake("1" * 32, 0, 1, grandchild_take[TAKE_LATENTS], grandchild_take[TAKE_FRAMES])
    )
    second = engine.generate(again).frames
    np.testing.assert_array_equal(second[2:], frames[2:])
    assert not np.array_equal(second[:2], frames[:2])


def test_a_span_over_the_whole_clip_is_the_plain_job(engine):
    """Nothing is known: the loop is the plain job's, bit for bit (no hook but progress)."""
    request = make_request(steps=2, seed=5)
    whole = retake_of(engine, make_request(steps=2), 0, request.num_frames - 1, seed=5)
    np.testing.assert_array_equal(engine.generate(whole).frames, engine.generate(request).frames)


def test_a_long_retake_runs_only_the_windows_its_span_touches(engine):
    """40 frames in windows of 16 (overlap 4: starts 0, 12, 24): a span of 29..33 lies in the last window only;
    the frames outside it are the parent's, and the UNet ran on that window alone."""
    assert (engine.long_video.window_length, engine.long_video.window_overlap) == (16, 4)
    keyframes = [Keyframe.of_image(0, sketch()), Keyframe.of_image(39, sketch(shift=12))]
    parent = make_request(num_frames=40, steps=2, keyframes=keyframes)
    child = retake_of(engine, parent, 29, 33, seed=3)
    calls = []
    handle = engine.model.unet.register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[2]))
    try:
        frames = engine.generate(child).frames
    finally:
        handle.remove()
    assert calls == [16, 16]  # one window (CFG's halves together) per step, 2 steps
    outside = [f for f in range(40) if not 29 <= f <= 33]
    np.testing.assert_array_equal(frames[outside], child.retake.frames[outside])
    assert not np.array_equal(frames[29:34], child.retake.frames[29:34])


@pytest.mark.parametrize("scheduler", ["euler", "dpm++ 2m karras", "lcm"])
def test_known_frames_noise_to_each_schedulers_levels(engine, scheduler):
    """add_noise at the step's next timestep works for sigma-space schedulers too: the span is finite and new."""
    parent = make_request(steps=3, scheduler=scheduler)
    child = retake_of(engine, parent, 3, 4, seed=11)
    frames = engine.generate(child).frames
    np.testing.assert_array_equal(frames[:3], child.retake.frames[:3])
    assert not np.array_equal(frames[3:5], child.retake.frames[3:5])


def test_a_pinned_frame_is_its_pictures_vae_round_trip(engine):
    picture = painting()
    request = make_request(
        modality="rgb", steps=3, keyframes=[Keyframe.of_image(3, picture, pin=True), Keyframe.of_image(7, sketch())]
    )
    frames = engine.generate(request).frames
    pipe = engine.build_pipeline("rgb", "ddim")
    pixels = pipe.video_processor.preprocess(picture, height=64, width=64)
    with torch.no_grad():
        latent = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
        decoded = pipe.decode_latents(latent.unsqueeze(2))
    round_trip = to_uint8(pipe.video_processor.postprocess_video(video=decoded, output_type="np")[0][0])
    assert np.abs(frames[3].astype(int) - round_trip.astype(int)).max() <= 1
    # Whatever the seed: the pinned frame stays, the others change.
    other = engine.generate(dataclasses.replace(request, seed=77)).frames
    assert np.abs(other[3].astype(int) - round_trip.astype(int)).max() <= 1
    assert not np.array_equal(other[0], frames[0])
    # Unpinned, the frame is regenerated, not the picture.
    free = engine.generate(
        dataclasses.replace(request, keyframes=[Keyframe.of_image(3, picture), request.keyframes[1]])
    )
    assert np.abs(free.frames[3].astype(int) - round_trip.astype(int)).max() > 10


def test_a_hook_may_replace_the_latents_and_sees_each_step(engine):
    """The loop's contract (diffusers' callback_on_step_end): hooks run in order after every step, the last
    latents a hook returns are what the VAE decodes."""
    from server.engine.windowed import generate_windowed

    seen = []

    class Zero(StepHook):
        def __call__(self, state):
            seen.append((state.step, state.steps, state.next_timestep is None, state.x0 is not None))
            return torch.zeros_like(state.latents) if state.step == state.steps - 1 else None

    request = make_request(steps=3)
    pipe = engine.build_pipeline("lineart", "ddim")
    embeds, negative = engine.encode_prompt(pipe, request)
    frames = generate_windowed(
        pipe,
        prompt_embeds=embeds,
        negative_prompt_embeds=negative,
        num_frames=8,
        width=64,
        height=64,
        num_inference_steps=3,
        guidance_scale=7.5,
        conditioning_frames=[sketch()],
        controlnet_frame_indices=[0],
        controlnet_conditioning_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        window_length=16,
        window_overlap=4,
        shared_noise=True,
        decode_chunk=16,
        step_hooks=[Zero()],
    )
    assert seen == [(0, 3, False, True), (1, 3, False, True), (2, 3, True, True)]
    zero = pipe.video_processor.postprocess_video(pipe.decode_latents(torch.zeros(1, 4, 8, 8, 8)), output_type="np")
    np.testing.assert_array_equal(frames, zero[0])


def test_the_record_keeps_the_retake_and_the_pins():
    request = make_request(
        modality="rgb",
        keyframes=[Keyframe.of_image(0, painting(), pin=True)],
        retake=Retake("a" * 32, 2, 5, b"latents", b"frames"),
    )
    fields, images = request.to_record()
    assert fields["retake"] == {"job": "a" * 32, "frames": [2, 5]} and fields["keyframes"][0]["pin"] is True
    assert images[PARENT_LATENTS] == b"latents" and images[PARENT_FRAMES] == b"frames"
    assert set(image_paths(fields)) == set(images)
    back = GenerationRequest.from_record(fields, images.__getitem__)
    assert back.retake == request.retake and back.retake.frames_data == b"frames" and back.keyframes[0].pin
    # A record from before retakes and pins reads back without them.
    old = {k: v for k, v in fields.items() if k != "retake"} | {"keyframes": [{"index": 0, "output_index": None}]}
    older = GenerationRequest.from_record(old, images.__getitem__)
    assert older.retake is None and not older.keyframes[0].pin


def _body(**changes) -> dict:
    import base64

    image = base64.b64encode(png_bytes(painting())).decode()
    body = {"prompt": "a fox", "modality": "rgb", "num_frames": 8, "keyframes": [{"index": 0, "image": image}]}
    return body | changes


@pytest.mark.parametrize(("frames", "says"), [([5, 2], "forwards"), ([0, 8], "0..7"), ([-1, 3], "forwards")])
def test_a_span_outside_the_clip_or_backwards_is_refused(tiny_config, frames, says):
    with pytest.raises(RequestError) as e:
        resolve_request(_body(retake={"job": "a" * 32, "frames": frames}), tiny_config, ["rgb", "lineart"], seed=1)
    assert e.value.code == "invalid_retake" and says in e.value.message


def test_a_pin_needs_an_rgb_keyframe(tiny_config):
    body = _body(modality="lineart")
    body["keyframes"][0]["pin"] = True
    with pytest.raises(RequestError) as e:
        resolve_request(body, tiny_config, ["rgb", "lineart"], seed=1)
    assert e.value.code == "invalid_request" and "needs an RGB keyframe" in e.value.message
    rgb_look = _body(modality="lineart")
    rgb_look["keyframes"][0] |= {"pin": True, "modality": "rgb"}
    resolved = resolve_request(rgb_look, tiny_config, ["rgb", "lineart"], seed=1)
    assert resolved.keyframes[0].pin and resolved.keyframes[0].modality == "rgb"
