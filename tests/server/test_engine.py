"""The engine against diffusers itself: same frames as a bare pipeline call, conditions where requested."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from server.engine.engine import JobCancelled, ModalityUnavailable, to_uint8
from server.engine.temporal_norm import use_per_frame_temporal_norm
from server.request.model import SCHEDULER_NAMES, GenerationRequest, Keyframe
from tests.conftest import sketch


def make_request(**changes) -> GenerationRequest:
    base = GenerationRequest(
        prompt="a red ball bouncing",
        negative_prompt="blurry",
        modality="lineart",
        num_frames=8,
        width=64,
        height=64,
        steps=4,
        guidance_scale=7.5,
        conditioning_scale=1.0,
        seed=1234,
        scheduler="ddim",
        fps=8,
        keyframes=[Keyframe.of_image(0, sketch()), Keyframe.of_image(7, sketch(shift=12))],
    )
    return dataclasses.replace(base, **changes)


def bare_diffusers_frames(
    tiny_root,
    scheduler_overrides,
    request: GenerationRequest,
    per_frame_norm: bool = True,
    lora_file=None,
    motion_adapter: str = "motion_adapter",
    scheduler_class=None,
    embed=None,
    ip_adapter_file: str = "ip-adapter_sd15.safetensors",
) -> np.ndarray:
    """What a user gets calling diffusers directly on the same folders (the documented diffusers recipe).

    `per_frame_norm`: with the one change we make to diffusers' modules (server/engine/temporal_norm.py, the
    official AnimateDiff normalisation; docs/rgb-correctness.md) applied to them, or without it.
    `motion_adapter`: the tiny model's folder of the motion module; `scheduler_class`: DDIM unless given.
    `embed(pipe, text)`: prompt embeddings made by the caller, for the prompt and the negative prompt.
    `request.reference`: the tiny IP-Adapter loaded by diffusers from h94's layout, its images as ip_adapter_image.
    """
    from diffusers import AnimateDiffSparseControlNetPipeline, DDIMScheduler, MotionAdapter, SparseControlNetModel

    from server.engine.schedulers import SCHEDULERS, overrides_for
    from server.engine.tiny import build_tiny_ip_adapter

    scheduler_class = scheduler_class or DDIMScheduler
    name = next(n for n, kind in SCHEDULERS.items() if kind.cls is scheduler_class)  # its [scheduler.NAME] table
    scheduler_overrides = overrides_for(name, scheduler_overrides)
    pipe = AnimateDiffSparseControlNetPipeline.from_pretrained(
        tiny_root / "base",
        motion_adapter=MotionAdapter.from_pretrained(tiny_root / motion_adapter),
        controlnet=SparseControlNetModel.from_pretrained(tiny_root / "encoders" / request.modality),
        scheduler=scheduler_class.from_pretrained(tiny_root / "base", subfolder="scheduler", **scheduler_overrides),
    )
    if per_frame_norm:
        assert use_per_frame_temporal_norm(pipe.unet) > 0 and use_per_frame_temporal_norm(pipe.controlnet) > 0
    if lora_file is not None:  # diffusers' documented LoRA recipe
        ((name, scale),) = request.loras
        pipe.load_lora_weights(str(lora_file), adapter_name=name)
        pipe.set_adapters([name], [scale])
    reference = {}
    if request.reference is not None:  # diffusers' documented IP-Adapter recipe
        build_tiny_ip_adapter(tiny_root / "ip_adapter", tiny_root / "base" / "unet")  # as --model tiny builds it
        pipe.load_ip_adapter(
            tiny_root / "ip_adapter", subfolder="models", weight_name=ip_adapter_file,
            image_encoder_folder="image_encoder",
        )  # fmt: skip
        pipe.set_ip_adapter_scale(request.reference.strength)
        reference = dict(ip_adapter_image=[request.reference.decoded])
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(request.seed)  # the RGB encoder's VAE sampling draws from the global RNG
    if embed is None:
        prompts = dict(prompt=request.prompt, negative_prompt=request.negative_prompt)
    else:
        prompts = dict(
            prompt_embeds=embed(pipe, request.prompt), negative_prompt_embeds=embed(pipe, request.negative_prompt)
        )
    out = pipe(
        **prompts,
        num_frames=request.num_frames,
        width=request.width,
        height=request.height,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance_scale,
        conditioning_frames=[k.image for k in request.keyframes],
        controlnet_frame_indices=[k.index for k in request.keyframes],
        controlnet_conditioning_scale=request.conditioning_scale,
        generator=torch.Generator("cpu").manual_seed(request.seed),
        output_type="np",
        **reference,
    )
    return to_uint8(out.frames[0])


@pytest.mark.parametrize("modality", ["lineart", "rgb"])
def test_frames_equal_a_bare_diffusers_call(engine, tiny_root, tiny_config, modality):
    request = make_request(modality=modality)
    ours = engine.generate(request).frames
    theirs = bare_diffusers_frames(tiny_root, tiny_config.scheduler, request)
    assert ours.shape == (8, 64, 64, 3) and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


def test_clip_skip_takes_both_prompts_from_that_layer(engine, tiny_root, tiny_config):
    """The worked example of a new request field (docs/architecture.md): clip_skip=1 embeds the prompt and the
    negative prompt from the text encoder's penultimate layer through its final norm (as A1111 does), computed
    here by hand with transformers and given to a bare diffusers call; it changes the clip; the tiny text
    encoder has 2 layers, so 2 is refused with a sentence."""

    def penultimate(pipe, text):
        ids = pipe.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return pipe.text_encoder.final_layer_norm(pipe.text_encoder(ids, output_hidden_states=True)[-1][-2])

    request = dataclasses.replace(make_request(), clip_skip=1)
    skipped = engine.generate(request).frames
    theirs = bare_diffusers_frames(tiny_root, tiny_config.scheduler, request, embed=penultimate)
    np.testing.assert_array_equal(skipped, theirs)
    assert not np.array_equal(skipped, engine.generate(make_request()).frames)
    with pytest.raises(ValueError, match="clip_skip 2: the text encoder has only 2 layers"):
        engine.generate(dataclasses.replace(request, clip_skip=2))


def test_joint_temporal_norm_is_diffusers_untouched(tiny_root, tiny_config):
    """temporal_norm = "joint" gives exactly diffusers' own behaviour (the escape hatch stays honest)."""
    from server.config import load_config
    from server.engine.engine import Engine
    from server.engine.models import load_model

    overrides = {"model": {"base": "tiny", "temporal_norm": "joint"}, "server": {"data_dir": str(tiny_config.data_dir)}}
    config = load_config(overrides=overrides)
    joint = Engine(load_model(config.model, config.data_dir), config.scheduler, config.long_video)
    request = make_request(modality="rgb")
    ours = joint.generate(request).frames
    theirs = bare_diffusers_frames(tiny_root, config.scheduler, request, per_frame_norm=False)
    np.testing.assert_array_equal(ours, theirs)


