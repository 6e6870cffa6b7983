"""The artist's scene and files come first (#15): the batch command and the panel against a real
`python -m server --model tiny`, on files the tests build with real files' traits (start frame 101, 29.97 fps,
non-square pixels, cameras bound to markers, several scenes, Sequencer post-processing on, a missing texture
and a missing library)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from server.video.encode import read_video, write_mp4  # noqa: E402
from tests.addon.scenes import build_shot, save_real_file  # noqa: E402
from tests.e2e.server_process import ServerProcess  # noqa: E402
from tests.e2e.test_addon import all_strips, preview_strips, run_batch  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_root):
    server = ServerProcess.tiny(tmp_path_factory.mktemp("addon_files_server"), tiny_root)
    yield server
    server.stop()


FAST = ("--size", 64, "--steps", 2, "--prompt", "a previs")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


def render_settings(scene) -> dict:
    r = scene.render
    return {
        "engine": r.engine,
        "res": (r.resolution_x, r.resolution_y, r.resolution_percentage),
        "aspect": (r.pixel_aspect_x, r.pixel_aspect_y),
        "fps": (r.fps, r.fps_base),
        "range": (scene.frame_start, scene.frame_end),
        "sequencer": r.use_sequencer,
        "compositing": r.use_compositing,
        "filepath": r.filepath,
        "camera": scene.camera.name if scene.camera else None,
        "strips": [s.name for s in all_strips(scene)] if scene.sequence_editor else [],
    }


def render_frame(scene, frame: int, path: Path) -> np.ndarray:
    """F12 at `frame`, as the artist would get it (Workbench, small, so it is quick)."""
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.render.resolution_percentage = 5
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(path)
    scene.frame_set(frame)
    with bpy.context.temp_override(scene=scene):
        bpy.ops.render.render(write_still=True, scene=scene.name)
    img = bpy.data.images.load(str(path))
    pixels = np.array(img.pixels[:]).reshape(img.size[1], img.size[0], 4)
    bpy.data.images.remove(img)
    return pixels


def test_batch_leaves_the_shot_and_its_render_alone(tiny_server, tmp_path):
    """Items 1, 2, 5, 6: previews on '<shot> previs', the original's bytes untouched, one clear line per warning."""
    shot = tmp_path / "shot.blend"
    save_real_file(shot, tmp_path)  # the scene 'Other' is the active one: --scene picks the shot
    before_bytes = digest(shot)
    bpy.ops.wm.open_mainfile(filepath=str(shot))
    before = render_settings(bpy.data.scenes["Shot"])
    original_render = render_frame(bpy.data.scenes["Shot"], 130, tmp_path / "original.png")

    out = run_batch(
        shot, "--server", tiny_server.url + "/v1", "--scene", "Shot", "--frames", 1000, *FAST[2:], "--size", 10
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    warnings = warnings_of(out.stderr)
    assert len(warnings) == len(set(warnings)), warnings  # each said once
    said = "\n".join(warnings)
    assert f"should be its root, without /v1: using {tiny_server.url}" in said
    assert "1000 generated frames is more than the shot's 60 frames: generating 60, one per frame" in said
    assert "size 10 is outside 64-1024 px: using 64" in said and "short side is raised" in said
    assert "linked libraries not found" in said and "images not found" in said

    # The original: byte for byte as it was; the result beside it, no stray backups.
    assert digest(shot) == before_bytes
    result = tmp_path / "shot_previs.blend"
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix.startswith(".blend")) == [
        "shot.blend",
        "shot_previs.blend",
    ]
    assert shot.read_bytes()[:4] == result.read_bytes()[:4]  # same compression (here: none)

    bpy.ops.wm.open_mainfile(filepath=str(result))
    shot_scene, previs = bpy.data.scenes["Shot"], bpy.data.scenes["Shot previs"]
    assert render_settings(shot_scene) == before  # the shot's render settings and Sequencer untouched
    assert bpy.context.scene.name == "Other"  # the file opens where it was saved
    (scene_strip,) = [s for s in all_strips(previs) if s.type == "SCENE"]
    assert scene_strip.scene == shot_scene and scene_strip.channel == 1
    assert (scene_strip.frame_final_start, scene_strip.frame_final_end) == (101, 161)
    (strip,) = preview_strips(previs)
    assert strip.channel == 2 and (strip.frame_final_start, strip.frame_final_duration) == (101, 60)
    assert (previs.frame_start, previs.frame_end, previs.render.fps, previs.render.fps_base) == (101, 160, 30000, 1001)
    assert previs.render.pixel_aspect_x == 4.0 and previs.render.use_sequencer
    meta = json.loads(strip["sparsectrl"])
    assert meta["shot"] == "Shot" and meta["num_frames"] == 60 and strip["sparsectrl_prompt"] == "a previs"
    frames, _ = read_video(Path(bpy.path.abspath(strip.filepath)))
    assert frames.shape[:3] == (60, 64, 64)  # 16:9 display at size 64: the short side raised to 64 (said)

    # F12 on the shot renders the shot, exactly as before (not the preview).
    after_render = render_frame(shot_scene, 130, tmp_path / "after.png")
    assert np.abs(after_render - original_render).max() < 1e-6


