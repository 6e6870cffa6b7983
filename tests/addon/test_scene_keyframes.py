"""Keyframe sources and the shot range, read from a real scene; saved panel settings read by the batch."""

from __future__ import annotations

import argparse

import pytest

bpy = pytest.importorskip("bpy")

from sparsectrl_blender.batch import _saved_settings, settings_from  # noqa: E402
from sparsectrl_blender.blender.scene_keyframes import KeyframeError, keyframe_frames, shot_range  # noqa: E402
from sparsectrl_blender.core.request import GenerationSettings  # noqa: E402
from tests.addon.scenes import build_shot  # noqa: E402


def test_markers_selected_markers_camera_keys_every_n_and_lists():
    scene = build_shot(start=1, end=48, markers=(1, 20, 48))
    scene.timeline_markers[1].select = False
    for m in scene.timeline_markers:
        m.select = m.frame != 20
    cam = scene.camera
    for frame in (5, 30, 44):
        cam.location.x = frame / 10
        cam.keyframe_insert("location", frame=frame)

    def frames(**kw):
        return keyframe_frames(scene, GenerationSettings(**kw))

    assert frames(keyframe_source="MARKERS") == [1, 20, 48]
    assert frames(keyframe_source="SELECTED_MARKERS") == [1, 48]
    assert frames(keyframe_source="CAMERA_KEYS") == [5, 30, 44]
    assert frames(keyframe_source="EVERY_N", every_n=16) == [1, 17, 33, 48]
    assert frames(keyframe_source="LIST", frame_list="12, 3") == [3, 12]
    with pytest.raises(KeyframeError, match="'a' in the keyframe list"):
        frames(keyframe_source="LIST", frame_list="a")


def test_no_markers_is_a_clear_message():
    scene = build_shot(markers=())
    with pytest.raises(KeyframeError, match="no keyframes: add timeline markers"):
        keyframe_frames(scene, GenerationSettings())


def test_preview_range_is_the_shot_when_chosen_and_set():
    scene = build_shot(start=1, end=100)
    assert shot_range(scene, GenerationSettings(shot_range="PREVIEW")) == (1, 100)  # no preview range set
    scene.use_preview_range = True
    scene.frame_preview_start, scene.frame_preview_end = 20, 60
    assert shot_range(scene, GenerationSettings(shot_range="PREVIEW")) == (20, 60)
    assert shot_range(scene, GenerationSettings()) == (1, 100)


def test_panel_settings_are_saved_in_the_blend_and_read_by_the_batch(tmp_path):
    import sparsectrl_blender

    sparsectrl_blender.register()
    try:
        scene = build_shot()
        props = scene.sparsectrl
        props.prompt, props.modality, props.steps, props.keyframe_source = "saved prompt", "rgb", 9, "EVERY_N"
        props.loras = "ink:0.5"
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "s.blend"))
    finally:
        sparsectrl_blender.unregister()
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "s.blend"))  # add-on not enabled: raw ID properties
    saved = _saved_settings(bpy.context.scene)
    args = argparse.Namespace(
        server=None,
        modality=None,
        frames=None,
        motion_rate=None,
        size=None,
        steps=12,
        seed=None,
        prompt=None,
        negative_prompt=None,
        preview_range=False,
        keyframes=None,
    )
    settings = settings_from(args, saved)
    assert (settings.prompt, settings.modality, settings.keyframe_source) == ("saved prompt", "rgb", "EVERY_N")
    assert settings.steps == 12  # a flag wins over the saved value
    assert settings.loras == "ink:0.5"
