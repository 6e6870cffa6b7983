"""Colour lock (#28 item 3, server/video/color_lock.py): each generated frame's Lab mean and spread brought to the
RGB keyframes', interpolated between them, before retiming. The figures of the issue, on synthetic clips and on
the tiny model's real output (whose frames are noise): the frame at an RGB keyframe within 3 ΔE (CIE76, mean Lab)
of its keyframe, in-betweens on the interpolated target, no flicker added; a clipped frame's mean corrected; off
is bit for bit as before; without RGB keyframes a 422; the field through the record."""

from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from server.api.errors import status_of
from server.config import load_config
from server.engine.conditions import fit_to_size
from server.request.errors import RequestError
from server.request.model import GenerationRequest, Keyframe
from server.request.resolve import resolve_request
from server.video import color_lock as lock
from server.video.deliver import deliver
from tests.conftest import png_bytes, sketch
from tests.server.test_engine import make_request
from tests.server.test_several_encoders import painting

DELTA_E = 3.0  # the bound at a keyframe
# ΔE a step of the mean may take beside the target's and the input's own change: each frame's mean lies within
# MEAN_TOLERANCE of its target (8-bit rounding leaves no exact hit), so a step within twice that of the target's.
ROUNDING = 2 * lock.MEAN_TOLERANCE


def image(pixels) -> Image.Image:
    return Image.fromarray(np.asarray(pixels, np.uint8))


def gradient(start, end, width: int = 96, height: int = 80) -> Image.Image:
    """A horizontal gradient between two sRGB colours (a keyframe with a spread)."""
    t = np.linspace(0, 1, width)[None, :, None]
    row = np.array(start) * (1 - t) + np.array(end) * t
    return image(np.broadcast_to(row, (height, width, 3)))


def mean_labs(frames: np.ndarray) -> np.ndarray:
    return np.stack([lock.to_lab(f).mean(axis=(0, 1)) for f in frames])