def test_overwriting_keeps_a_true_backup_gzip_stays_gzip_and_newer_files_need_a_flag(tiny_server, tmp_path):
    """Item 2: --out naming the shot itself keeps the original's bytes as .blend1; compression is kept; a file
    from a newer Blender is not overwritten without --allow-newer."""
    shot = tmp_path / "old.blend"
    build_shot(start=1, end=24, markers=(1, 24))
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "plain.blend"), compress=False)
    shot.write_bytes(gzip.compress((tmp_path / "plain.blend").read_bytes()))  # as Blender 2.61 wrote them
    original = shot.read_bytes()

    out = run_batch(shot, "--server", tiny_server.url, *FAST, "--out", shot)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "old.blend1").read_bytes() == original  # a true backup: the artist's bytes
    assert shot.read_bytes()[:2] == b"\x1f\x8b"  # still gzip
    first_result = shot.read_bytes()
    again = run_batch(shot, "--server", tiny_server.url, *FAST, "--out", shot)  # a second run in place
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "old.blend2").read_bytes() == original  # the original survives every run
    assert (tmp_path / "old.blend1").read_bytes() == first_result
    bpy.ops.wm.open_mainfile(filepath=str(shot))
    assert len(preview_strips(bpy.data.scenes["Scene previs"])) == 2  # run on its own result: stacked

    # zstd stays zstd
    build_shot(start=1, end=24, markers=(1, 24))
    zstd = tmp_path / "z.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(zstd), compress=True)
    assert run_batch(zstd, "--server", tiny_server.url, *FAST).returncode == 0
    assert (tmp_path / "z_previs.blend").read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert not (tmp_path / "z_previs.blend1").exists()

    # A file saved by a newer Blender (its header says so): never overwritten without the flag.
    data = bytearray((tmp_path / "plain.blend").read_bytes())
    if data.startswith(b"BLENDER17-01v"):
        data[13:17] = b"%04d" % (int(data[13:17]) + 2)
    else:
        data[9:12] = b"%03d" % (int(data[9:12]) + 2)
    newer = tmp_path / "newer.blend"
    newer.write_bytes(bytes(data))
    jobs_before = tiny_server.client.get("/v1/jobs").json()
    refused = run_batch(newer, "--server", tiny_server.url, *FAST, "--out", newer)
    assert refused.returncode == 1 and newer.read_bytes() == bytes(data)
    (line,) = refused.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: newer.blend was saved by a newer Blender") and "--allow-newer" in line
    assert tiny_server.client.get("/v1/jobs").json() == jobs_before  # refused before anything was sent
    ok = run_batch(newer, "--server", tiny_server.url, *FAST)  # to a new file: allowed, said
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert newer.read_bytes() == bytes(data) and "newer than this" in ok.stderr


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("truncated", "error: cannot open {shot}: "),
        ("cut_at_the_end", "error: cannot open {shot}: it is cut short"),
        ("png", "error: {shot} is a PNG image, not a .blend file"),
        ("out_dir", "error: --out {tmp} is a folder"),
        ("out_missing", "error: cannot write {tmp}/no/dir/x.blend: there is no folder {tmp}/no (make it first"),
        ("every_abc", "error: --keyframes every:abc: write every:N with N a whole number"),
        ("bad_list", "error: --keyframes 1,x: 'x' in the keyframe list is not a frame number"),
        ("no_scene", "error: --scene 'Nope': no such scene; the file has 'Other', 'Shot'"),
        ("previs_is_shot", "error: the previews cannot go on the shot scene 'Shot' itself"),
    ],
)
def test_bad_input_is_one_error_line_before_anything_is_sent(tiny_server, tmp_path, case, expected):
    """Item 5: one `error:` line, exit 1, no traceback, nothing rendered or sent (checked before the job)."""
    shot = tmp_path / "shot.blend"
    save_real_file(shot, tmp_path)
    args = [shot, "--server", tiny_server.url, "--scene", "Shot", *FAST, "--passes-dir", tmp_path / "passes"]
    if case == "truncated":
        data = shot.read_bytes()
        shot.write_bytes(data[: len(data) // 2])
    elif case == "cut_at_the_end":  # uncompressed, missing its end: checked before Blender reads it
        bpy.ops.wm.open_mainfile(filepath=str(shot))
        bpy.ops.wm.save_as_mainfile(filepath=str(shot), compress=False)
        data = shot.read_bytes()
        shot.write_bytes(data[:-64])
    elif case == "png":
        from tests.conftest import png_bytes, sketch

        shot.write_bytes(png_bytes(sketch()))
    elif case == "out_dir":
        args += ["--out", tmp_path]
    elif case == "out_missing":  # a mistyped --out: refused, no folders made
        args += ["--out", tmp_path / "no" / "dir" / "x.blend"]
    elif case == "every_abc":
        args += ["--keyframes", "every:abc"]
    elif case == "bad_list":
        args += ["--keyframes", "1,x"]
    elif case == "no_scene":
        args[4] = "Nope"
    elif case == "previs_is_shot":
        args += ["--preview-scene", "Shot"]
    jobs_before = tiny_server.client.get("/v1/jobs").json()
    out = run_batch(*args)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "Error: Loading" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert errors == [errors[-1]] and errors[-1].startswith(expected.format(shot=shot, tmp=tmp_path)), out.stderr
    assert not (tmp_path / "passes").exists() and not (tmp_path / "no").exists()  # nothing rendered or made
    assert tiny_server.client.get("/v1/jobs").json() == jobs_before  # nothing sent


def test_previews_go_into_the_artists_edit_above_the_shot_where_it_is_cut_in(tiny_server, tmp_path):
    """Item 1, a target scene the artist picks: an edit holding the shot as a Scene strip at frame 1001 on
    channel 3 gets the preview above it, shifted with it; the edit's own settings are not touched."""
    shot = tmp_path / "shot.blend"
    save_real_file(shot, tmp_path, active="Shot")
    bpy.ops.wm.open_mainfile(filepath=str(shot))
    edit = bpy.data.scenes.new("Edit")
    edit.frame_start, edit.frame_end = 1, 2000
    edit.render.resolution_x, edit.render.resolution_y, edit.render.fps = 1280, 720, 24
    editor = edit.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    strips.new_scene(name="cut in", scene=bpy.data.scenes["Shot"], channel=3, frame_start=1001)
    bpy.ops.wm.save_mainfile()
    before = render_settings(edit) | {"strips": None}

    out = run_batch(shot, "--server", tiny_server.url, *FAST, "--preview-scene", "Edit")
    assert out.returncode == 0, out.stderr[-3000:]
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "shot_previs.blend"))
    edit = bpy.data.scenes["Edit"]
    assert "Shot previs" not in bpy.data.scenes
    assert render_settings(edit) | {"strips": None} == before
    assert [s.name for s in all_strips(edit) if s.type == "SCENE"] == ["cut in"]  # no second copy of the shot
    (strip,) = preview_strips(edit)
    assert (strip.channel, strip.frame_final_start, strip.frame_final_duration) == (4, 1001, 60)
    assert not preview_strips(bpy.data.scenes["Shot"])


