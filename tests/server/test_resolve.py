"""Requests resolved against the config: defaults applied, limits enforced with the API's error codes."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import pytest

from server.api.errors import status_of
from server.config import load_config
from server.request.errors import RequestError
from server.request.model import GenerationRequest, image_paths
from server.request.resolve import resolve_request
from tests.conftest import png_bytes, sketch

CONFIG = load_config()
ALL = ["lineart", "rgb", "depth"]


def body(**changes):
    fields = {
        "prompt": "a ball",
        "modality": "lineart",
        "keyframes": [{"index": 0, "image": base64.b64encode(png_bytes(sketch())).decode()}],
    }
    fields.update(changes)
    return fields


def test_defaults_come_from_the_config_and_the_seed_is_kept():
    r = resolve_request(body(), CONFIG, ALL, seed=77)
    g = CONFIG.generation
    assert (r.num_frames, r.width, r.height, r.steps, r.scheduler, r.fps) == (
        g.num_frames,
        g.width,
        g.height,
        g.steps,
        g.scheduler,
        g.fps,
    )
    assert r.negative_prompt == g.negative_prompt and r.seed == 77
    echo, _ = r.to_record()
    assert echo["keyframes"] == [{"index": 0, "output_index": None, "strength": 1.0}] and echo["seed"] == 77
    assert (echo["keyframe_guidance_start"], echo["keyframe_guidance_end"]) == (0.0, 1.0)  # the whole denoising
    assert echo["output_frames"] == g.num_frames
    assert resolve_request(body(seed=5), CONFIG, ALL, seed=77).seed == 5


def test_keyframes_are_sorted_and_stored_as_png():
    img = base64.b64encode(png_bytes(sketch())).decode()
    at_size = body(width=64, height=64, keyframes=[{"index": 9, "image": img}, {"index": 2, "image": img}])
    r = resolve_request(at_size, CONFIG, ALL, 1)
    assert [k.index for k in r.keyframes] == [2, 9]
    _, images = r.to_record()
    assert all(data == base64.b64decode(img) for data in images.values())  # a PNG of the clip's size is kept as sent
    buf = io.BytesIO()
    sketch().save(buf, format="JPEG")
    jpeg = resolve_request(
        body(width=64, height=64, keyframes=[{"index": 0, "image": base64.b64encode(buf.getvalue()).decode()}]),
        CONFIG,
        ALL,
        1,
    )
    assert jpeg.to_record()[1]["keyframes/0000.png"].startswith(b"\x89PNG")  # other formats become PNG, once


def test_images_are_kept_fitted_to_the_generation_size_as_the_engine_fits_them():
    """#32 item 1: a large image is decoded once, fitted at once and kept small; the engine's own fitting of the
    original gives the same pixels, so the job's output is unchanged."""
    from PIL import Image

    from server.engine.conditions import fit_to_size

    big = sketch(400, 300)
    r = resolve_request(
        body(width=96, height=64, keyframes=[{"index": 0, "image": base64.b64encode(png_bytes(big)).decode()}]),
        CONFIG,
        ALL,
        1,
    )
    kept = r.keyframes[0].data
    assert Image.open(io.BytesIO(kept)).size == (96, 64)
    assert r.keyframes[0].image.tobytes() == fit_to_size(big, 96, 64).tobytes()
    assert fit_to_size(r.keyframes[0].image, 96, 64).tobytes() == fit_to_size(big, 96, 64).tobytes()
    draft = resolve_request(
        body(width=512, height=512, quality="draft", keyframes=[{"index": 0, "image": IMG}]), CONFIG, ALL, 1
    )
    assert Image.open(io.BytesIO(draft.keyframes[0].data)).size == (draft.width, draft.height)  # a draft's size


def test_a_requests_images_are_bounded_in_pixels_in_all():
    tight = dataclasses.replace(CONFIG, limits=dataclasses.replace(CONFIG.limits, max_request_pixels=3 * 64 * 64))
    frames = [{"index": i, "image": IMG} for i in range(4)]
    with pytest.raises(RequestError) as e:
        resolve_request(body(width=64, height=64, keyframes=frames), tight, ALL, 1)
    assert e.value.code == "invalid_image" and "max_request_pixels" in e.value.message
    assert len(resolve_request(body(width=64, height=64, keyframes=frames[:3]), tight, ALL, 1).keyframes) == 3


