"""A reference look (IP-Adapter, #30) against diffusers itself: a job with a reference equals diffusers' SparseCtrl
pipeline given `ip_adapter_image` on the same tiny weights (diffusers loading h94's files itself), strength 0 is
the job without one bit for bit, references steer (two differ, several images differ from one, alone with the
prompt), the guidance window, context windows, beside ControlNets, drafts and retakes; requests, records and
bad input."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from server.request.errors import RequestError
from server.request.model import DenseGroup, GenerationRequest, Keyframe, Reference, image_paths
from server.request.resolve import resolve_request
from tests.conftest import png_bytes
from tests.server.test_engine import bare_diffusers_frames, make_request
from tests.server.test_known_frames import retake_of


def look(seed: int, width: int = 96, height: int = 80) -> Image.Image:
    """A stand-in for a character sheet's view: coloured shapes on a coloured ground, different for each seed."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        draw.ellipse((x, y, x + 30, y + 24), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img


def reference_of(*seeds: int, strength: float = 0.8, **window) -> Reference:
    images = tuple(png_bytes(look(s)) for s in seeds)
    return Reference(images, strength, sha256=tuple(hashlib.sha256(i).hexdigest() for i in images), **window)


def with_reference(request: GenerationRequest, reference: Reference | None) -> GenerationRequest:
    return dataclasses.replace(request, reference=reference)


def test_the_tiny_model_ships_an_ip_adapter_installed_apart_from_the_unet(engine):
    adapter = engine.reference_adapter
    assert adapter is not None and adapter.weights.kind == "plain"
    unet = engine.model.unet
    assert unet.encoder_hid_proj is None  # between jobs the UNet is as it was
    assert not any(hasattr(p, "to_k_ip") for p in unet.attn_processors.values())
    assert len(adapter.ip_processors) == 4  # the tiny UNet's cross-attentions
    assert next(adapter.weights.image_encoder.parameters()).device.type == "cpu"


@pytest.mark.parametrize("seeds", [(1,), (1, 2)], ids=["one image", "a sheet of two"])
def test_a_reference_equals_diffusers_with_ip_adapter_image(engine, tiny_root, tiny_config, seeds):
    """diffusers' documented recipe on the same folders: load_ip_adapter from h94's layout, set_ip_adapter_scale,
    ip_adapter_image=[[images]] (several images of one adapter)."""
    request = with_reference(make_request(), reference_of(*seeds))
    ours = engine.generate(request).frames
    theirs = bare_diffusers_frames(tiny_root, tiny_config.scheduler, request)
    np.testing.assert_array_equal(ours, theirs)


@pytest.fixture(scope="module")
def plus_engine(tiny_config):
    """The tiny model with its plus adapter ([model.ip_adapter] adapter = the file; the encoder beside it)."""
    from server.config import load_config
    from server.engine.engine import Engine
    from server.engine.models import load_model

    plus = tiny_config.data_dir / "models" / "tiny" / "ip_adapter" / "models" / "ip-adapter-plus_sd15.safetensors"
    overrides = {"model": {"base": "tiny", "ip_adapter": {"adapter": str(plus)}}}
    config = load_config(overrides=overrides | {"server": {"data_dir": str(tiny_config.data_dir)}})
    return Engine(load_model(config.model, config.data_dir), config.scheduler, config.long_video)


def test_a_plus_adapter_equals_diffusers_too_and_leaves_the_unet_as_it_was(plus_engine, tiny_root, tiny_config):
    """ip-adapter-plus: a Resampler over the encoder's penultimate hidden states (its negative: the encoder on a
    black image), with attentions of its own inside the projection."""
    assert plus_engine.reference_adapter.weights.kind == "plus"
    request = with_reference(make_request(), reference_of(1, 2))
    ours = plus_engine.generate(request).frames
    theirs = bare_diffusers_frames(
        tiny_root, tiny_config.scheduler, request, ip_adapter_file="ip-adapter-plus_sd15.safetensors"
    )
    np.testing.assert_array_equal(ours, theirs)
    unet = plus_engine.model.unet
    assert unet.encoder_hid_proj is None and not any(hasattr(p, "to_k_ip") for p in unet.attn_processors.values())
    plain = bare_diffusers_frames(tiny_root, tiny_config.scheduler, make_request())
    np.testing.assert_array_equal(plus_engine.generate(make_request()).frames, plain)


