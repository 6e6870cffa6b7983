"""Several SparseCtrl encoders in one job (#16 item 2): an RGB look at frame 0 beside line art at 0 and 7, each
keyframe going to its modality's encoder, the residuals summed in order. A further encoder's keyframes are
prepared as the pipeline prepares its own (an RGB-only job through the further path equals the plain RGB job
bit for bit), a group at strength 0 changes nothing, and each group has its own strength and guidance window,
in one context window or many; requests, records and bad input."""

from __future__ import annotations

import base64
import dataclasses
import io

import numpy as np
import pytest

from server.request.errors import RequestError
from server.request.model import GenerationRequest, Keyframe, KeyframeGroup, image_paths
from server.request.resolve import resolve_request
from tests.conftest import sketch
from tests.server.test_engine import make_request


def painting(width: int = 64, height: int = 64):
    """A colour image (what the RGB encoder takes): a warm gradient with a blue square."""
    from PIL import Image

    x = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.stack(
        [np.tile(x, (height, 1)), np.full((height, width), 90, np.uint8), np.tile(x[::-1], (height, 1))], -1
    )
    pixels[20:40, 24:44] = (30, 60, 220)
    return Image.fromarray(pixels)


def mixed(request: GenerationRequest, **group) -> GenerationRequest:
    """`request`'s line art plus an RGB look at frame 0 (a further encoder's keyframe)."""
    look = Keyframe.of_image(0, painting(), modality="rgb")
    groups = (KeyframeGroup("rgb", **group),) if group else ()
    return dataclasses.replace(request, keyframes=[*request.keyframes, look], keyframe_groups=groups)


def test_a_further_encoder_prepares_its_keyframes_as_the_pipeline_does(engine):
    """RGB keyframes through the further-encoder path (the request's modality is line art, no line-art keyframe)
    equal the same keyframes as the pipeline's own encoder: the VAE encoding, mask and scale alike."""
    rgb = make_request(modality="rgb", keyframes=[Keyframe.of_image(0, painting()), Keyframe.of_image(7, sketch())])
    plain = engine.generate(rgb).frames
    further = dataclasses.replace(
        rgb, modality="lineart", keyframes=[dataclasses.replace(k, modality="rgb") for k in rgb.keyframes]
    )
    assert further.keyframe_modalities() == ["rgb"] and not further.keyframes_for("lineart")
    np.testing.assert_array_equal(engine.generate(further).frames, plain)


def test_a_mixed_job_sums_both_encoders(engine):
    request = make_request(steps=3)
    lineart = engine.generate(request).frames
    # A group at strength 0 adds zeros: the line-art job bit for bit (so is a window no step falls in).
    np.testing.assert_array_equal(engine.generate(mixed(request, strength=0.0)).frames, lineart)
    np.testing.assert_array_equal(engine.generate(mixed(request, strength=1.0, guidance_start=0.9)).frames, lineart)
    both = engine.generate(mixed(request)).frames
    rgb_alone = engine.generate(
        dataclasses.replace(mixed(request), keyframes=[k for k in mixed(request).keyframes if k.modality])
    ).frames
    assert not np.array_equal(both, lineart) and not np.array_equal(both, rgb_alone)
    # Its own strength and window: each changes the clip, the line art's settings stay the request's.
    assert not np.array_equal(engine.generate(mixed(request, strength=0.5)).frames, both)
    early = engine.generate(mixed(request, strength=1.0, guidance_end=0.5)).frames
    assert not np.array_equal(early, both) and not np.array_equal(early, lineart)
    # The further encoder is back off the device after the job (CPU here: it is where it was).
    assert next(engine.model.encoders["rgb"].parameters()).device.type == "cpu"


def test_a_long_mixed_job_runs_in_windows(engine):
    """24 frames in windows of 16, line art at 0 and 23, the RGB look at 0 and 12, depth on every frame: each
    window gets its encoders' slices; the RGB group at strength 0 is the job without it, bit for bit."""
    from tests.server.test_dense_controlnet import depth_frames, with_depth

    assert engine.long_video.window_length < 24
    request = make_request(
        num_frames=24, steps=2, keyframes=[Keyframe.of_image(0, sketch()), Keyframe.of_image(23, sketch(shift=12))]
    )
    request = with_depth(request, depth_frames(24))
    looks = [Keyframe.of_image(i, painting(), modality="rgb") for i in (0, 12)]
    without = engine.generate(request).frames
    zero = dataclasses.replace(
        request, keyframes=[*request.keyframes, *looks], keyframe_groups=(KeyframeGroup("rgb", 0.0),)
    )
    np.testing.assert_array_equal(engine.generate(zero).frames, without)
    frames = engine.generate(dataclasses.replace(zero, keyframe_groups=())).frames
    assert frames.shape == without.shape and not np.array_equal(frames, without)