def test_the_record_form_gives_back_the_same_request():
    kf = [{"index": 3, "image": IMG, "output_index": 9}]
    r = resolve_request(body(width=64, height=64, num_frames=8, output_frames=24, keyframes=kf), CONFIG, ALL, 1)
    fields, images = r.to_record()
    back = GenerationRequest.from_record(json.loads(json.dumps(fields)), images.__getitem__)
    assert dataclasses.replace(back, keyframes=[]) == dataclasses.replace(r, keyframes=[])
    assert [(k.index, k.output_index, k.data) for k in back.keyframes] == [(3, 9, base64.b64decode(IMG))]
    assert back.keyframes[0].image.tobytes() == r.keyframes[0].image.tobytes()
    older = {k: v for k, v in fields.items() if k != "clip_skip"}  # a record written before clip_skip existed
    assert GenerationRequest.from_record(older, images.__getitem__).clip_skip == 0


def test_data_urls_and_raw_bytes_are_accepted():
    data = png_bytes(sketch())
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert resolve_request(body(keyframes=[{"index": 0, "image": url}]), CONFIG, ALL, 1)
    assert resolve_request(body(keyframes=[{"index": 0, "image": data}]), CONFIG, ALL, 1)


IMG = base64.b64encode(png_bytes(sketch())).decode()
BAD = [
    ("unknown modality", body(modality="normal"), "invalid_request"),
    ("frames over the limit", body(num_frames=CONFIG.limits.max_frames + 1), "invalid_request"),
    ("width not a multiple of 8", body(width=100), "invalid_request"),
    ("height too small", body(height=8), "invalid_request"),
    ("zero steps", body(steps=0), "invalid_request"),
    ("negative guidance", body(guidance_scale=-1), "invalid_request"),
    ("unknown scheduler", body(scheduler="heun"), "invalid_request"),
    ("seed too large", body(seed=2**32), "invalid_request"),
    ("prompt too long", body(prompt="x" * (CONFIG.limits.max_prompt_chars + 1)), "invalid_request"),
    ("no keyframes", body(keyframes=[]), "invalid_request"),
    ("index past the end", body(num_frames=8, keyframes=[{"index": 8, "image": IMG}]), "invalid_request"),
    ("duplicate index", body(keyframes=[{"index": 3, "image": IMG}] * 2), "invalid_request"),
    ("more keyframes than frames", body(num_frames=1, keyframes=[{"index": 0, "image": IMG}] * 2), "invalid_request"),
    ("not base64", body(keyframes=[{"index": 0, "image": "%%%"}]), "invalid_image"),
    ("not an image", body(keyframes=[{"index": 0, "image": base64.b64encode(b"hello").decode()}]), "invalid_image"),
]


@pytest.mark.parametrize("fields, code", [(f, c) for _, f, c in BAD], ids=[n for n, _, _ in BAD])
def test_bad_requests_are_refused_with_a_code(fields, code):
    with pytest.raises(RequestError) as e:
        resolve_request(fields, CONFIG, ALL, seed=1)
    assert e.value.code == code and status_of(e.value.code) == 422 and e.value.message


def test_modality_without_encoder_names_what_is_available():
    with pytest.raises(RequestError, match="available: lineart, rgb") as e:
        resolve_request(body(modality="depth"), CONFIG, ["lineart", "rgb"], seed=1)
    assert e.value.code == "modality_unavailable"


# -- per-frame ControlNets (#16) ---------------------------------------------------------------------------------


def depth_group(indices, name="depth", **changes):
    return {"name": name, "frames": [{"index": i, "image": IMG} for i in indices], **changes}