def test_strength_0_is_the_job_without_a_reference_bit_for_bit(engine):
    request = make_request(steps=3)
    plain = engine.generate(request).frames
    zero = engine.generate(with_reference(request, reference_of(1, strength=0.0))).frames
    np.testing.assert_array_equal(zero, plain)
    # ... and a job after one with a reference is as before (the adapter left the UNet).
    engine.generate(with_reference(request, reference_of(1)))
    np.testing.assert_array_equal(engine.generate(request).frames, plain)


def test_references_steer_two_differ_and_a_sheet_differs_from_one_image(engine):
    request = make_request(steps=3)
    plain = engine.generate(request).frames
    one = engine.generate(with_reference(request, reference_of(1))).frames
    other = engine.generate(with_reference(request, reference_of(2))).frames
    sheet = engine.generate(with_reference(request, reference_of(1, 2))).frames
    for a, b in ((plain, one), (one, other), (one, sheet)):
        assert np.abs(a.astype(int) - b.astype(int)).mean() > 1
    stronger = engine.generate(with_reference(request, reference_of(1, strength=1.6))).frames
    assert np.abs(stronger.astype(int) - plain).mean() > np.abs(one.astype(int) - plain).mean()


def test_a_reference_alone_with_the_prompt_steers_a_job(engine, tiny_root, tiny_config):
    request = make_request(keyframes=[], modality="")
    frames = engine.generate(with_reference(request, reference_of(3))).frames
    assert frames.shape == (8, 64, 64, 3)
    assert not np.array_equal(frames, engine.generate(with_reference(request, reference_of(4))).frames)


def test_the_guidance_window_steers_only_its_steps(engine):
    request = make_request(steps=4)
    full = engine.generate(with_reference(request, reference_of(1))).frames
    same = engine.generate(with_reference(request, reference_of(1, guidance_start=0.0, guidance_end=1.0))).frames
    np.testing.assert_array_equal(full, same)
    late = engine.generate(with_reference(request, reference_of(1, guidance_start=0.5))).frames
    plain = engine.generate(request).frames
    assert not np.array_equal(late, full) and not np.array_equal(late, plain)
    # Steps 0 and 1 of 4 unsteered: the UNet saw scale 0 there (diffusers' processors skip the image tokens).
    scales = []
    processor = engine.reference_adapter.ip_processors[0]
    hook = engine.model.unet.register_forward_pre_hook(lambda *_: scales.append(list(processor.scale)))
    try:
        engine.generate(with_reference(request, reference_of(1, strength=0.7, guidance_start=0.5)))
    finally:
        hook.remove()
    assert scales == [[0.0], [0.0], [0.7], [0.7]]


def test_a_long_reference_job_runs_in_context_windows_and_cfg_halves(engine, monkeypatch):
    """24 frames in windows of 16 (overlap 4): the UNet gets the image embeddings in every window; CFG's halves
    one after the other give each half its own embeddings (the same clip up to float rounding)."""
    keyframes = [Keyframe.of_image(0, look(5).resize((64, 64))), Keyframe.of_image(23, look(6).resize((64, 64)))]
    request = with_reference(make_request(num_frames=24, steps=2, modality="rgb", keyframes=keyframes), reference_of(1))
    windows = engine.generate(request).frames
    assert windows.shape == (24, 64, 64, 3)
    assert not np.array_equal(windows, engine.generate(with_reference(request, None)).frames)
    monkeypatch.setattr(engine, "performance", dataclasses.replace(engine.performance, cfg_halves="sequential"))
    halves = engine.generate(request).frames
    assert np.abs(halves.astype(int) - windows.astype(int)).max() <= 2
    no_cfg = engine.generate(dataclasses.replace(request, guidance_scale=1.0)).frames
    assert no_cfg.shape == (24, 64, 64, 3)


def test_a_reference_beside_a_depth_controlnet_a_draft_and_a_retake(engine):
    request = make_request(steps=2)
    depth = tuple(Keyframe.of_image(i, Image.linear_gradient("L").resize((64, 64)).convert("RGB")) for i in range(8))
    with_depth = dataclasses.replace(request, controlnets=(DenseGroup("depth", 1.0, depth),))
    both = engine.generate(with_reference(with_depth, reference_of(1))).frames
    assert not np.array_equal(both, engine.generate(with_depth).frames)
    draft = engine.generate(with_reference(dataclasses.replace(request, quality="draft"), reference_of(1))).frames
    assert draft.shape == (8, 64, 64, 3)
    # A retake with the reference: frames outside the span stay the take's, the span follows the reference.
    parent = with_reference(request, reference_of(1))
    child = retake_of(engine, parent, 2, 5, seed=99)
    frames = engine.generate(child).frames
    for f in (0, 1, 6, 7):
        np.testing.assert_array_equal(frames[f], child.retake.frames[f])