def test_preview_range_without_one_is_said(tiny_server, tmp_path):
    shot = tmp_path / "shot.blend"
    build_shot(start=5, end=20, markers=(5, 20))
    bpy.ops.wm.save_as_mainfile(filepath=str(shot))
    out = run_batch(shot, "--server", tiny_server.url, *FAST, "--size", 128, "--preview-range")
    assert out.returncode == 0, out.stderr[-2000:]
    assert warnings_of(out.stderr) == ["warning: the scene 'Scene' has no preview range: using the scene range 5-20"]


def _empty_pass_file(path: Path) -> None:
    """Scenes whose keyframes see nothing: 'Sky' turns its camera to the sky at frame 24, 'Ortho' has an
    orthographic camera framing nothing, 'Void' has no geometry."""
    import math

    scene = build_shot(start=1, end=24, markers=(1, 12, 24))
    scene.name = "Sky"
    cam = scene.camera
    cam.keyframe_insert("rotation_euler", frame=12)
    cam.rotation_euler = (math.pi, 0, 0)  # straight up
    cam.keyframe_insert("rotation_euler", frame=24)
    ortho = bpy.data.scenes.new("Ortho")
    ortho.frame_start, ortho.frame_end = 1, 24
    cam_data = bpy.data.cameras.new("Ortho")
    cam_data.type = "ORTHO"
    cam_obj = bpy.data.objects.new("Ortho", cam_data)
    ortho.collection.objects.link(cam_obj)
    for obj in scene.objects:
        if obj.type == "MESH":
            ortho.collection.objects.link(obj)
    cam_obj.location = (0, 0, 0)
    cam_obj.rotation_euler = (-math.pi / 2, 0, 0)  # looking along -Y: the cubes are behind it
    ortho.camera = cam_obj
    for frame in (1, 24):
        ortho.timeline_markers.new(f"F{frame}", frame=frame)
    void = bpy.data.scenes.new("Void")
    void.frame_start, void.frame_end = 1, 24
    void_cam = bpy.data.objects.new("VoidCam", bpy.data.cameras.new("VoidCam"))
    void.collection.objects.link(void_cam)
    void.camera = void_cam
    void.timeline_markers.new("F1", frame=1)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))


