"""The add-on against a real `python -m server --model tiny` process: batch run, UI operators, cancel, errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from server.video.encode import read_video  # noqa: E402
from sparsectrl_blender.core.client import Client  # noqa: E402
from sparsectrl_blender.core.job import JobRunner  # noqa: E402
from tests.addon.scenes import build_shot  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.e2e.conftest import job_body  # noqa: E402
from tests.e2e.server_process import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_root):
    server = ServerProcess.tiny(tmp_path_factory.mktemp("addon_server"), tiny_root)
    yield server
    server.stop()


def save_shot(path: Path, **kwargs) -> Path:
    build_shot(**kwargs)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def run_batch(*args, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", "sparsectrl_blender.batch", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def all_strips(scene):
    editor = scene.sequence_editor
    return list(editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all)  # 4.5+ / 4.2


def preferences_owner() -> str:
    """The owner the panel sends: the preferences' name, else the login name (here: no preferences set)."""
    import getpass

    return getpass.getuser()


def preview_strips(scene):
    return [s for s in all_strips(scene) if s.type == "MOVIE" and "sparsectrl" in s.keys()]


def test_batch_run_puts_a_strip_spanning_the_shot(tiny_server, tmp_path):
    shot = save_shot(tmp_path / "shot.blend", start=1, end=48, markers=(1, 24, 48))
    (tmp_path / "out").mkdir()  # --out's folder must be there (a mistyped one is refused, #31 item 8)
    out = run_batch(
        shot,
        "--server",
        tiny_server.url,
        "--modality",
        "lineart",
        "--frames",
        16,
        "--size",
        128,
        "--steps",
        3,
        "--seed",
        11,
        "--prompt",
        "two boxes in fog",
        "--passes-dir",
        tmp_path / "passes",
        "--out",
        tmp_path / "out" / "shot_out.blend",
        "--owner",
        "farm: seq 010",
        "--priority",
        -1,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    job = tiny_server.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert (job["owner"], job["priority"]) == ("farm: seq 010", -1)  # the fair queue's owner and priority
    assert sorted(p.name for p in (tmp_path / "passes").iterdir()) == [
        "frame_0001.png",
        "frame_0024.png",
        "frame_0048.png",
    ]

    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "out" / "shot_out.blend"))
    assert not preview_strips(bpy.context.scene)  # the shot's own Sequencer is left alone (#15)
    scene = bpy.data.scenes["Scene previs"]  # the previs edit scene: a Scene strip of the shot, previews above
    (strip,) = preview_strips(scene)
    assert (strip.frame_final_start, strip.frame_final_duration) == (1, 48)
    video = Path(bpy.path.abspath(strip.filepath))
    assert strip.filepath.startswith("//sparsectrl/") and video.is_file()
    frames, fps = read_video(video)
    assert frames.shape == (48, 72, 128, 3) and fps == 24  # retimed to the shot; 1920x1080 at 128 px: 128x72
    assert len(preview_strips(scene)) == 1 and not [s for s in all_strips(scene) if s.type == "SPEED"]
    meta = json.loads(strip["sparsectrl"])
    assert meta["prompt"] == "two boxes in fog" and meta["seed"] == 11 and meta["modality"] == "lineart"
    assert meta["keyframes"] == {"1": 0, "24": 8, "48": 15} and meta["model"] == "tiny-random"
    assert strip["sparsectrl_seed"] == 11 and strip["sparsectrl_prompt"] == "two boxes in fog"

    # The Sequencer shows, at each keyframe's timeline frame, the delivered frame the server pinned the
    # keyframe's generated frame to (the pinning itself: tests/server/test_windows.py).
    bpy.context.window.scene = scene  # render the previs scene (the shot under its Scene strip: Workbench)
    bpy.data.scenes["Scene"].render.engine = "BLENDER_WORKBENCH"
    scene.render.use_sequencer = True
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 128, 72, 100
    scene.view_settings.view_transform = "Standard"
    scene.render.image_settings.file_format = "PNG"
    for frame in meta["keyframes"]:
        index = int(frame) - 1
        scene.frame_set(int(frame))
        scene.render.filepath = str(tmp_path / f"vse_{frame}.png")
        bpy.ops.render.render(write_still=True)
        img = bpy.data.images.load(scene.render.filepath)
        shown = np.round(np.flipud(np.array(img.pixels[:]).reshape(72, 128, 4))[..., :3] * 255)
        distances = [np.abs(shown - f).mean() for f in frames]
        assert int(np.argmin(distances)) == index, (frame, index, distances)