def test_the_image_encoder_runs_once_per_job_and_leaves_the_device(engine):
    encoder = engine.reference_adapter.weights.image_encoder
    calls, moves = [], []
    hook = encoder.register_forward_pre_hook(lambda *_: calls.append(1))
    original = engine.move

    def move(module, where):
        moves.append((module is encoder, torch.device(where).type))
        original(module, where)

    engine.move = move
    try:
        engine.generate(with_reference(make_request(num_frames=24, steps=2), reference_of(1, 2)))
    finally:
        hook.remove()
        engine.move = original
    assert len(calls) == 1  # the plain adapter: one forward for the images; its negative is zeros
    assert [m for m in moves if m[0]] == [(True, engine.device.type), (True, "cpu")]


def test_the_record_keeps_the_reference_images_and_their_hashes():
    reference = reference_of(1, 2, strength=0.6, guidance_start=0.1, guidance_end=0.9)
    request = with_reference(make_request(), reference)
    fields, data = request.to_record()
    assert fields["reference"] == {
        "images": 2,
        "strength": 0.6,
        "guidance_start": 0.1,
        "guidance_end": 0.9,
        "sha256": list(reference.sha256),
    }
    assert {"reference/0.png", "reference/1.png"} <= set(image_paths(fields)) == set(data)
    again = GenerationRequest.from_record(fields, data.__getitem__)
    assert again.reference == reference and again.reference.images == reference.images


def _body(**reference) -> dict:
    return {"prompt": "a knight", "reference": {"images": [png_bytes(look(1))], **reference}}


def test_a_reference_resolves_with_its_defaults_hashes_and_a_kept_size(tiny_config):
    big = look(1, width=1600, height=1200)
    body = {"prompt": "a knight", "reference": {"images": [png_bytes(big), png_bytes(look(2))]}}
    request = resolve_request(body, tiny_config, ["lineart"], seed=1, ip_adapter=True)
    ref = request.reference
    assert (ref.strength, ref.guidance_start, ref.guidance_end) == (1.0, 0.0, 1.0)
    assert ref.sha256[0] == hashlib.sha256(png_bytes(big)).hexdigest()
    assert ref.decoded[0].size == (683, 512)  # kept at 512 on the short side; the encoder sees 224x224
    assert ref.images[1] == png_bytes(look(2))  # a small PNG is kept as sent


@pytest.mark.parametrize(
    "reference, code, said",
    [
        ({"images": []}, "invalid_request", "reference.images"),
        ({"images": ["bm90IGFuIGltYWdl"]}, "invalid_image", "reference image 0: not a readable"),
        ({"images": ["%%%"]}, "invalid_image", "reference image 0: image is not valid base64"),
        ({"images": [b"x"] * 9}, "invalid_request", "reference.images"),
        ({"strength": -0.1}, "invalid_request", "reference.strength"),
        ({"strength": 2.5}, "invalid_request", "reference.strength"),
        ({"guidance_start": 0.6, "guidance_end": 0.4}, "invalid_request", "reference: guidance start 0.6"),
        ({"strength": 0.0}, "invalid_request", "nothing conditions the clip"),
    ],
)
def test_bad_references_are_said(tiny_config, reference, code, said):
    body = _body(**reference)
    if "images" in reference:
        body["reference"]["images"] = reference["images"]
    with pytest.raises(RequestError) as e:
        resolve_request(body, tiny_config, ["lineart"], seed=1, ip_adapter=True)
    assert e.value.code == code and said in e.value.message


def test_a_reference_without_an_ip_adapter_is_refused_before_decoding(tiny_config):
    with pytest.raises(RequestError) as e:
        resolve_request(_body(images=["%%%"]), tiny_config, ["lineart"], seed=1, ip_adapter=False)
    assert e.value.code == "reference_unavailable" and "[model.ip_adapter]" in e.value.message


def test_a_window_the_steps_miss_is_said(tiny_config):
    body = {**_body(guidance_start=0.5, guidance_end=0.6), "steps": 3}
    with pytest.raises(RequestError, match="reference: the guidance window 0.5-0.6 steers none"):
        resolve_request(body, tiny_config, ["lineart"], seed=1, ip_adapter=True)