def test_empty_passes_are_named_once_and_refused_on_request(tiny_server, tmp_path):
    """Item 4: keyframes whose pass is empty are named before anything is sent; --refuse-empty stops there."""
    shot = tmp_path / "empty.blend"
    _empty_pass_file(shot)
    jobs_before = tiny_server.client.get("/v1/jobs").json()
    for scene, modality, frames in (
        ("Sky", "lineart", "keyframe 24"),
        ("Sky", "depth", "keyframe 24"),
        ("Sky", "rgb", "keyframe 24"),
        ("Ortho", "lineart", "keyframes 1, 24"),
        ("Void", "lineart", "keyframe 1"),
    ):
        out = run_batch(
            shot, "--server", tiny_server.url, "--scene", scene, "--modality", modality, *FAST, "--refuse-empty"
        )
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: nothing sent (--refuse-empty): the {modality} pass is empty at {frames}:")
        assert sum(line.startswith("warning: the") and "pass is empty" in line for line in out.stderr.splitlines()) == 1
    # Depth every frame over a scene with nothing in view: refused too, naming the timeline frames.
    out = run_batch(
        shot, "--server", tiny_server.url, "--scene", "Void", *FAST, "--keyframes", "none", "--depth-every-frame",
        "--frames", 4, "--refuse-empty",
    )  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: nothing sent (--refuse-empty): the depth pass is empty at frames 1, "), last
    assert tiny_server.client.get("/v1/jobs").json() == jobs_before

    out = run_batch(shot, "--server", tiny_server.url, "--scene", "Sky", *FAST)  # without the flag: said, sent
    assert out.returncode == 0, out.stderr[-2000:]
    assert [w for w in warnings_of(out.stderr) if "pass is empty" in w] == [
        "warning: the lineart pass is empty at keyframe 24: the camera sees one flat colour there (nothing in view, "
        "or one surface filling the frame, such as a wall close to the lens), so the model gets no guidance there"
    ]