def keyframe_lab(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """The mean Lab of a keyframe as the engine sees it: fitted to the generation size."""
    return lock.to_lab(np.asarray(fit_to_size(img, *size))).mean(axis=(0, 1))


def drifting_clip(n: int = 16, size: int = 48) -> np.ndarray:
    """A generated-looking clip whose colour drifts: a moving shape on a background turning from grey to green."""
    rng = np.random.default_rng(3)
    frames = []
    for i in range(n):
        base = np.array([120 - 3 * i, 120 + 4 * i, 110 - 2 * i], float)
        frame = np.broadcast_to(base, (size, size, 3)).copy() + rng.normal(0, 6, (size, size, 3))
        frame[10 : 10 + 16, 4 + 2 * i : 20 + 2 * i] = (200, 180 - 5 * i, 60)
        frames.append(np.clip(np.round(frame), 0, 255))
    return np.stack(frames).astype(np.uint8)


def steps(labs: np.ndarray) -> np.ndarray:
    """The frame-to-frame change of the mean Lab (ΔE)."""
    return np.linalg.norm(np.diff(labs, axis=0), axis=1)


def test_a_drifting_clip_is_locked_to_its_keyframes_and_moves_smoothly_between():
    frames = drifting_clip()
    keyframes = [(0, gradient((200, 60, 40), (250, 200, 120))), (15, gradient((20, 40, 90), (90, 150, 230)))]
    out = lock.color_lock(frames, keyframes)
    assert out.shape == frames.shape and out.dtype == np.uint8
    labs, size = mean_labs(out), (48, 48)
    for index, img in keyframes:
        assert np.linalg.norm(labs[index] - keyframe_lab(img, size)) < 0.5  # well within the 3
    means, stds = lock.targets(keyframes, len(frames), size)
    assert np.linalg.norm(labs - means, axis=1).max() < 0.5  # every in-between on the interpolated target
    # The spread comes near the target's: per channel, the transfer's out-of-gamut pixels clip, so not exactly.
    spreads, before = (np.stack([lock.to_lab(f).std(axis=(0, 1)) for f in clip]) for clip in (out, frames))
    assert np.abs(spreads - stds).max() < 5.0 and np.abs(spreads - stds).mean() < 0.2 * np.abs(before - stds).mean()
    # No flicker added: each step of the mean is at most the target's own plus the input's.
    assert (steps(labs) <= steps(means) + steps(mean_labs(frames)) + ROUNDING).all()


def test_a_steady_clip_gets_no_flicker_from_the_lock():
    """The input's colour never changes: the output's mean moves only as the target does, frame by frame."""
    still = np.repeat(drifting_clip(1), 12, axis=0)
    keyframes = [(2, painting()), (9, gradient((240, 230, 210), (30, 30, 30)))]
    labs = mean_labs(lock.color_lock(still, keyframes))
    means, _ = lock.targets(keyframes, 12, (48, 48))
    assert (steps(labs) <= steps(means) + ROUNDING).all()
    assert steps(labs[:3]).max() < ROUNDING and steps(labs[9:]).max() < ROUNDING  # flat beyond the ends


def test_one_keyframe_sets_every_frame_and_its_image_is_fitted_as_the_engine_fits_it():
    """A wide keyframe is centre-cropped to the clip's aspect ratio first: its left and right thirds (red) are
    not what the encoder sees, so they are not the target either."""
    wide = np.zeros((48, 144, 3), np.uint8)
    wide[:, :48], wide[:, 48:96], wide[:, 96:] = (250, 0, 0), (40, 90, 200), (250, 0, 0)
    out = lock.color_lock(drifting_clip(6), [(3, image(wide))])
    blue = lock.to_lab(np.array([[[40, 90, 200]]], np.uint8))[0, 0]
    assert np.linalg.norm(mean_labs(out) - blue, axis=1).max() < 1.0


def test_clipping_moves_a_saturated_frame_and_the_mean_is_corrected(monkeypatch):
    """A saturated keyframe (pure greens) with a wide spread: the transfer leaves the gamut, clipping pulls the
    mean away by more than 3 ΔE; the correction brings it back within MEAN_TOLERANCE."""
    frames = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    keyframes = [(0, gradient((0, 255, 0), (0, 120, 0)))]
    target = keyframe_lab(keyframes[0][1], (48, 48))
    monkeypatch.setattr(lock, "CORRECTION_ROUNDS", 0)
    clipped = mean_labs(lock.color_lock(frames, keyframes))
    assert np.linalg.norm(clipped - target, axis=1).max() > DELTA_E
    monkeypatch.undo()
    corrected = mean_labs(lock.color_lock(frames, keyframes))
    assert np.linalg.norm(corrected - target, axis=1).max() < 1.0


def test_a_flat_frame_is_moved_not_blown_up():
    """A frame without spread keeps none (no division by zero); a flat keyframe makes the frame flat."""
    flat = np.full((2, 16, 16, 3), 128, np.uint8)
    out = lock.color_lock(flat, [(0, gradient((255, 0, 0), (0, 0, 255)))])
    assert np.ptp(out.reshape(2, -1, 3), axis=1).max() <= 1
    noisy = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = lock.color_lock(noisy, [(0, image(np.full((8, 8, 3), (90, 140, 60))))])
    assert np.ptp(out.reshape(2, -1, 3), axis=1).max() <= 1


def test_the_tiny_models_clip_is_locked_to_its_rgb_keyframes(engine):
    """Real output (noise, far from the keyframes' colours), RGB keyframes at 0 and 7, retimed to 20 frames with
    the keyframes anchored: the delivered frame of each keyframe is within 3 ΔE of it."""
    looks = [Keyframe.of_image(0, painting(), 0), Keyframe.of_image(7, gradient((30, 160, 70), (250, 240, 90)), 19)]
    request = make_request(modality="rgb", steps=2, keyframes=looks, output_frames=20)
    generated = engine.generate(request).frames
    plain = mean_labs(generated)
    locked = dataclasses.replace(request, color_lock=True)
    delivered = deliver(generated, locked)
    assert delivered.shape == (20, 64, 64, 3)
    labs = mean_labs(delivered)
    for k in looks:
        target = keyframe_lab(k.image, (64, 64))
        assert np.linalg.norm(labs[k.output_index] - target) < DELTA_E
        assert np.linalg.norm(plain[k.index] - target) > 2 * DELTA_E  # the lock did it, not the generation
    means, _ = lock.targets([(k.index, k.image) for k in looks], 8, (64, 64))
    on_generated = mean_labs(lock.color_lock(generated, [(k.index, k.image) for k in looks]))
    assert (steps(on_generated) <= steps(means) + steps(plain) + ROUNDING).all()


def test_an_rgb_look_beside_line_art_is_what_the_lock_follows(engine):
    """A job of line art with an RGB look at frame 3: the look's colour on every frame; off, bit for bit as before."""
    look = Keyframe.of_image(3, painting(), modality="rgb")
    request = make_request(steps=2, keyframes=[*make_request().keyframes, look])
    generated = engine.generate(request).frames
    target = keyframe_lab(painting(), (64, 64))
    labs = mean_labs(deliver(generated, dataclasses.replace(request, color_lock=True)))
    assert np.linalg.norm(labs - target, axis=1).max() < DELTA_E
    assert np.array_equal(deliver(generated, request), generated)  # color_lock off: delivery as before


def test_off_delivers_bit_for_bit_as_before():
    """color_lock false runs none of it: with retiming and a draft's scaling, the same bytes as without the field."""
    frames = drifting_clip(8)
    request = make_request(
        keyframes=[Keyframe.of_image(0, painting(), 2)], output_frames=12, output_width=96, output_height=80
    )
    assert not request.color_lock
    from server.video.retime import retime, timing

    scaled = np.stack([np.asarray(Image.fromarray(f).resize((96, 80), Image.Resampling.LANCZOS)) for f in frames])
    np.testing.assert_array_equal(deliver(frames, request), retime(scaled, timing(8, 12, [(2, 0)])))


CONFIG = load_config()
ALL = ["lineart", "rgb", "depth"]
IMG = base64.b64encode(png_bytes(sketch())).decode()


def body(**changes) -> dict:
    return {"prompt": "a ball", "modality": "lineart", "keyframes": [{"index": 0, "image": IMG}]} | changes


def test_color_lock_without_rgb_keyframes_is_a_422():
    for what in (
        body(color_lock=True),  # line art only
        body(color_lock=True, modality="depth"),
        body(color_lock=True, keyframes=[], controlnets=[{"name": "depth", "frames": [{"index": 0, "image": IMG}]}]),
    ):
        with pytest.raises(RequestError) as e:
            resolve_request(what, CONFIG, ALL, seed=1, controlnets=["depth"])
        assert e.value.code == "invalid_request" and status_of(e.value.code) == 422
        assert "color_lock" in e.value.message and "RGB keyframes" in e.value.message
    with pytest.raises(RequestError, match="color_lock: Input should be a valid boolean"):
        resolve_request(body(color_lock="yes"), CONFIG, ALL, seed=1)


def test_color_lock_with_rgb_keyframes_resolves_and_travels_through_the_record():
    own = resolve_request(body(modality="rgb", color_lock=True), CONFIG, ALL, seed=1)
    look = {"index": 5, "image": IMG, "modality": "rgb"}
    beside = resolve_request(body(color_lock=True, keyframes=[body()["keyframes"][0], look]), CONFIG, ALL, seed=1)
    assert own.color_lock and beside.color_lock and [k.index for k in beside.keyframes_for("rgb")] == [5]
    assert resolve_request(body(), CONFIG, ALL, seed=1).color_lock is False  # omitted: off
    assert resolve_request(body(color_lock=None), CONFIG, ALL, seed=1).color_lock is False
    fields, images = beside.to_record()
    assert fields["color_lock"] is True
    back = GenerationRequest.from_record(json.loads(json.dumps(fields)), images.__getitem__)
    assert back.color_lock is True
    assert dataclasses.replace(back, keyframes=[]) == dataclasses.replace(beside, keyframes=[], output_frames=16)
    older = {k: v for k, v in fields.items() if k != "color_lock"}  # a record written before color_lock existed
    assert GenerationRequest.from_record(older, images.__getitem__).color_lock is False


def test_importing_the_lock_leaves_no_stand_in_modules_behind():
    """colour-science puts MagicMocks for matplotlib into sys.modules when it is not installed; those would break
    diffusers' find_spec("matplotlib") in the server process. The lock's import takes them out again."""
    import importlib.util
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = (
        "import importlib.util, sys, server.video.color_lock\n"
        "assert not any(type(m).__module__ == 'unittest.mock' for m in list(sys.modules.values()))\n"
        "importlib.util.find_spec('matplotlib')\nprint('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    assert importlib.util.find_spec("matplotlib") is None or "matplotlib" in sys.modules
