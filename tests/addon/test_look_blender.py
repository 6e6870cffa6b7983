"""The Look reference in Blender (#30, blender/look.py, look_operators.py): settings on the edit (sequence) and on
the shot, which one a shot uses, the operators, a take's frame grabbed as a PNG without touching the artist's
files, and the panel greyed out when the server has no IP-Adapter."""

from __future__ import annotations

import sys

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from sparsectrl_blender.core.png import encode_png  # noqa: E402
from tests.addon.scenes import build_shot  # noqa: E402
from tests.addon.test_panel_draw import Layout  # noqa: E402


@pytest.fixture
def addon():
    import sparsectrl_blender

    sparsectrl_blender.register()
    ops = sys.modules["sparsectrl_blender.blender.operators"]
    yield ops, sys.modules["sparsectrl_blender.blender.look"], sys.modules["sparsectrl_blender.blender.panels"]
    sparsectrl_blender.unregister()
    ops.STATUS.__init__()


def _strips(scene):
    editor = scene.sequence_editor or scene.sequence_editor_create()
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def edit_of(*shots, name="Edit"):
    """An edit scene of the artist's cutting the shots in one after the other (Scene strips, no camera)."""
    edit = bpy.data.scenes.new(name)
    frame = 1
    for shot in shots:
        _strips(edit).new_scene(name=shot.name, scene=shot, channel=1, frame_start=frame)
        frame += shot.frame_end - shot.frame_start + 1
    return edit


def image_file(path, value=120):
    path.write_bytes(encode_png(np.full((16, 16, 3), value, np.uint8)))
    return path


def test_every_shot_cut_into_an_edit_inherits_its_reference_and_a_shot_may_have_its_own(addon, tmp_path):
    ops, look, _ = addon
    sh010 = build_shot()
    sh010.name = "sh010"
    sh020 = bpy.data.scenes.new("sh020")
    lone = bpy.data.scenes.new("sh030")  # in no edit
    edit = edit_of(sh010, sh020)
    assert look.reference_for(sh010) is None  # nothing set yet
    knight = str(image_file(tmp_path / "knight.png"))
    edit.sparsectrl_look.images.add().filepath = knight
    edit.sparsectrl_look.strength = 0.6
    for shot in (sh010, sh020):
        ref = look.reference_for(shot)
        assert ref.files == (knight,) and ref.strength == pytest.approx(0.6) and ref.source == "sequence 'Edit'"
    assert look.reference_for(lone) is None
    # The shot's own replaces the sequence's; on with no images: this shot has none.
    sh020.sparsectrl_look.own = True
    assert look.reference_for(sh020) is None
    sh020.sparsectrl_look.images.add().filepath = "//own.png"
    assert look.reference_for(sh020).files == ("//own.png",) and look.reference_for(sh020).source == "shot 'sh020'"
    # The scene the previews go to comes first, when it holds a reference.
    sh010.sparsectrl.preview_scene = "Edit 2"
    edit2 = bpy.data.scenes.new("Edit 2")
    assert look.reference_for(sh010, "Edit 2").source == "sequence 'Edit'"  # Edit 2 holds none: Edit's
    edit2.sparsectrl_look.images.add().filepath = "//other.png"
    assert look.reference_for(sh010, "Edit 2").source == "sequence 'Edit 2'"


def test_the_add_on_reads_a_saved_reference_with_itself_disabled(addon, tmp_path):
    """The batch reads the .blend's reference from its ID properties: the add-on need not be enabled."""
    ops, look, _ = addon
    shot = build_shot()
    edit = edit_of(shot)
    edit.sparsectrl_look.images.add().filepath = "//knight.png"
    edit.sparsectrl_look.guidance_end = 0.5
    path = tmp_path / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    import sparsectrl_blender

    sparsectrl_blender.unregister()
    try:
        bpy.ops.wm.open_mainfile(filepath=str(path))
        ref = look.reference_for(bpy.data.scenes["Scene"])
        assert ref.files == ("//knight.png",) and ref.guidance_end == pytest.approx(0.5) and ref.strength == 1.0
    finally:
        sparsectrl_blender.register()