def _finish(ops):
    ops.run_timers(120)
    assert ops.STATUS.run is None


def test_panel_moves_old_previews_works_from_the_previs_scene_and_asks_about_empty_passes(tiny_server, tmp_path, addon):
    """Items 1, 4, 6 in the panel: a preview an earlier version put on the shot's Sequencer moves to the previs
    scene; the panel shown in the previs scene works on its shot; Regenerate stacks and replaces there; an
    empty pass is said and sent only when the artist says so."""
    import math

    ops = addon
    scene = build_shot(start=1, end=24, markers=(1, 24))
    scene.name = "Shot A"
    bpy.data.scenes.new("Other")  # several scenes: the panel works on the one it is shown in
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "panel.blend"))
    props = scene.sparsectrl
    props.server_url, props.prompt, props.size, props.steps, props.num_frames = tiny_server.url, "x", 64, 2, 8
    props.frames_mode = "FIXED"

    # What 0.1.0 left: a preview on the shot's own Sequencer (and its Speed effect).
    video = tmp_path / "sparsectrl" / "old.mp4"
    video.parent.mkdir()
    write_mp4(np.zeros((24, 64, 64, 3), np.uint8), 24, video)
    editor = scene.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    old = strips.new_movie("SparseCtrl lineart 1", "//sparsectrl/old.mp4", channel=1, frame_start=1)
    old["sparsectrl"] = json.dumps({"seed": 1})
    old["sparsectrl_seed"] = 1

    bpy.context.window.scene = scene
    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    _finish(ops)
    previs = bpy.data.scenes["Shot A previs"]
    assert not all_strips(scene)  # the shot's Sequencer is empty again: F12 renders the shot
    moved, new = preview_strips(previs)
    assert moved["sparsectrl_seed"] == 1 and moved.filepath == "//sparsectrl/old.mp4" and moved.channel == 2
    assert (moved.frame_final_start, moved.frame_final_duration) == (1, 24)
    assert new.channel == 3 and ops.STATUS.message.startswith("preview added")

    # The panel shown in the previs scene: Regenerate replaces the strip selected there, then stacks.
    bpy.context.window.scene = previs
    props.regenerate_mode = "REPLACE"
    previs.sequence_editor.active_strip = new
    bpy.ops.sparsectrl.generate(regenerate=True)
    _finish(ops)
    strips_now = preview_strips(previs)
    assert len(strips_now) == 2 and strips_now[-1].channel == 3 and strips_now[-1]["sparsectrl_seed"] == props.seed
    props.regenerate_mode = "STACK"
    bpy.ops.sparsectrl.generate(regenerate=True)
    _finish(ops)
    assert len(preview_strips(previs)) == 3 and not all_strips(scene)

    # An empty pass: the panel says which keyframe and waits; Send Anyway sends the passes already rendered.
    cam = scene.camera
    cam.keyframe_insert("rotation_euler", frame=1)
    cam.rotation_euler = (math.pi, 0, 0)
    cam.keyframe_insert("rotation_euler", frame=24)
    bpy.context.window.scene = scene
    assert bpy.ops.sparsectrl.generate() == {"CANCELLED"}
    assert ops.STATUS.run is None and ops.STATUS.pending.prepared.empty_frames == [24]
    assert "the lineart pass is empty at keyframe 24" in ops.STATUS.message
    from sparsectrl_blender.blender import panels
    from tests.addon.test_panel_draw import Layout

    log = []
    panels.draw_panel(Layout(log), bpy.context)
    assert ("operator", "sparsectrl.generate", "Send Anyway") in log
    assert bpy.ops.sparsectrl.generate(pending="SEND") == {"FINISHED"}
    _finish(ops)
    assert len(preview_strips(previs)) == 4 and ops.STATUS.pending is None
