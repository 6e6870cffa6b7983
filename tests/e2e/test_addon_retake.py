"""#28 item 4 end to end: the add-on's Retake, Pin and Colour lock against a real `python -m server --model tiny`,
on a real .blend of the suite's messy kind (start frame 1001, 29.97 fps), the panel's operators and the batch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from tests.addon.scenes import build_shot  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.e2e.server_process import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_root):
    server = ServerProcess.tiny(tmp_path_factory.mktemp("retake_server"), tiny_root)
    yield server
    server.stop()


def preview_strips(scene):
    editor = scene.sequence_editor
    strips = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all  # 4.5+ / 4.2
    return sorted((s for s in strips if s.type == "MOVIE" and "sparsectrl" in s.keys()), key=lambda s: s.channel)


def delivered(server, job_id: str, count: int) -> np.ndarray:
    """The job's delivered frames as the server made them (its lossless PNGs, not the lossy MP4)."""
    from PIL import Image

    frames = []
    for n in range(count):
        answer = server.client.get(f"/v1/jobs/{job_id}/frames/{n}.png")
        assert answer.status_code == 200, answer.text
        frames.append(np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB")))
    return np.stack(frames)


def messy_shot(path: Path):
    """Frames 1001-1060 at 29.97 fps (30000/1001), markers at 1001, 1030 and 1060; saved, so the videos go beside."""
    scene = build_shot(start=1001, end=1060, markers=(1001, 1030, 1060))
    scene.render.fps, scene.render.fps_base = 30000, 1001
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return bpy.context.scene


# 8 generated frames a second of 2.0 s: 16 generated frames, retimed to 60.
SETTINGS = {"prompt": "two boxes in fog", "size": 64, "steps": 2}


def _refused(ops, previs, match: str) -> None:
    with bpy.context.temp_override(scene=previs), pytest.raises(RuntimeError, match=match):
        bpy.ops.sparsectrl.generate(retake=True)  # the operator's error report (a RuntimeError under bpy)
    assert ops.STATUS.message_is_error and ops.STATUS.run is None


def _take(server, tmp_path, ops):
    """A take of the messy shot, made with the panel's Generate: (the previs scene, its strip)."""
    scene = messy_shot(tmp_path / "shot.blend")
    props = scene.sparsectrl
    props.server_url, props.prompt, props.size, props.steps = server.url, *SETTINGS.values()
    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    ops.run_timers(120)
    previs = bpy.data.scenes["Scene previs"]
    (parent,) = preview_strips(previs)
    return previs, parent


def test_retake_says_what_it_cannot_before_anything_is_sent(tiny_server, tmp_path, addon):
    ops = addon
    previs, parent = _take(tiny_server, tmp_path, ops)
    parent_meta = json.loads(parent["sparsectrl"])
    assert parent_meta["num_frames"] == 16 and parent_meta["output_frames"] == 60 and parent_meta["start"] == 1001
    assert parent_meta["size"] == [64, 64]  # 1920x1080 at 64 px: the short side is the model's minimum
    jobs_before = len(tiny_server.client.get("/v1/jobs").json()["jobs"])
    previs.sequence_editor.active_strip = None
    _refused(ops, previs, "select a take to retake first: click a preview strip on 'Scene previs'")
    previs.sequence_editor.active_strip = parent
    _refused(ops, previs, "choose the frames to retake: set the preview range of 'Scene previs'")
    previs.use_preview_range = True
    previs.frame_preview_start, previs.frame_preview_end = 1100, 1120
    _refused(ops, previs, "the retake range 1100-1120 lies outside the take")
    previs.frame_preview_start, previs.frame_preview_end = 1020, 1020
    _refused(ops, previs, "frame 1020 is too few to retake")
    previs.use_preview_range = False
    shot = bpy.data.scenes["Scene"]
    shot.sparsectrl.retake_in, shot.sparsectrl.retake_out = 1070, 1065  # In/Out, backwards
    _refused(ops, previs, "the retake range ends \\(frame 1065\\) before it starts \\(frame 1070\\)")
    assert len(tiny_server.client.get("/v1/jobs").json()["jobs"]) == jobs_before


def test_retake_stacks_a_take_whose_frames_outside_the_span_are_the_parents(tiny_server, tmp_path, addon):
    """#28 item 6: the add-on's Retake on a .blend starting at 1001 at 29.97 fps stacks a take whose delivered
    frames outside the span equal the parent's; a retake of it too; a take gone from the server is said."""
    ops = addon
    previs, parent = _take(tiny_server, tmp_path, ops)
    parent_meta = json.loads(parent["sparsectrl"])
    previs.sequence_editor.active_strip = parent
    previs.use_preview_range = True
    previs.frame_preview_start, previs.frame_preview_end = 1020, 1040
    with bpy.context.temp_override(scene=previs):
        assert bpy.ops.sparsectrl.generate(retake=True) == {"FINISHED"}
    assert "a retake of frames 1020-1040" in ops.STATUS.message
    ops.run_timers(120)
    assert ops.STATUS.message.startswith("preview added"), ops.STATUS.message
    assert (previs.frame_preview_start, previs.frame_preview_end) == (1020, 1040)  # the artist's range stays
    parent, child = preview_strips(previs)
    assert child.channel > parent.channel
    assert (child.frame_final_start, child.frame_final_duration) == (parent.frame_final_start, 60) == (1001, 60)
    meta = json.loads(child["sparsectrl"])
    span = meta["retake"]["frames"]
    assert meta["retake"] == {
        "job": parent_meta["job_id"],
        "strip": parent.name,
        "frames": span,
        "timeline": [1020, 1040],
    }
    assert json.loads(child["sparsectrl_retake"]) == meta["retake"] and meta["seed"] != parent_meta["seed"]
    job = tiny_server.client.get(f"/v1/jobs/{meta['job_id']}").json()
    assert job["request"]["retake"] == {"job": parent_meta["job_id"], "frames": span}

    # Frame for frame: every delivered frame outside 1020-1040 is the parent's; inside, the span is new.
    before, after = delivered(tiny_server, parent_meta["job_id"], 60), delivered(tiny_server, meta["job_id"], 60)
    inside = np.zeros(60, bool)
    inside[1020 - 1001 : 1040 - 1001 + 1] = True
    np.testing.assert_array_equal(after[~inside], before[~inside])
    assert not np.array_equal(after[inside], before[inside])

    # A retake of the retake: stacked above it, the rest of it kept.
    previs.sequence_editor.active_strip = child
    previs.frame_preview_start, previs.frame_preview_end = 1045, 1060
    with bpy.context.temp_override(scene=previs):
        bpy.ops.sparsectrl.generate(retake=True)
    ops.run_timers(120)
    assert ops.STATUS.message.startswith("preview added"), ops.STATUS.message
    parent, child, grandchild = preview_strips(previs)
    again = json.loads(grandchild["sparsectrl"])
    assert again["retake"]["job"] == meta["job_id"] and again["retake"]["strip"] == child.name
    third = delivered(tiny_server, again["job_id"], 60)
    np.testing.assert_array_equal(third[: 1045 - 1001], after[: 1045 - 1001])

    # The take's job gone from the server: the server's refusal, in one sentence.
    previs.sequence_editor.active_strip = child
    child["sparsectrl"] = json.dumps({**meta, "job_id": "0" * 32})
    with bpy.context.temp_override(scene=previs):
        bpy.ops.sparsectrl.generate(retake=True)
    ops.run_timers(120)
    assert ops.STATUS.message_is_error and "\n" not in ops.STATUS.message and "Traceback" not in ops.STATUS.message
    assert "0" * 32 in ops.STATUS.message, ops.STATUS.message
    assert len(preview_strips(previs)) == 3


def run_batch(*args):
    return subprocess.run(
        [sys.executable, "-m", "sparsectrl_blender.batch", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _batch_take(server, tmp_path):
    """A take of the messy shot made by the batch, saved in the shot's file: (the common flags, its strip's name,
    its job); names, not the strip, which a file opened later leaves dangling."""
    messy_shot(tmp_path / "shot.blend")
    common = ("--server", server.url, "--out", tmp_path / "shot.blend")
    common += tuple(x for name, value in SETTINGS.items() for x in (f"--{name}", value))
    out = run_batch(tmp_path / "shot.blend", *common, "--seed", 3)
    assert out.returncode == 0, out.stderr[-2000:]
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "shot.blend"))
    (parent,) = preview_strips(bpy.data.scenes["Scene previs"])
    return common, parent.name, json.loads(parent["sparsectrl"])["job_id"]


def test_batch_says_what_it_cannot_retake_pin_or_colour_lock_before_rendering(tiny_server, tmp_path):
    common, parent, _ = _batch_take(tiny_server, tmp_path)
    jobs_before = len(tiny_server.client.get("/v1/jobs").json()["jobs"])
    for flags, said in (
        (("--retake-of", "nope", "--span", "1001:1010"), "--retake-of nope: no preview strip of that name on"),
        (("--retake-of", "a take", "--span", "1001:1010"), "--retake-of a take: no preview strip of that name on"),
        (("--retake-of", parent, "--span", "2000:2010"), "lies outside the take"),
        (("--retake-of", parent, "--span", "1030:1031"), "frames 1030-1031 are too few to retake"),
        (("--pin",), "--pin needs RGB keyframes"),
        (("--color-lock",), "--color-lock needs RGB keyframes"),
    ):
        out = run_batch(tmp_path / "shot.blend", *common, *flags)
        assert out.returncode == 1 and said in out.stderr.strip().splitlines()[-1], out.stderr[-2000:]
        assert "Traceback" not in out.stderr and "passes rendered" not in out.stdout
    assert len(tiny_server.client.get("/v1/jobs").json()["jobs"]) == jobs_before


def test_batch_retakes_a_strip_or_a_job(tiny_server, tmp_path):
    """--retake-of a strip on the previs scene, or a job id, and --span in timeline frames: the delivered frames
    outside the span are the parent's."""
    common, parent, parent_job = _batch_take(tiny_server, tmp_path)
    out = run_batch(tmp_path / "shot.blend", *common, "--retake-of", parent, "--span", "1040:1060", "--seed", 4)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"retake of the take '{parent}': frames 1040-1060 (generated " in out.stdout

    # A job id with no strip of it where the preview goes: the job's own request says how it is timed.
    job_flags = ("--retake-of", parent_job, "--span", "1001:1010", "--preview-scene", "Job retakes")
    out = run_batch(tmp_path / "shot.blend", *common, *job_flags)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"retake of job {parent_job}: frames 1001-1010 (generated " in out.stdout
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "shot.blend"))
    parent_again, by_strip = preview_strips(bpy.data.scenes["Scene previs"])
    (by_job,) = preview_strips(bpy.data.scenes["Job retakes"])
    assert parent_again.name == parent and by_strip.channel > parent_again.channel
    before = delivered(tiny_server, parent_job, 60)
    for strip, (first, last) in ((by_strip, (1040, 1060)), (by_job, (1001, 1010))):
        meta = json.loads(strip["sparsectrl"])
        assert meta["retake"]["timeline"] == [first, last] and meta["retake"]["job"] == parent_job
        after = delivered(tiny_server, meta["job_id"], 60)
        outside = np.ones(60, bool)
        outside[first - 1001 : last - 1001 + 1] = False
        np.testing.assert_array_equal(after[outside], before[outside])