def test_mask_and_conditions_reach_the_encoder_at_the_requested_indices(engine):
    seen = []
    encoder = engine.model.encoders["lineart"]

    def capture(_module, _args, kwargs):
        seen.append((kwargs["controlnet_cond"].clone(), kwargs["conditioning_mask"].clone()))

    handle = encoder.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        # Given out of order: the engine sorts them, and each image must land on its own index.
        request = make_request(
            keyframes=[Keyframe.of_image(5, sketch(shift=12)), Keyframe.of_image(1, sketch())], steps=2
        )
        engine.generate(request)
    finally:
        handle.remove()
    assert len(seen) == 2  # one encoder call per step
    cond, mask = seen[0]
    assert mask.shape == (1, 1, 8, 64, 64)  # (batch, 1, frames, h, w); broadcast over the CFG batch
    conditioned = [f for f in range(8) if mask[:, :, f].eq(1).all()]
    assert conditioned == [1, 5]
    assert mask[:, :, [0, 2, 3, 4, 6, 7]].eq(0).all()
    assert cond[:, :, [0, 2, 3, 4, 6, 7]].eq(0).all()  # zero image placeholder elsewhere
    for index, img in ((1, sketch()), (5, sketch(shift=12))):
        expected = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        torch.testing.assert_close(cond[0, :, index], expected)


def test_keyframe_images_change_the_result(engine):
    a = engine.generate(make_request()).frames
    b = engine.generate(
        make_request(keyframes=[Keyframe.of_image(0, sketch(shift=20)), Keyframe.of_image(7, sketch(shift=3))])
    ).frames
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("modality", ["lineart", "rgb", "depth"])
def test_same_request_and_seed_give_identical_frames(engine, modality):
    first = engine.generate(make_request(modality=modality)).frames
    engine.generate(make_request(modality="rgb" if modality != "rgb" else "lineart", seed=99))  # state in between
    second = engine.generate(make_request(modality=modality)).frames
    np.testing.assert_array_equal(first, second)
    other_seed = engine.generate(make_request(modality=modality, seed=4321)).frames
    assert not np.array_equal(first, other_seed)


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_generates(engine, scheduler):
    result = engine.generate(make_request(scheduler=scheduler, steps=3))
    assert result.frames.shape == (8, 64, 64, 3)
    assert result.frames.std() > 0


def test_encoders_swap_without_reloading_the_base(engine):
    unet, vae, text_encoder = engine.model.unet, engine.model.vae, engine.model.text_encoder
    pointer = next(unet.parameters()).data_ptr()
    for modality in ("lineart", "rgb", "depth", "lineart"):
        engine.generate(make_request(modality=modality, steps=1))
    assert engine.model.unet is unet and engine.model.vae is vae and engine.model.text_encoder is text_encoder
    assert next(unet.parameters()).data_ptr() == pointer


def test_progress_is_reported_per_step_and_cancel_stops_between_steps(engine):
    steps = []

    def on_step(step, total):
        steps.append((step, total))

    engine.generate(make_request(steps=5), on_step=on_step)
    assert steps == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]

    steps.clear()
    with pytest.raises(JobCancelled):
        engine.generate(make_request(steps=5), on_step=on_step, should_cancel=lambda: len(steps) >= 2)
    assert steps == [(1, 5), (2, 5)]


def test_a_modality_without_encoder_is_refused_naming_the_available_ones(engine):
    encoders = engine.model.encoders
    depth = encoders.pop("depth")
    try:
        with pytest.raises(ModalityUnavailable, match="available: lineart, rgb"):
            engine.generate(make_request(modality="depth"))
    finally:
        encoders["depth"] = depth


def test_keyframes_of_another_size_are_fitted(engine):
    wide = sketch(width=160, height=64)
    result = engine.generate(make_request(keyframes=[Keyframe.of_image(0, wide)], width=64, height=48))
    assert result.frames.shape == (8, 48, 64, 3)
