"""`python -m sparsectrl_blender.dataset`: clips rendered by Blender whose depth is the add-on's own depth pass."""

from __future__ import annotations

import json

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from sparsectrl_blender import dataset  # noqa: E402
from sparsectrl_blender.blender import passes  # noqa: E402
from tests.addon.scenes import build_shot  # noqa: E402

pytestmark = pytest.mark.slow


def _read_png(path):
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_clip_starts_fit_the_range():
    assert dataset.clip_starts(1, 48, 16, 1) == [1, 17, 33]
    assert dataset.clip_starts(1, 48, 16, 2) == [1]  # 31 frames per clip
    assert dataset.clip_starts(1, 10, 16, 1) == []
    assert dataset.clip_starts(1, 48, 4, 1, limit=2) == [1, 5]


def test_dataset_clips_carry_the_addons_depth_pass(tmp_path):
    scene = build_shot(start=1, end=12, markers=(), resolution=(320, 192))
    near = scene.objects["near"]
    near.location.x = -2.0
    near.keyframe_insert("location", frame=1)
    near.location.x = 1.0
    near.keyframe_insert("location", frame=12)
    second = bpy.data.objects.new("Side", bpy.data.cameras.new("Side"))
    scene.collection.objects.link(second)
    second.rotation_euler, second.location = scene.camera.rotation_euler.copy(), (0.5, -1.0, 0.2)
    blend = tmp_path / "knight_walk.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    (tmp_path / "captions.json").write_text(json.dumps({"knight_walk/Side": "a box from the side"}))

    out = tmp_path / "clips"
    args = [str(blend), "--out", str(out), "--frames", "4", "--stride", "2", "--size", "128", "--clips", "1"]
    assert dataset.main([*args, "--captions", str(tmp_path / "captions.json")]) == 0
    clips = sorted(p.name for p in out.iterdir())
    assert clips == ["knight_walk-Camera-00001", "knight_walk-Side-00001"]
    clip = out / "knight_walk-Camera-00001"
    assert len(list((clip / "rgb").glob("*.png"))) == len(list((clip / "cond").glob("*.png"))) == 4
    assert (clip / "caption.txt").read_text() == "knight walk"
    assert (out / "knight_walk-Side-00001" / "caption.txt").read_text() == "a box from the side"
    source = json.loads((clip / "source.json").read_text())
    assert source["frames"] == [1, 3, 5, 7] and source["size"] == [128, 80]

    # The add-on's depth pass on the same frames: the very same images.
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    addon = passes.render_passes(bpy.context.scene, "depth", [1, 3, 5, 7], 128, 80)
    for i, frame in enumerate([1, 3, 5, 7]):
        np.testing.assert_array_equal(_read_png(clip / "cond" / f"{i:04d}.png"), addon[frame])
    rgb = _read_png(clip / "rgb" / "0000.png")
    assert rgb.shape == (80, 128, 3) and rgb.std() > 1  # a shaded render, not a blank
    first, last = _read_png(clip / "cond" / "0000.png"), _read_png(clip / "cond" / "0003.png")
    assert not np.array_equal(first, last)  # the box moved


def test_dataset_errors_are_one_line(tmp_path, capsys):
    assert dataset.main([str(tmp_path / "nope.blend"), "--out", str(tmp_path)]) == 1
    assert "no such .blend file" in capsys.readouterr().err
