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
from server.request.model import GenerationRequest
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
    assert echo["keyframes"] == [{"index": 0, "output_index": None}] and echo["seed"] == 77
    assert echo["output_frames"] == g.num_frames
    assert resolve_request(body(seed=5), CONFIG, ALL, seed=77).seed == 5


def test_keyframes_are_sorted_and_stored_as_png():
    img = base64.b64encode(png_bytes(sketch())).decode()
    r = resolve_request(body(keyframes=[{"index": 9, "image": img}, {"index": 2, "image": img}]), CONFIG, ALL, 1)
    assert [k.index for k in r.keyframes] == [2, 9]
    _, images = r.to_record()
    assert all(data == base64.b64decode(img) for data in images.values())  # a PNG is kept as sent
    buf = io.BytesIO()
    sketch().save(buf, format="JPEG")
    jpeg = resolve_request(
        body(keyframes=[{"index": 0, "image": base64.b64encode(buf.getvalue()).decode()}]), CONFIG, ALL, 1
    )
    assert jpeg.to_record()[1][0].startswith(b"\x89PNG")  # other formats become PNG, once


def test_the_record_form_gives_back_the_same_request():
    r = resolve_request(
        body(num_frames=8, output_frames=24, keyframes=[{"index": 3, "image": IMG, "output_index": 9}]), CONFIG, ALL, 1
    )
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