def png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def body(**changes) -> dict:
    fields = {
        "prompt": "a red ball",
        "modality": "lineart",
        "num_frames": 8,
        "width": 64,
        "height": 64,
        "steps": 4,
        "output_frames": 16,
        "keyframes": [
            {"index": 0, "image": png(sketch()), "output_index": 0},
            {"index": 7, "image": png(sketch(shift=12)), "output_index": 15},
            {"index": 0, "image": png(painting()), "modality": "rgb", "output_index": 0, "strength": 0.5},
        ],
        "keyframe_groups": [{"modality": "rgb", "strength": 0.8, "guidance_end": 0.5}],
    }
    return fields | changes


def resolve(fields, config, modalities=("lineart", "rgb")):
    return resolve_request(fields, config, list(modalities), seed=1)


def test_keyframes_of_two_modalities_resolve_and_round_trip(tiny_config):
    request = resolve(body(), tiny_config)
    assert [(k.index, k.modality) for k in request.keyframes] == [(0, ""), (0, "rgb"), (7, "")]
    assert request.keyframe_modalities() == ["lineart", "rgb"]
    assert request.keyframe_settings("rgb") == (0.8, (0.0, 0.5))
    assert request.keyframe_settings("lineart") == (request.conditioning_scale, (0.0, 1.0))
    fields, data = request.to_record()
    assert (
        sorted(data)
        == sorted(image_paths(fields))
        == ["keyframes/0000.png", "keyframes/0007.png", "keyframes/rgb/0000.png"]
    )
    again = GenerationRequest.from_record(fields, data.__getitem__)
    assert again == request and again.keyframes[1].strength == 0.5
    # A record from before several encoders (no modality per keyframe, no groups) reads back as before.
    old = {k: v for k, v in fields.items() if k != "keyframe_groups"}
    old["keyframes"] = [k for k in fields["keyframes"] if "modality" not in k]
    assert GenerationRequest.from_record(old, data.__getitem__).keyframe_modalities() == ["lineart"]
    # A keyframe naming the request's own modality is one of its own.
    same = body(keyframes=[{"index": 0, "image": png(sketch()), "modality": "lineart"}], keyframe_groups=None)
    assert [k.modality for k in resolve(same, tiny_config).keyframes] == [""]


@pytest.mark.parametrize(
    ("change", "code", "said"),
    [
        ({}, "modality_unavailable", "no condition encoder is configured for modality 'rgb'"),
        (
            {"keyframes": body()["keyframes"] + [{"index": 0, "image": png(painting()), "modality": "rgb"}]},
            "invalid_request",
            "two keyframes have index 0 for rgb",
        ),
        (
            {"keyframes": body()["keyframes"][:2] + [{**body()["keyframes"][2], "output_index": 3}]},
            "invalid_request",
            "keyframes at index 0 have output_index 0 and 3",
        ),
        ({"keyframe_groups": [{"modality": "depth"}]}, "invalid_request", "no keyframe is of modality 'depth'"),
        (
            {"keyframe_groups": [{"modality": "rgb"}, {"modality": "rgb", "strength": 1.0}]},
            "invalid_request",
            "modality 'rgb' is named twice",
        ),
        (
            {"keyframe_groups": [{"modality": "rgb", "guidance_start": 0.6, "guidance_end": 0.7}]},
            "invalid_request",
            "rgb keyframes: the guidance window 0.6-0.7 steers none of the job's 4 steps",
        ),
        (
            {"keyframe_groups": [{"modality": "rgb", "guidance_start": 0.5, "guidance_end": 0.5}]},
            "invalid_request",
            "rgb keyframes: guidance start 0.5 must be below guidance end 0.5",
        ),
        ({"keyframes": [], "controlnets": None}, "invalid_request", "nothing conditions the clip"),
    ],
)
def test_bad_keyframe_groups_are_said(tiny_config, change, code, said):
    modalities = ("lineart",) if code == "modality_unavailable" else ("lineart", "rgb", "depth")
    with pytest.raises(RequestError) as e:
        resolve(body(**change), tiny_config, modalities)
    assert e.value.code == code and said in e.value.message, e.value.message


def test_the_api_rejects_an_unknown_keyframe_modality(tiny_config):
    with pytest.raises(RequestError, match="keyframes.2.modality"):
        resolve(
            body(keyframes=[*body()["keyframes"][:2], {"index": 3, "image": png(sketch()), "modality": "x"}]),
            tiny_config,
        )


def test_a_group_for_the_requests_own_modality_sets_its_strength(engine):
    """keyframe_groups may name the request's modality: its strength is that encoder's conditioning scale (and a
    keyframe naming the request's modality is one of its own, however the request was built)."""
    request = make_request(steps=2)
    half = engine.generate(dataclasses.replace(request, conditioning_scale=0.5)).frames
    grouped = dataclasses.replace(request, keyframe_groups=(KeyframeGroup("lineart", 0.5),))
    np.testing.assert_array_equal(engine.generate(grouped).frames, half)
    named = [dataclasses.replace(k, modality="lineart") for k in grouped.keyframes]
    assert dataclasses.replace(grouped, keyframes=named).keyframe_modalities() == ["lineart"]
    np.testing.assert_array_equal(engine.generate(dataclasses.replace(grouped, keyframes=named)).frames, half)
