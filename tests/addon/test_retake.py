"""Retake, Pin and Colour lock on the add-on's side (pure Python): the span behind timeline frames, through the
server's own retiming, and the bodies sent."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from server.video.retime import retime, timing
from sparsectrl_blender.core.frame_mapping import map_keyframes, output_positions
from sparsectrl_blender.core.job import PreparedJob
from sparsectrl_blender.core.request import GenerationSettings, job_body, keyframe_entries, rgb_keyframes
from sparsectrl_blender.core.retake import Take, parse_span, plan_retake, take_from_job, take_from_metadata

# (shot start, end, generated frames, keyframes): the suite's messy shots (start 1001, 29.97 fps: 60 frames at
# 8 generated a second is 16), a plain one, and more generated frames than the shot has (Fixed).
SHOTS = [(1001, 1060, 16, [1001, 1030, 1060]), (1, 48, 16, [1, 24, 48]), (101, 160, 24, [130]), (1, 10, 16, [])]


def _take(start: int, end: int, n: int, keyframes: list[int], first_frame: int | None = None) -> Take:
    mapped = map_keyframes(keyframes, start, end, n).indices
    anchors = tuple(sorted((f - start, i) for f, i in mapped.items()))
    return Take("job", start if first_frame is None else first_frame, end - start + 1, n, anchors, start)


def test_output_positions_are_the_servers_retiming():
    for start, end, n, keyframes in SHOTS:
        take = _take(start, end, n, keyframes)
        expected = timing(n, take.output_frames, list(take.anchors))
        np.testing.assert_array_equal(output_positions(n, take.output_frames, list(take.anchors)), expected)
    np.testing.assert_array_equal(output_positions(1, 1, []), timing(1, 1, []))


def test_delivered_frames_outside_the_range_are_the_parents_and_the_span_is_the_widest_that_keeps_them():
    """Through the server's own retime: a child whose generated frames equal the parent's outside the span
    delivers the parent's frames bit for bit outside the range, for every range of the shots above; one more
    generated frame on either side would change a delivered frame outside it."""
    rng = np.random.default_rng(0)
    for start, end, n, keyframes in SHOTS:
        take = _take(start, end, n, keyframes)
        positions = timing(n, take.output_frames, list(take.anchors))
        parent = rng.integers(0, 256, (n, 2, 2, 3), dtype=np.uint8)
        delivered = retime(parent, positions)
        for first in range(start, end + 1, 3):
            for last in range(first, end + 1, 4):
                try:
                    retake = plan_retake(take, first, last)
                except ValueError as e:
                    assert "too few to retake" in str(e)
                    continue
                low, high = retake.frames
                outside = [j for j in range(take.output_frames) if not first - start <= j <= last - start]
                for widened in ((low, high), (low - 1, high), (low, high + 1)):
                    if widened[0] < 0 or widened[1] >= n:
                        continue
                    child = parent.copy()
                    child[widened[0] : widened[1] + 1] = 255 - parent[widened[0] : widened[1] + 1]
                    same = np.array_equal(retime(child, positions)[outside], delivered[outside])
                    assert same == (widened == (low, high)), (start, end, first, last, retake.frames, widened)


def test_the_messy_shots_span_and_the_ranges_that_cannot_be():
    take = _take(1001, 1060, 16, [1001, 1030, 1060], first_frame=1001)
    retake = plan_retake(take, 1020, 1040)
    assert retake.timeline == (1020, 1040) and retake.messages == []
    assert retake.entry() == {"job": "job", "frames": list(retake.frames)}
    assert 0 < retake.frames[0] <= retake.frames[1] < 15
    assert plan_retake(take, 1001, 1060).frames == (0, 15)  # the whole take
    clipped = plan_retake(take, 990, 1010)
    assert clipped.timeline == (1001, 1010) and clipped.frames[0] == 0
    assert clipped.messages == ["the retake range reaches past job job: retaking frames 1001-1010"]
    with pytest.raises(ValueError, match="ends \\(frame 1020\\) before it starts \\(frame 1040\\)"):
        plan_retake(take, 1040, 1020)
    with pytest.raises(ValueError, match="lies outside job job \\(frames 1001-1060\\)"):
        plan_retake(take, 1061, 1100)
    with pytest.raises(ValueError, match="frame 1020 is too few to retake: .* \\(about 3.8 each\\)"):
        plan_retake(take, 1020, 1020)
    # In an edit that cuts the shot in later (delivered frame 0 at timeline 2001), its timeline frames count.
    moved = _take(1001, 1060, 16, [1001, 1030, 1060], first_frame=2001)
    assert plan_retake(moved, 2020, 2040).frames == retake.frames


def test_a_take_from_a_strips_record_and_from_a_job():
    meta = {"job_id": "abc", "num_frames": 16, "keyframes": {"1001": 0, "1030": 8, "1060": 15}, "start": 1001}
    meta |= {"output_frames": 60, "size": [128, 72]}
    take = take_from_metadata(meta, 2001, 60, 1001, (2001, 2060), "SparseCtrl lineart 5")
    assert (take.job_id, take.first_frame, take.output_frames, take.num_frames) == ("abc", 2001, 60, 16)
    assert take.anchors == ((0, 0), (29, 8), (59, 15)) and take.size == (128, 72) and take.shot_start == 1001
    assert take.name == "the take 'SparseCtrl lineart 5'"
    # A strip from before start/size were recorded: where it plays says the rest.
    old = take_from_metadata({"job_id": "abc", "num_frames": 16, "keyframes": {"1030": 8}}, 1001, 60, 1001)
    assert old.anchors == ((29, 8),) and old.size is None and old.output_frames == 60
    with pytest.raises(ValueError, match="does not record its job"):
        take_from_metadata({"prompt": "x"}, 1, 48, 1, strip="old")
    job = {"id": "abc", "request": {"num_frames": 16, "output_frames": 60, "width": 128, "height": 72}}
    job["request"]["keyframes"] = [
        {"index": 0, "output_index": 0},
        {"index": 8, "output_index": 29, "modality": "rgb"},
        {"index": 8, "output_index": 29},
    ]
    from_job = take_from_job(job, 1001)
    assert from_job.anchors == ((0, 0), (29, 8)) and from_job.size == (128, 72) and from_job.frames == (1001, 1060)
    assert plan_retake(from_job, 1020, 1040).frames == plan_retake(take, 2020, 2040).frames


def test_parse_span():
    assert parse_span("1001:1040") == (1001, 1040) and parse_span(" 5 : 5 ") == (5, 5)
    for bad, why in (("1001-1040", "write START:END"), ("a:b", "write START:END"), ("40:10", "ends before")):
        with pytest.raises(ValueError, match=why):
            parse_span(bad)


def test_bodies_send_retake_pin_and_colour_lock_only_when_on():
    png = b"png"
    plain = job_body(GenerationSettings(prompt="x"), 16, 64, 64, 30, 60, [(0, 0, png)])
    assert not {"retake", "color_lock"} & set(plain) and "pin" not in plain["keyframes"][0]
    retake = {"job": "abc", "frames": [4, 9]}
    assert job_body(GenerationSettings(prompt="x"), 16, 64, 64, 30, 60, [], retake)["retake"] == retake
    # Colour lock and Pin act on RGB keyframes: with none, a setting left on is not sent (nor offered).
    lineart = GenerationSettings(prompt="x", color_lock=True, pin=True)
    assert not rgb_keyframes(lineart) and "color_lock" not in job_body(lineart, 16, 64, 64, 30, 60, [])
    look = GenerationSettings(prompt="x", color_lock=True, rgb_look="FIRST")
    assert rgb_keyframes(look) and job_body(look, 16, 64, 64, 30, 60, [])["color_lock"] is True
    images = GenerationSettings(prompt="x", keyframe_images="1: a.png", keyframe_images_as="rgb")
    assert rgb_keyframes(images) and rgb_keyframes(GenerationSettings(modality="rgb"))
    assert keyframe_entries([(0, 0, png)], pin=True)[0]["pin"] is True


def test_pin_goes_on_the_rgb_keyframes_only():
    """Line art beside an RGB look, pinned: the look's keyframes carry pin, the line art's do not."""
    image = np.zeros((8, 8, 3), np.uint8)
    body = job_body(GenerationSettings(prompt="x", rgb_look="FIRST", pin=True), 16, 8, 8, 30, 60, [])
    prepared = PreparedJob(body, 1001, 1060, {1001: 0, 1030: 8}, {1001: image, 1030: image}, [], [])
    prepared.further, prepared.pin = {"rgb": {1001: image}}, True
    prepared.encode()
    sent = {(k["index"], k.get("modality", "")): k.get("pin", False) for k in prepared.body["keyframes"]}
    assert sent == {(0, ""): False, (8, ""): False, (0, "rgb"): True}
    assert base64.b64decode(prepared.body["keyframes"][0]["image"]).startswith(b"\x89PNG")
    rgb = job_body(GenerationSettings(prompt="x", modality="rgb", pin=True), 16, 8, 8, 30, 60, [])
    prepared = PreparedJob(rgb, 1, 60, {1: 0}, {1: image}, [], [], pin=True)
    prepared.encode()
    assert prepared.body["keyframes"][0]["pin"] is True


def test_batch_refuses_malformed_retake_flags_before_opening_anything(tmp_path, capsys):
    from sparsectrl_blender import batch

    missing = tmp_path / "nowhere.blend"  # never read: the flags are refused first
    for flags, said in (
        (["--retake-of", "SparseCtrl lineart 5"], "--retake-of and --span go together"),
        (["--span", "1001:1040"], "--retake-of and --span go together"),
        (["--retake-of", "abc", "--span", "1040:1001"], "--span '1040:1001': the span ends before it starts"),
        (["--retake-of", "abc", "--span", "1001"], "--span '1001': write START:END in timeline frames"),
    ):
        assert batch.main([str(missing), "--server", "http://127.0.0.1:9", *flags]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {said}" + err[0].split(said, 1)[1]] and len(err) == 1, err