def test_the_operators_add_and_remove_images_and_refuse_what_the_server_cannot_take(addon, tmp_path):
    ops, look, _ = addon
    shot = build_shot()
    edit = edit_of(shot)
    a, b = image_file(tmp_path / "a.png"), image_file(tmp_path / "b.png", 30)
    (tmp_path / "notes.txt").write_text("hello")
    assert bpy.ops.sparsectrl.reference_add(directory=str(tmp_path), files=[{"name": "a.png"}, {"name": "b.png"}])
    assert [i.filepath for i in edit.sparsectrl_look.images] == [str(a), str(b)]  # the .blend is not saved
    with pytest.raises(RuntimeError, match="notes.txt is not a PNG, JPEG or WebP image"):
        bpy.ops.sparsectrl.reference_add(filepath=str(tmp_path / "notes.txt"))
    assert ops.STATUS.message_is_error and len(edit.sparsectrl_look.images) == 2
    assert bpy.ops.sparsectrl.reference_remove(index=0) == {"FINISHED"}
    assert [i.filepath for i in edit.sparsectrl_look.images] == [str(b)]
    # The shot's own: turned on by adding to it.
    assert bpy.ops.sparsectrl.reference_add(which="SHOT", filepath=str(a)) == {"FINISHED"}
    assert shot.sparsectrl_look.own and look.reference_for(shot).files == (str(a),)
    # A shot in no edit yet: its previs scene is made for it, as Generate makes it.
    lone = build_shot()
    assert bpy.ops.sparsectrl.reference_add(filepath=str(a)) == {"FINISHED"}
    assert look.reference_for(lone).source == "sequence 'Scene previs'"


def movie(path, colours):
    """A real MP4 (H.264, as the server writes them): one colour a frame, 32x32."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24, options={"crf": "0"})
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for colour in colours:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), colour, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_use_this_frame_writes_the_takes_frame_as_a_png_and_leaves_the_artists_files(addon, tmp_path):
    ops, look, panels = addon
    shot = build_shot(start=1001, end=1004)
    blend = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    video = movie(tmp_path / "take.mp4", [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)])
    video_bytes = video.read_bytes()
    from sparsectrl_blender.blender.strips import previs_scene

    previs = previs_scene(shot)
    take = _strips(previs).new_movie("SparseCtrl lineart 7", str(video), channel=2, frame_start=1001)
    take["sparsectrl"] = '{"shot": "Scene", "job_id": "0123456789abcdef"}'
    with bpy.context.temp_override(scene=previs):
        previs.sequence_editor.active_strip = None
        with pytest.raises(RuntimeError, match="select a take first: click a preview strip on the sequence's"):
            bpy.ops.sparsectrl.reference_from_frame()
        previs.sequence_editor.active_strip = take
        previs.frame_current = 1010
        with pytest.raises(RuntimeError, match="frame 1010 is not on the take '.*' \\(frames 1001-1004"):
            bpy.ops.sparsectrl.reference_from_frame()
        previs.frame_current = 1003
        scenes, images = len(bpy.data.scenes), len(bpy.data.images)
        assert bpy.ops.sparsectrl.reference_from_frame() == {"FINISHED"}
    assert (len(bpy.data.scenes), len(bpy.data.images)) == (scenes, images)  # the grab's scene is gone
    written = "//sparsectrl/reference/SparseCtrl_lineart_7_01234567_frame1003.png"  # beside the add-on's videos
    assert [i.filepath for i in previs.sparsectrl_look.images] == [written]
    grabbed = tmp_path / written[2:]
    from PIL import Image

    pixels = np.asarray(Image.open(grabbed).convert("RGB")).astype(int)
    assert pixels.shape == (32, 32, 3)
    assert abs(pixels[..., 2].mean() - 255) < 8 and pixels[..., :2].mean() < 8  # the third frame: blue
    assert video.read_bytes() == video_bytes  # the take's file is only read
    assert look.reference_for(shot).files == (written,)
    # Shown in the shot itself, the take selected on its sequence: that take's frame there, added to the images.
    previs.frame_current = 1001
    with bpy.context.temp_override(scene=shot):
        assert bpy.ops.sparsectrl.reference_from_frame(add=True) == {"FINISHED"}
    assert look.reference_for(shot).files == (written, written.replace("1003", "1001"))
    first = np.asarray(Image.open(tmp_path / written.replace("1003", "1001")[2:]).convert("RGB")).astype(int)
    assert abs(first[..., 0].mean() - 255) < 8 and first[..., 1:].mean() < 8  # the first frame: red


def test_the_panel_shows_both_references_and_greys_them_out_without_an_ip_adapter(addon, tmp_path):
    ops, look, panels = addon
    shot = build_shot()
    edit_of(shot)

    def drawn():
        log = []
        panels.draw_reference(Layout(log), bpy.context)
        return log

    log = drawn()
    assert ("label", "Sequence 'Edit'") in log and ("prop", "own") in log
    assert ("operator", "sparsectrl.reference_add", "Add Images") in log
    assert ("operator", "sparsectrl.reference_from_frame", "Use This Frame") in log
    ops.STATUS.connection.models = {"ip_adapter": None}
    log = drawn()
    assert ("label", "Look reference unavailable: the server has no IP-Adapter") in log
    assert ("label", "add one under [model.ip_adapter] (docs/weights.md)") in log
    shot.sparsectrl_look.own = True
    log = drawn()
    assert ("label", "Sequence 'Edit': not used by this shot") in log
    assert ("label", "No images: this shot has no reference") in log