def test_a_depth_only_job_needs_no_modality_and_keeps_its_frames_in_order():
    fields = body(num_frames=4, controlnets=[depth_group([3, 1, 0, 2], strength=0.6)])
    del fields["keyframes"], fields["modality"]
    r = resolve_request(fields, CONFIG, ALL, seed=1, controlnets=["depth"])
    assert r.modality == "" and r.keyframes == []
    ((group,),) = [r.controlnets]
    assert (group.name, group.strength, [f.index for f in group.frames]) == ("depth", 0.6, [0, 1, 2, 3])
    record, images = r.to_record()
    assert record["controlnets"] == [
        {"name": "depth", "strength": 0.6, "frames": [0, 1, 2, 3], "guidance_start": 0.0, "guidance_end": 1.0}
    ]
    assert sorted(images) == [f"controlnets/0/000{i}.png" for i in range(4)] == image_paths(record)
    back = GenerationRequest.from_record(json.loads(json.dumps(record)), images.__getitem__)
    assert back.controlnets[0].frames[2].image.tobytes() == group.frames[2].image.tobytes()
    assert back.to_record() == (record, images)
    # Strength omitted: 1.0; with keyframes too, both are kept.
    mixed = resolve_request(
        body(num_frames=4, controlnets=[depth_group([0, 2])]), CONFIG, ALL, 1, controlnets=["depth"]
    )
    assert mixed.controlnets[0].strength == 1.0 and [k.index for k in mixed.keyframes] == [0]


def test_an_unknown_controlnet_is_refused_listing_the_configured_ones():
    with pytest.raises(RequestError, match=r"'normal'.*available: depth, lineart_dense") as e:
        resolve_request(
            body(controlnets=[depth_group([0], name="normal")]), CONFIG, ALL, 1, controlnets=["lineart_dense", "depth"]
        )
    assert e.value.code == "unknown_controlnet" and status_of(e.value.code) == 422
    with pytest.raises(RequestError, match="available: none"):
        resolve_request(body(controlnets=[depth_group([0])]), CONFIG, ALL, 1)


DENSE_BAD = [
    ("index past the clip", [depth_group([0, 8])], "frame index 8 is outside the clip's 0..7"),
    ("an index twice", [depth_group([1, 1])], "two frames have index 1"),
    ("more frames than the clip", [depth_group(list(range(8)) + [0])], "9 frames for a 8-frame clip"),
    ("a name twice", [depth_group([0]), depth_group([1])], "'depth' is named twice"),
    ("no frames", [depth_group([])], "controlnets.0.frames"),
    ("negative strength", [depth_group([0], strength=-1)], "controlnets.0.strength"),
    ("a path for a name", [depth_group([0], name="/models/depth.pth")], "no ControlNet named"),
]


@pytest.mark.parametrize("groups, says", [(g, s) for _, g, s in DENSE_BAD], ids=[n for n, _, _ in DENSE_BAD])
def test_dense_frames_that_do_not_fit_the_clip_are_refused_saying_which(groups, says):
    with pytest.raises(RequestError) as e:
        resolve_request(body(num_frames=8, controlnets=groups), CONFIG, ALL, 1, controlnets=["depth"])
    assert says in e.value.message and status_of(e.value.code) == 422


def test_a_job_with_nothing_to_steer_it_or_keyframes_without_modality_is_refused():
    bare = body()
    del bare["keyframes"]
    with pytest.raises(RequestError, match="send keyframes .*, controlnets .* or a retake"):
        resolve_request(bare, CONFIG, ALL, 1, controlnets=["depth"])
    no_modality = body()
    del no_modality["modality"]
    with pytest.raises(RequestError, match="modality: the keyframes' kind is needed"):
        resolve_request(no_modality, CONFIG, ALL, 1)


def test_a_bad_dense_image_names_its_controlnet_and_frame():
    group = {"name": "depth", "frames": [{"index": 0, "image": IMG}, {"index": 3, "image": "%%%"}]}
    with pytest.raises(RequestError, match="ControlNet 'depth' frame 3: image is not valid base64") as e:
        resolve_request(body(controlnets=[group]), CONFIG, ALL, 1, controlnets=["depth"])
    assert e.value.code == "invalid_image"


# -- per-keyframe strength and guidance windows (#16 item 3) -------------------------------------------------------