def _rgb_look_job(server, tmp_path, *flags) -> dict:
    """The batch on the messy shot with line art and an RGB look at the first keyframe: the job it made."""
    messy_shot(tmp_path / "shot.blend")
    common = ("--server", server.url, "--out", tmp_path / "shot.blend", "--rgb-look", "first")
    common += tuple(x for name, value in SETTINGS.items() for x in (f"--{name}", value))
    out = run_batch(tmp_path / "shot.blend", *common, *flags)
    assert out.returncode == 0, out.stderr[-2000:]
    job = server.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert job["status"] == "succeeded", job
    return job


def test_batch_colour_locks_the_rgb_look(tiny_server, tmp_path):
    job = _rgb_look_job(tiny_server, tmp_path, "--color-lock")
    assert job["request"]["color_lock"] is True
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "shot.blend"))
    (strip,) = preview_strips(bpy.data.scenes["Scene previs"])
    assert json.loads(strip["sparsectrl"])["color_lock"] is True


def test_batch_pins_the_rgb_look(tiny_server, tmp_path):
    request = _rgb_look_job(tiny_server, tmp_path, "--pin")["request"]
    assert {(k["index"], k.get("modality", "")): k.get("pin", False) for k in request["keyframes"]} == {
        (0, ""): False,
        (8, ""): False,
        (15, ""): False,
        (0, "rgb"): True,
    }