def test_batch_on_a_96_frame_shot_spans_exactly_96_frames(tiny_server, tmp_path):
    shot = save_shot(tmp_path / "shot.blend", start=1, end=96, markers=(1, 40, 96))
    out = run_batch(
        shot,
        "--server",
        tiny_server.url,
        "--size",
        64,
        "--steps",
        2,
        "--prompt",
        "long shot",
        "--out",
        tmp_path / "long.blend",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "long.blend"))
    (strip,) = preview_strips(bpy.data.scenes["Scene previs"])
    assert (strip.frame_final_start, strip.frame_final_end) == (1, 97)  # frames 1..96
    meta = json.loads(strip["sparsectrl"])
    assert meta["num_frames"] == 32  # 4 s at 8 generated frames per second: denoised in context windows
    frames, _ = read_video(Path(bpy.path.abspath(strip.filepath)))
    assert len(frames) == 96
    job = tiny_server.client.get(f"/v1/jobs/{meta['job_id']}").json()
    assert job["request"]["output_frames"] == 96
    assert [(k["index"], k["output_index"]) for k in job["request"]["keyframes"]] == [(0, 0), (13, 39), (31, 95)]


def test_batch_submits_a_sequence_at_once_and_each_shot_waits_on_its_own_job(tiny_server, tmp_path):
    """#17 item 6: a farm submits a sequence: files named and a shot list with per-shot flags; every job is
    queued before any result is saved, each shot's result lands in its own file, one bad shot is said and the
    others go on, and a shot saved again while its job ran is said."""
    seq = tmp_path / "seq010"
    seq.mkdir()
    sh010 = save_shot(seq / "sh010.blend", start=101, end=124, markers=(101, 124))
    build_shot(start=1, end=30, markers=(1, 15, 30))  # sh020: 29.97 fps, two scenes, the shot is "alt"
    main = bpy.context.scene
    main.render.fps, main.render.fps_base = 30000, 1001
    bpy.ops.scene.new(type="FULL_COPY")  # Scene › New › Full Copy, as an artist makes a variant
    alt = bpy.context.window.scene if bpy.context.window else bpy.data.scenes[-1]
    alt.name = "alt"
    alt.frame_start = 15
    bpy.ops.wm.save_as_mainfile(filepath=str(seq / "sh 020.blend"))
    save_shot(seq / "sh030.blend", markers=())  # no keyframes: this one fails
    (seq / "renders").mkdir()  # --out's folder must be there (a mistyped one is refused)
    shots = seq / "shots.txt"
    shots.write_text(
        '# seq010, as the farm sends it\n"sh 020.blend" --scene alt --seed 5 --prompt night --out renders/sh020.blend\n'
        "\nsh030.blend\n"
    )
    batch = subprocess.Popen(
        [sys.executable, "-m", "sparsectrl_blender.batch", str(sh010), "--shots", str(shots)]
        + ["--server", tiny_server.url, "--frames", "8", "--size", "64", "--steps", "2", "--prompt", "day"]
        + ["--seed", "3", "--owner", "farm seq010", "--priority", "-1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in batch.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(f"{sh010}: job "):  # sh010 is submitted: the artist saves it again meanwhile
            stat = sh010.stat()
            os.utime(sh010, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    stderr = batch.stderr.read()
    assert batch.wait(120) == 1, stderr[-3000:]
    assert "Traceback" not in stderr

    # Both good shots were queued before either result was saved; each line names its shot.
    submitted = [i for i, line in enumerate(lines) if " job " in line and line.endswith(("queued", "running"))]
    saved = [i for i, line in enumerate(lines) if ": strip '" in line]
    assert len(submitted) == 2 and len(saved) == 2 and max(submitted) < min(saved), lines
    assert lines[-1] != "2 shots done"
    assert "error: sh030.blend: no keyframes" in stderr
    assert stderr.strip().splitlines()[-1] == "error: 1 of 3 shots failed: sh030.blend"
    assert f"warning: {sh010}: sh010.blend was saved again since its passes were rendered" in stderr
    assert not (seq / "sh030_previs.blend").exists()

    jobs = {j["request"]["seed"]: j for j in tiny_server.client.get("/v1/jobs", params={"limit": 2}).json()["jobs"]}
    assert set(jobs) == {3, 5}
    assert {(j["owner"], j["priority"], j["status"]) for j in jobs.values()} == {("farm seq010", -1, "succeeded")}
    assert jobs[5]["request"]["prompt"] == "night" and jobs[3]["request"]["prompt"] == "day"

    for result, shot_scene, span, fps in (
        (seq / "sh010_previs.blend", "Scene", (101, 24), (24, 1.0)),
        (seq / "renders" / "sh020.blend", "alt", (15, 16), (30000, 1001.0)),
    ):
        bpy.ops.wm.open_mainfile(filepath=str(result))
        previs = bpy.data.scenes[f"{shot_scene} previs"]
        (strip,) = preview_strips(previs)
        assert (strip.frame_final_start, strip.frame_final_duration) == span
        assert (previs.render.fps, previs.render.fps_base) == fps
        assert Path(bpy.path.abspath(strip.filepath)).is_file()
        assert not preview_strips(bpy.data.scenes[shot_scene])


def _depth_shot(path: Path) -> Path:
    """A messy shot for depth every frame: starts at 1001, 29.97 fps, non-square pixels, the near cube moving
    left to right across the view (so each frame's depth tells where on the timeline it was rendered)."""
    scene = build_shot(start=1001, end=1060, markers=(1001, 1030))
    scene.render.fps, scene.render.fps_base = 30, 1.001
    scene.render.pixel_aspect_x = 1.25
    near = bpy.data.objects["near"]
    for frame, x in ((1001, -1.6), (1060, 1.6)):
        near.location.x = x
        near.keyframe_insert("location", frame=frame)
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_batch_depth_every_frame_alone_and_beside_line_art_keyframes(tiny_server, tmp_path):
    """#16 item 4/6: the depth pass at every generated frame of a real .blend, each rendered where that frame
    plays on the timeline, reaches the server's depth ControlNet in timeline order; alone (Keyframes: None) and
    beside line-art keyframes, which stay pinned to their frames."""
    from sparsectrl_blender.core.frame_mapping import generated_timeline_frames

    shot = _depth_shot(tmp_path / "shot.blend")
    original = shot.read_bytes()
    common = ("--server", tiny_server.url, "--frames", 8, "--size", 128, "--steps", 2, "--prompt", "a lane at dusk")
    out = run_batch(shot, *common, "--keyframes", "none", "--depth-every-frame", "--passes-dir", tmp_path / "alone")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "depth at 8 generated frames (timeline 1001-1060)" in out.stdout
    assert shot.read_bytes() == original
    timeline = generated_timeline_frames(1001, 1060, 8, {})
    job = tiny_server.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    request = job["request"]
    assert job["status"] == "succeeded" and request["keyframes"] == [] and request["modality"] == ""
    (group,) = request["controlnets"]
    assert group["name"] == "depth" and group["strength"] == 1.0 and group["frames"] == list(range(8))
    folder = tiny_server.data_dir / "jobs" / job["id"] / "controlnets" / "0"
    received = [_png(folder / f"{i:04d}.png") for i in range(8)]
    for i, frame in enumerate(timeline):  # frame i is the depth rendered at its timeline frame
        np.testing.assert_array_equal(received[i], _png(tmp_path / "alone" / f"depth_{frame:04d}.png"))
    assert received[0].shape == (64, 128, 3)  # 1920x1080 at pixel aspect 1.25 is 2400:1080: 128x58, short side 64
    # In timeline order: the near cube (the brightest: near = white) moves left to right frame by frame.
    centres = []
    for image in received:
        grey = image[..., 0].astype(float)
        columns = np.nonzero(grey >= grey.max() - 8)[1]
        centres.append(columns.mean())
    assert centres == sorted(centres) and centres[-1] - centres[0] > 30, centres

    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "shot_previs.blend"))
    (strip,) = preview_strips(bpy.data.scenes["Scene previs"])
    meta = json.loads(strip["sparsectrl"])
    assert meta["depth_every_frame"] is True and meta["keyframes"] == {} and meta["modality"] == ""
    assert strip.name == f"SparseCtrl depth every frame {meta['seed']}"  # #31 item 8: not "SparseCtrl  0"
    assert (strip.frame_final_start, strip.frame_final_duration) == (1001, 60)

    mixed = ("--keyframes", "markers", "--modality", "lineart", "--depth-every-frame", "--depth-strength", 0.5)
    mixed += ("--keyframe-strengths", "1030:0.6", "--keyframe-guidance", "0:0.5", "--depth-guidance", "0:0.8")
    out = run_batch(shot, *common, *mixed, "--passes-dir", tmp_path / "mixed", "--out", tmp_path / "mixed.blend")
    assert out.returncode == 0, out.stderr[-2000:]
    job = tiny_server.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    request = job["request"]
    assert job["status"] == "succeeded" and request["modality"] == "lineart"
    keyframes = {k["index"]: (k["output_index"], k["strength"]) for k in request["keyframes"]}
    assert keyframes == {0: (0, 1.0), 4: (29, 0.6)}  # 1001 and 1030 on 8 generated frames
    assert (request["keyframe_guidance_start"], request["keyframe_guidance_end"]) == (0.0, 0.5)  # 2 steps: 1
    (group,) = request["controlnets"]
    assert group["strength"] == 0.5 and group["frames"] == list(range(8))
    assert (group["guidance_start"], group["guidance_end"]) == (0.0, 0.8)
    timeline = generated_timeline_frames(1001, 1060, 8, {1001: 0, 1030: 4})
    assert timeline[4] == 1030  # the keyframe's depth is the keyframe's frame
    folder = tiny_server.data_dir / "jobs" / job["id"] / "controlnets" / "0"
    for i, frame in enumerate(timeline):
        np.testing.assert_array_equal(
            _png(folder / f"{i:04d}.png"), _png(tmp_path / "mixed" / f"depth_{frame:04d}.png")
        )
    assert sorted(p.name for p in (tmp_path / "mixed").glob("frame_*.png")) == ["frame_1001.png", "frame_1030.png"]

    out = run_batch(shot, *common, "--keyframes", "none", "--no-depth-every-frame")
    assert out.returncode == 1 and "error: nothing steers the preview" in out.stderr
    out = run_batch(shot, *common, "--keyframe-guidance", "0.5:0.2")
    assert out.returncode == 1 and "error: --keyframe-guidance: keyframe guidance: start 0.5 and end 0.2" in out.stderr
    out = run_batch(shot, *common, "--keyframe-strengths", "1030=2")
    assert out.returncode == 1 and "error: keyframe strength '1030=2': write FRAME:STRENGTH" in out.stderr
    assert shot.read_bytes() == original


def test_batch_takes_an_image_file_as_the_rgb_look_beside_depth_every_frame(tiny_server, tmp_path):
    """#16 item 4: a concept painting placed at a timeline frame is the RGB keyframe (fitted to the generation
    size as the server fits keyframes: scaled to cover, centre-cropped), the depth every frame the structure."""
    from PIL import Image

    shot = _depth_shot(tmp_path / "shot.blend")
    painting = np.zeros((200, 300, 3), np.uint8)
    painting[:, :150] = (220, 30, 20)  # red left half, blue right half
    painting[:, 150:] = (20, 40, 210)
    (tmp_path / "art").mkdir()
    Image.fromarray(painting).save(tmp_path / "art" / "key.png")
    common = ("--server", tiny_server.url, "--frames", 8, "--size", 128, "--steps", 2, "--prompt", "a lane at dusk")
    look = ("--modality", "rgb", "--keyframes", "none", "--keyframe-images", "1030: //art/key.png")
    out = run_batch(shot, *common, *look, "--depth-every-frame", "--passes-dir", tmp_path / "passes")
    assert out.returncode == 0, out.stderr[-2000:]
    job = tiny_server.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    request = job["request"]
    assert job["status"] == "succeeded" and request["modality"] == "rgb"
    assert [(k["index"], k["output_index"]) for k in request["keyframes"]] == [(4, 29)]  # frame 1030 of 1001-1060
    assert request["controlnets"][0]["frames"] == list(range(8))
    sent = _png(tiny_server.data_dir / "jobs" / job["id"] / "keyframes" / "0004.png")
    np.testing.assert_array_equal(sent, _png(tmp_path / "passes" / "frame_1030.png"))
    assert sent.shape == (64, 128, 3)  # 300x200 scaled to cover 128x64 (128x86), centre-cropped
    assert tuple(sent[32, 10]) == (220, 30, 20) and tuple(sent[32, 118]) == (20, 40, 210)

    # The look beside line-art keyframes (#16 items 2 and 4): the markers 1001 and 1030 rendered as line art, and
    # the RGB encoder's keyframes beside them: the painting at 1030 (Images As: RGB look), a quick RGB
    # render at 1001 (RGB look: every keyframe, but where a painting is the look), with the look's strength.
    beside = ("--modality", "lineart", "--keyframes", "markers", "--keyframe-images", "1030: //art/key.png")
    beside += ("--keyframe-images-as", "rgb")
    out = run_batch(
        shot, *common, *beside, "--rgb-look", "every", "--look-strength", 0.7, "--passes-dir", tmp_path / "beside"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 lineart keyframes [1001, 1030]" in out.stdout and "2 rgb keyframes [1001, 1030] beside them" in out.stdout
    job = tiny_server.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    request = job["request"]
    assert job["status"] == "succeeded" and request["modality"] == "lineart"
    keyframes = sorted((k["index"], k.get("modality", ""), k["output_index"]) for k in request["keyframes"])
    assert keyframes == [(0, "", 0), (0, "rgb", 0), (4, "", 29), (4, "rgb", 29)]
    assert request["keyframe_groups"] == [
        {"modality": "rgb", "strength": 0.7, "guidance_start": 0.0, "guidance_end": 1.0}
    ]
    stored = tiny_server.data_dir / "jobs" / job["id"] / "keyframes"
    np.testing.assert_array_equal(_png(stored / "rgb" / "0004.png"), sent)  # the painting, fitted as before
    np.testing.assert_array_equal(_png(stored / "rgb" / "0004.png"), _png(tmp_path / "beside" / "rgb_1030.png"))
    line_art = _png(stored / "0004.png")
    np.testing.assert_array_equal(line_art, _png(tmp_path / "beside" / "frame_1030.png"))
    assert line_art.shape == sent.shape and not np.array_equal(line_art, sent)  # the render, not the painting
    shaded = _png(stored / "rgb" / "0000.png")  # the quick RGB render of 1001: shades, not white lines on black
    np.testing.assert_array_equal(shaded, _png(tmp_path / "beside" / "rgb_1001.png"))
    assert shaded.shape == line_art.shape and len(np.unique(shaded.reshape(-1, 3), axis=0)) > 8
    assert not np.array_equal(shaded, _png(stored / "0000.png"))

    out = run_batch(shot, *common, "--modality", "rgb", "--keyframes", "none", "--keyframe-images", "1030: //nope.png")
    assert out.returncode == 1 and "error: keyframe image for frame 1030: no file" in out.stderr
    out = run_batch(shot, *common, "--keyframe-images", "1030 //art/key.png")
    assert out.returncode == 1 and "error: keyframe image '1030 //art/key.png': write FRAME: PATH" in out.stderr


def test_batch_with_the_server_down_fails_with_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shot = save_shot(tmp_path / "shot.blend")
    out = run_batch(shot, "--server", f"http://127.0.0.1:{port}", "--prompt", "x")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot reach the server at") and "Traceback" not in out.stderr


def test_batch_refuses_a_modality_the_server_lacks_and_bad_keyframes(tiny_server, tmp_path):
    shot = save_shot(tmp_path / "shot.blend", markers=())
    out = run_batch(shot, "--server", tiny_server.url, "--prompt", "x")
    assert out.returncode == 1 and "error: no keyframes: add timeline markers" in out.stderr


def test_runner_cancel_stops_the_job_on_the_server(tiny_server):
    runner = JobRunner(
        Client(tiny_server.url), job_body(num_frames=32, width=128, height=128, steps=150), poll_seconds=0.05
    )
    thread = threading.Thread(target=runner.run)
    thread.start()
    deadline = time.monotonic() + 60
    while runner.state.step < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    runner.cancel()
    thread.join(60)
    assert runner.state.phase == "cancelled" and runner.state.step < 150
    assert tiny_server.client.get(f"/v1/jobs/{runner.state.job_id}").json()["status"] == "cancelled"


@pytest.fixture
def addon():
    import sparsectrl_blender

    sparsectrl_blender.register()
    yield sys.modules["sparsectrl_blender.blender.operators"]
    sparsectrl_blender.unregister()


def _finish(ops):
    """Run the add-on's timer by hand (bpy as a module has no event loop to fire bpy.app.timers)."""
    ops.run_timers(120)
    assert ops.STATUS.run is None


def test_panel_operators_generate_regenerate_replace_and_report_errors(tiny_server, tmp_path, addon):
    ops = addon
    build_shot(start=1, end=24, markers=(1, 24))
    scene = bpy.context.scene
    props = scene.sparsectrl
    props.server_url, props.prompt, props.size, props.steps, props.num_frames = tiny_server.url, "x", 128, 2, 8
    props.frames_mode = "FIXED"

    bpy.ops.sparsectrl.check_connection()
    assert ops.STATUS.connection.checking and ops.STATUS.connection.thread.ident is None  # started by the timer
    ops.run_timers(10)
    assert ops.STATUS.connection.health["model"]["tiny"] is True

    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    assert not bpy.ops.sparsectrl.generate.poll()  # one generation at a time
    _finish(ops)
    assert not preview_strips(scene)  # the shot's render stays the shot's (#15)
    previs = bpy.data.scenes["Scene previs"]
    (first,) = preview_strips(previs)
    assert ops.STATUS.message.startswith("preview added") and not ops.STATUS.message_is_error
    assert (first.frame_final_start, first.frame_final_duration) == (1, 24)
    job = tiny_server.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    assert job["owner"] == preferences_owner() and job["priority"] == 0  # the artist, for the fair queue

    props.regenerate_mode = "REPLACE"
    previs.sequence_editor.active_strip = first
    old_seed, old_channel = props.seed, first.channel
    bpy.ops.sparsectrl.generate(regenerate=True)
    _finish(ops)
    (replaced,) = preview_strips(previs)
    assert replaced["sparsectrl_seed"] == props.seed != old_seed and replaced.channel == old_channel

    props.regenerate_mode = "STACK"
    bpy.ops.sparsectrl.generate(regenerate=True)
    _finish(ops)
    assert len(preview_strips(previs)) == 2

    props.num_frames, props.steps, props.size = 24, 150, 256  # long enough to cancel mid-run
    bpy.ops.sparsectrl.generate()
    runner = ops.STATUS.run.runner
    deadline = time.monotonic() + 60
    while runner.state.step < 1 and time.monotonic() < deadline:
        ops._poll_run()  # the event loop's timer: its first call starts the job thread
        time.sleep(0.05)
    assert runner.state.step >= 1  # running on the server
    assert bpy.ops.sparsectrl.cancel() == {"FINISHED"}
    _finish(ops)
    assert ops.STATUS.message == "cancelled" and runner.state.step < 150
    assert len(preview_strips(previs)) == 2

    props.num_frames, props.steps, props.size = 8, 2, 128
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        props.server_url = f"http://127.0.0.1:{s.getsockname()[1]}"
    bpy.ops.sparsectrl.generate()
    _finish(ops)
    assert ops.STATUS.message_is_error and "cannot reach the server" in ops.STATUS.message
    assert len(preview_strips(previs)) == 2  # nothing lost


def test_server_disappearing_mid_job_says_so_and_offers_to_resubmit(tmp_path, tiny_root, addon, monkeypatch):
    import shutil

    ops = addon
    shutil.copytree(tiny_root, tmp_path / "data" / "models" / "tiny")
    server = ServerProcess(["--model", "tiny"], tmp_path / "data", tmp_path / "server.log")
    build_shot(start=1, end=24, markers=(1, 24))
    props = bpy.context.scene.sparsectrl
    props.server_url, props.prompt, props.size, props.steps, props.num_frames = server.url, "x", 256, 150, 24
    props.frames_mode = "FIXED"
    monkeypatch.setattr(ops, "LOST_AFTER_SECONDS", 1.0)
    bpy.ops.sparsectrl.generate()
    runner = ops.STATUS.run.runner
    deadline = time.monotonic() + 60
    while runner.state.step < 1 and time.monotonic() < deadline:
        ops._poll_run()  # the event loop's timer: its first call starts the job thread
        time.sleep(0.05)
    assert runner.state.step >= 1
    server.kill9()
    _finish(ops)
    assert ops.STATUS.message_is_error and ops.STATUS.can_resubmit
    assert "the server went away during job" in ops.STATUS.message and "resubmit" in ops.STATUS.message

    restarted = ServerProcess(["--model", "tiny"], tmp_path / "data", tmp_path / "server.log")
    try:
        props.server_url, props.size, props.steps, props.num_frames = restarted.url, 128, 2, 8
        bpy.ops.sparsectrl.generate()
        _finish(ops)
        assert ops.STATUS.message.startswith("preview added") and not ops.STATUS.can_resubmit
        lost = restarted.client.get(f"/v1/jobs/{runner.state.job_id}").json()
        assert lost["status"] == "failed" and lost["error"]["code"] == "interrupted"
    finally:
        restarted.stop()


def test_panel_in_an_artists_edit_of_two_shots(tiny_server, tmp_path, addon):
    """#15 item 1 in an edit holding two shots: the panel works on the shot of the active strip, Replace never
    takes the other shot's preview, a scene with a camera or another shot's previs is refused as a target, and
    the strip records the server the job went to even if the panel's URL changed during the job (#13)."""
    ops = addon
    build_shot(start=1, end=24, markers=(1, 24))
    shot_a = bpy.context.scene
    shot_a.name = "A"
    shot_b = shot_a.copy()  # a second shot, same blocking
    shot_b.name = "B"
    edit = bpy.data.scenes.new("Edit")
    editor = edit.sequence_editor_create()
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    cut_a = strips.new_scene(name="A cut", scene=shot_a, channel=1, frame_start=1)
    cut_b = strips.new_scene(name="B cut", scene=shot_b, channel=1, frame_start=25)
    for shot in (shot_a, shot_b):
        props = shot.sparsectrl
        props.server_url, props.prompt, props.size, props.steps, props.num_frames = tiny_server.url, "x", 64, 1, 4
        props.frames_mode, props.preview_scene = "FIXED", "Edit"

    # The panel shown in the edit, on each shot's cut in turn; B's URL is changed while its job runs.
    with bpy.context.temp_override(scene=edit):
        editor.active_strip = cut_a
        assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
        assert ops.STATUS.run.scene_name == "A"
        _finish(ops)
        editor.active_strip = cut_b
        bpy.ops.sparsectrl.generate()
        sent_to, shot_b.sparsectrl.server_url = shot_b.sparsectrl.server_url, "http://127.0.0.1:9"
        _finish(ops)
    preview_a, preview_b = sorted(preview_strips(edit), key=lambda s: s.frame_final_start)
    assert (preview_a.channel, preview_a.frame_final_start, preview_a.frame_final_duration) == (2, 1, 24)
    assert (preview_b.channel, preview_b.frame_final_start, preview_b.frame_final_duration) == (2, 25, 24)
    assert json.loads(preview_b["sparsectrl"])["server"] == sent_to
    assert "A previs" not in bpy.data.scenes and "B previs" not in bpy.data.scenes
    assert not preview_strips(shot_a) and not preview_strips(shot_b)

    # Replace from A's panel while B's preview is the active strip: A's previews stack, B's stays.
    shot_a.sparsectrl.regenerate_mode = "REPLACE"
    editor.active_strip = preview_b
    b_name = preview_b.name
    with bpy.context.temp_override(scene=shot_a):
        bpy.ops.sparsectrl.generate(regenerate=True)
        _finish(ops)
    assert b_name in [s.name for s in preview_strips(edit)] and len(preview_strips(edit)) == 3

    # Targets that would hijack a render or another shot's previs are refused before anything renders.
    jobs_before = len(tiny_server.client.get("/v1/jobs").json()["jobs"])
    shot_a.sparsectrl.preview_scene = "B"  # a 3D scene with a camera
    with bpy.context.temp_override(scene=shot_a), pytest.raises(RuntimeError, match="has a camera"):
        bpy.ops.sparsectrl.generate()  # the operator reports the error (a RuntimeError under bpy as a module)
    assert "has a camera" in ops.STATUS.message and ops.STATUS.message_is_error
    shot_b.sparsectrl.preview_scene, shot_b.sparsectrl.server_url = "", sent_to
    with bpy.context.temp_override(scene=shot_b):
        bpy.ops.sparsectrl.generate()  # makes "B previs"
        _finish(ops)
    shot_a.sparsectrl.preview_scene = "B previs"
    with bpy.context.temp_override(scene=shot_a), pytest.raises(RuntimeError, match="already holds the previs"):
        bpy.ops.sparsectrl.generate()
    assert "already holds the previs of the shot 'B'" in ops.STATUS.message
    assert len(tiny_server.client.get("/v1/jobs").json()["jobs"]) == jobs_before + 1


def test_panel_generates_from_depth_every_frame_alone(tiny_server, tmp_path, addon):
    """The panel's Depth every frame with Keyframes: None: checked against the server's health first (a server
    without a depth ControlNet is said before anything renders), then one depth pass per generated frame."""
    ops = addon
    build_shot(start=1, end=24, markers=())
    scene = bpy.context.scene
    props = scene.sparsectrl
    props.server_url, props.prompt, props.size, props.steps = tiny_server.url, "x", 128, 2
    props.frames_mode, props.num_frames = "FIXED", 6
    props.keyframe_source, props.depth_every_frame, props.depth_strength = "NONE", True, 0.8

    bpy.ops.sparsectrl.check_connection()
    ops.run_timers(10)
    assert "depth" in ops.STATUS.connection.health["controlnets"]
    without = {**ops.STATUS.connection.health, "controlnets": []}
    ops.STATUS.connection.health, health = without, ops.STATUS.connection.health
    with pytest.raises(RuntimeError, match="Depth every frame unavailable: the server has no 'depth' ControlNet"):
        bpy.ops.sparsectrl.generate()  # an operator's error report is an exception in bpy as a module
    assert ops.STATUS.message_is_error and ops.STATUS.run is None
    ops.STATUS.connection.health = health

    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    assert ops.STATUS.message == "sent depth at 6 frames"
    _finish(ops)
    assert ops.STATUS.message.startswith("preview added") and not ops.STATUS.message_is_error
    job = tiny_server.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
    (group,) = job["request"]["controlnets"]
    assert job["request"]["keyframes"] == [] and group["frames"] == list(range(6)) and group["strength"] == 0.8
    (strip,) = preview_strips(bpy.data.scenes["Scene previs"])
    assert json.loads(strip["sparsectrl"])["depth_every_frame"] is True


def test_the_batch_sends_the_artists_own_token_and_cannot_rename_its_owner(tmp_path, tiny_root):
    """#32 item 2: with a per-artist token (SPARSECTRL_TOKEN or --token) the job is that artist's; --owner naming
    someone else is one `error:` line with the server's reason."""
    import shutil

    token = "ana-own-token-0123456789"
    shutil.copytree(tiny_root, tmp_path / "data" / "models" / "tiny")
    config = tmp_path / "server.toml"
    config.write_text(f'[auth]\nartists = [{{ owner = "ana", token = "{token}" }}]\n')
    server = ServerProcess(
        ["--model", "tiny", "--config", str(config)], tmp_path / "data", tmp_path / "server.log", token=token
    )
    try:
        shot = save_shot(tmp_path / "shot.blend", start=1, end=16, markers=(1, 16))
        common = [shot, "--server", server.url, "--modality", "lineart", "--frames", 8, "--size", 64, "--steps", 2]
        common += ["--prompt", "two boxes in fog", "--passes-dir", tmp_path / "passes"]
        out = run_batch(*common, "--out", tmp_path / "out.blend", env={"SPARSECTRL_TOKEN": token})
        assert out.returncode == 0, out.stderr[-2000:]
        job = server.client.get("/v1/jobs", params={"limit": 1}).json()["jobs"][0]
        assert (job["owner"], job["priority"]) == ("ana", 0)  # not the login name + " (batch)"
        refused = run_batch(*common, "--token", token, "--owner", "bob", "--out", tmp_path / "out2.blend")
        assert refused.returncode != 0 and "'ana'" in refused.stderr, refused.stderr[-2000:]
        assert "Traceback" not in refused.stderr
        assert len(server.client.get("/v1/jobs").json()["jobs"]) == 1  # nothing more was queued
        assert run_batch(*common, "--out", tmp_path / "out3.blend").returncode != 0  # no token: 401
    finally:
        server.stop()