def test_keyframe_strengths_and_guidance_windows_are_kept_and_echoed():
    keyframes = [{"index": 0, "image": IMG, "strength": 0.5}, {"index": 7, "image": IMG}]
    fields = body(
        num_frames=8,
        keyframes=keyframes,
        keyframe_guidance_end=0.3,
        controlnets=[depth_group(range(8), guidance_start=0.1, guidance_end=0.8)],
    )
    r = resolve_request(fields, CONFIG, ALL, 1, controlnets=["depth"])
    assert [k.strength for k in r.keyframes] == [0.5, 1.0]
    assert (r.keyframe_guidance_start, r.keyframe_guidance_end) == (0.0, 0.3)
    assert (r.controlnets[0].guidance_start, r.controlnets[0].guidance_end) == (0.1, 0.8)
    record, images = r.to_record()
    assert [k["strength"] for k in record["keyframes"]] == [0.5, 1.0] and record["keyframe_guidance_end"] == 0.3
    back = GenerationRequest.from_record(json.loads(json.dumps(record)), images.__getitem__)
    assert back.to_record() == (record, images)
    # A record from before these fields: every strength 1, every window the whole denoising.
    older = json.loads(json.dumps(record))
    for key in ("keyframe_guidance_start", "keyframe_guidance_end"):
        del older[key]
    for k in older["keyframes"]:
        del k["strength"]
    del older["controlnets"][0]["guidance_start"], older["controlnets"][0]["guidance_end"]
    old = GenerationRequest.from_record(older, images.__getitem__)
    assert [k.strength for k in old.keyframes] == [1.0, 1.0] and old.keyframe_guidance_end == 1.0
    assert (old.controlnets[0].guidance_start, old.controlnets[0].guidance_end) == (0.0, 1.0)


WINDOW_BAD = [
    (
        "keyframes start after end",
        {"keyframe_guidance_start": 0.6, "keyframe_guidance_end": 0.4},
        "keyframes: guidance start 0.6 must be below guidance end 0.4",
    ),
    ("keyframes end above 1", {"keyframe_guidance_end": 1.5}, "keyframe_guidance_end"),
    (
        "a group's empty window",
        {"controlnets": [depth_group([0], guidance_start=0.5, guidance_end=0.5)]},
        "ControlNet 'depth': guidance start 0.5 must be below",
    ),
    (
        "a group's negative start",
        {"controlnets": [depth_group([0], guidance_start=-0.1)]},
        "controlnets.0.guidance_start",
    ),
    (
        "a keyframe's negative strength",
        {"keyframes": [{"index": 0, "image": IMG, "strength": -1}]},
        "keyframes.0.strength",
    ),
    (
        "a keyframe's strength too high",
        {"keyframes": [{"index": 0, "image": IMG, "strength": 9}]},
        "keyframes.0.strength",
    ),
]


@pytest.mark.parametrize("changes, says", [(c, s) for _, c, s in WINDOW_BAD], ids=[n for n, _, _ in WINDOW_BAD])
def test_bad_strengths_and_guidance_windows_are_refused_saying_which(changes, says):
    with pytest.raises(RequestError) as e:
        resolve_request(body(num_frames=8, **changes), CONFIG, ALL, 1, controlnets=["depth"])
    assert says in e.value.message and status_of(e.value.code) == 422


def test_a_guidance_window_that_steers_no_step_is_refused():
    """4 steps (a draft with a draft motion module runs 4): an end of 0.2 holds no step; 0.25 holds the first."""
    with pytest.raises(RequestError, match="keyframes: the guidance window 0-0.2 steers none of the job's 4 steps"):
        resolve_request(body(steps=4, keyframe_guidance_end=0.2), CONFIG, ALL, 1)
    assert resolve_request(body(steps=4, keyframe_guidance_end=0.25), CONFIG, ALL, 1).keyframe_guidance_end == 0.25
    group = depth_group([0], guidance_start=0.3, guidance_end=0.4)
    with pytest.raises(RequestError, match="ControlNet 'depth': the guidance window 0.3-0.4 steers none"):
        resolve_request(body(steps=4, controlnets=[group]), CONFIG, ALL, 1, controlnets=["depth"])
