"""Generate renders its passes a step at a time (#29): one render per step, the same passes as in one go, and a
Cancel halfway leaves the scene exactly as it was, with nothing sent."""

from __future__ import annotations

import sys

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from sparsectrl_blender.blender import generation, passes  # noqa: E402
from sparsectrl_blender.core.request import GenerationSettings  # noqa: E402
from tests.addon.scenes import build_shot  # noqa: E402
from tests.addon.test_passes_blender import _snapshot  # noqa: E402

SETTINGS = GenerationSettings(prompt="boxes", size=64, modality="lineart", depth_every_frame=True)


def test_each_step_is_at_most_one_render_and_the_passes_are_those_made_in_one_go(monkeypatch):
    scene = build_shot(start=1, end=24, markers=(1, 12, 24), resolution=(64, 64))
    settings = GenerationSettings(**{**SETTINGS.__dict__, "frames_mode": "FIXED", "num_frames": 6})
    whole = generation.prepare(scene, settings)
    renders = []
    real = passes.PassRenderer._render
    monkeypatch.setattr(passes.PassRenderer, "_render", lambda self, frame: (renders.append(frame), real(self, frame)))
    steps = generation.prepare_steps(scene, settings)
    per_step, progress = [], []
    while True:
        before = len(renders)
        try:
            p = next(steps)
        except StopIteration as stop:
            stepped = stop.value
            break
        per_step.append(len(renders) - before)
        progress.append((p.done, p.total))
    assert per_step[0] == 0 and max(per_step) == 1  # checked first, then never more than one render a step
    total = len(set(whole.dense_frames)) + len(whole.images)  # depth at 6 frames, line art at 3 keyframes
    assert sum(per_step) == total == progress[-1][0] == progress[-1][1]
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert stepped.mapping == whole.mapping and stepped.dense_frames == whole.dense_frames
    for frame, image in whole.images.items():
        np.testing.assert_array_equal(stepped.images[frame], image)
    for frame, image in whole.dense_images.items():
        np.testing.assert_array_equal(stepped.dense_images[frame], image)


@pytest.fixture
def addon():
    import sparsectrl_blender

    sparsectrl_blender.register()
    ops = sys.modules["sparsectrl_blender.blender.operators"]
    ops.STEP_PASSES = True  # as in Blender with a UI (bpy as a module is "background")
    yield ops
    ops.STEP_PASSES = None
    sparsectrl_blender.unregister()
    ops.STATUS.__init__()


def test_cancel_halfway_through_the_passes_leaves_the_scene_as_it_was_and_sends_nothing(addon):
    ops = addon
    scene = build_shot(start=1, end=24, markers=(1, 12, 24), resolution=(64, 64))
    props = scene.sparsectrl
    props.prompt, props.size, props.modality, props.depth_every_frame = "boxes", 64, "lineart", True
    props.frames_mode, props.num_frames = "FIXED", 6
    props.server_url = "http://127.0.0.1:9"  # never asked: nothing may be sent
    scene.frame_set(17)
    before = _snapshot(scene)
    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    preparing = ops.STATUS.preparing
    assert preparing is not None and preparing.progress.done == 0 and preparing.progress.total == 9
    assert not bpy.ops.sparsectrl.generate.poll() and bpy.ops.sparsectrl.cancel.poll()
    while preparing.progress.done < 4:
        assert ops._poll_prepare() == 0.0  # one tick: one render, then the UI's turn
    assert "SparseCtrl passes (temporary)" in bpy.data.scenes  # halfway: the scene copy is there
    assert bpy.ops.sparsectrl.cancel() == {"FINISHED"}
    assert ops.STATUS.preparing is None and ops.STATUS.run is None and ops.STATUS.pending is None
    assert ops.STATUS.message == "cancelled: nothing was sent"
    assert ops._poll_prepare() is None
    assert _snapshot(scene) == before
    assert bpy.ops.sparsectrl.generate.poll()


def test_stepped_generate_ends_in_a_sent_job(addon):
    """Stepped to the end, the job is sent as the operator sent it at once (here: to no server, which fails)."""
    ops = addon
    scene = build_shot(start=1, end=24, markers=(1, 24), resolution=(64, 64))
    props = scene.sparsectrl
    props.prompt, props.size, props.server_url = "boxes", 64, "http://127.0.0.1:9"
    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    ops.run_timers(60)
    assert ops.STATUS.preparing is None and ops.STATUS.run is None
    assert "cannot reach the server" in ops.STATUS.message and ops.STATUS.message_is_error


def test_a_save_while_the_passes_render_stops_them_and_saves_no_scene_copy(addon, tmp_path):
    ops = addon
    scene = build_shot(start=1, end=24, markers=(1, 12, 24), resolution=(64, 64))
    props = scene.sparsectrl
    props.prompt, props.size, props.server_url = "boxes", 64, "http://127.0.0.1:9"
    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    ops._poll_prepare()
    assert "SparseCtrl passes (temporary)" in bpy.data.scenes
    path = tmp_path / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path), compress=False)
    assert ops.STATUS.preparing is None and "saving stopped" in ops.STATUS.message
    assert b"SparseCtrl passes (temporary)" not in path.read_bytes()
    assert [s.name for s in bpy.data.scenes] == ["Scene"]
