"""What real files and real farms showed (#31): results a studio's older Blender can open, a stopped batch that
cancels its jobs, shot lists checked before anything is sent. The batch against a real `python -m server --model
tiny`, on shots with real files' traits (start frames other than 1, 29.97 fps, several scenes, Sequencer
post-processing on)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

from tests.addon.scenes import build_shot  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.e2e.server_process import ServerProcess  # noqa: E402
from tests.e2e.test_addon import run_batch  # noqa: E402

pytestmark = pytest.mark.slow

BLENDER_LOG = re.compile(r"\d\d:\d\d\.\d{3} ")  # a line of Blender's own log ("00:00.037  color_management | …")
FAST = ("--size", 64, "--steps", 2, "--prompt", "a previs")
BPY_42 = ROOT / ".venvs" / "bpy-4.2.23" / "bin" / "python"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A messy shot saved by another bpy: 25-56 at 29.97 fps, a second scene, Sequencer post-processing on.
SAVE_SHOT = """
import os, sys
import bpy
from tests.addon.scenes import build_shot
scene = build_shot(start=25, end=56, markers=(25, 40, 56))
scene.render.fps, scene.render.fps_base = 30000, 1001
scene.render.use_sequencer = True
bpy.data.scenes.new("Other")
bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
sys.stdout.flush()
os._exit(0)
"""
# Open a result in that bpy and say what its previs scene holds.
OPEN_RESULT = """
import os, sys
import bpy
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
editor = bpy.data.scenes["Scene previs"].sequence_editor
strips = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all
print("OPENED", tuple(bpy.data.version)[:2], sorted(s.name for s in strips if "sparsectrl" in s.keys()))
sys.stdout.flush()
os._exit(0)
"""


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_root):
    server = ServerProcess.tiny(tmp_path_factory.mktemp("farm_files_server"), tiny_root)
    yield server
    server.stop()


def jobs(server) -> list[dict]:
    return server.client.get("/v1/jobs").json()["jobs"]


def writes_the_new_header() -> bool:
    from sparsectrl_blender.batch import oldest_reader, written_header

    return oldest_reader(written_header(), tuple(bpy.app.version)[:2]) is not None


@pytest.mark.skipif(not BPY_42.exists(), reason="no bpy 4.2 venv (tests/bpy_versions.sh makes it)")
def test_a_4_2_shot_is_refused_by_a_newer_format_and_the_4_2_batch_result_opens_in_4_2(tiny_server, tmp_path):
    """#31 item 1: bpy 5.x writes a header 4.2 cannot read. A shot last saved by 4.2, batch run by this bpy, is
    refused in one line before anything renders or is sent, nothing written (not even with --out over the shot);
    the same shot batch run by bpy 4.2 comes back as a file 4.2 opens, with the preview in it."""
    shot = tmp_path / "sh010.blend"
    made = subprocess.run([BPY_42, "-c", SAVE_SHOT, shot], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert made.returncode == 0 and shot.read_bytes()[:12] == b"BLENDER-v402", made.stderr[-2000:]
    original = shot.read_bytes()

    if writes_the_new_header():
        before = jobs(tiny_server)
        for out in (shot, tmp_path / "new.blend"):
            refused = run_batch(shot, "--server", tiny_server.url, *FAST, "--keyframes", "every:8", "--out", out)
            assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
            errors = [line for line in refused.stderr.splitlines() if "error" in line.lower()]
            assert errors == [
                f"error: sh010.blend was last saved by Blender 4.2, which cannot open what this Blender "
                f"{bpy.app.version_string.split()[0]} writes (only 4.5 and later do): run the batch in the "
                "artist's Blender (README), or pass --allow-newer-format; nothing was written"
            ]
        assert shot.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["sh010.blend"]
        assert jobs(tiny_server) == before  # refused before anything was sent
        allowed = run_batch(shot, "--server", tiny_server.url, *FAST, "--keyframes", "every:8", "--allow-newer-format")
        assert allowed.returncode == 0, allowed.stderr[-2000:]
        assert [line for line in allowed.stderr.splitlines() if "newer-format" in line] == [
            f"warning: --allow-newer-format: the result is a Blender {bpy.app.version_string.split()[0]} file, "
            "which 4.2 cannot open"
        ]
        (tmp_path / "sh010_previs.blend").unlink()
        shutil.rmtree(tmp_path / "sparsectrl")

    # Run by the artist's own Blender (here bpy 4.2): a 4.2 file, the preview on its previs scene.
    ran = subprocess.run(
        [BPY_42, "-m", "sparsectrl_blender.batch", shot, "--server", tiny_server.url, "--keyframes", "every:8"]
        + list(map(str, FAST)),
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "last saved" not in ran.stderr  # its own format: nothing to say
    result = tmp_path / "sh010_previs.blend"
    assert result.read_bytes()[:12] == b"BLENDER-v402" and shot.read_bytes() == original
    opened = subprocess.run([BPY_42, "-c", OPEN_RESULT, result], cwd=ROOT, env=ENV, capture_output=True, text=True)
    (line,) = [line for line in opened.stdout.splitlines() if line.startswith("OPENED")]
    assert line.startswith("OPENED (4, 2) ['SparseCtrl lineart"), opened.stdout + opened.stderr[-2000:]


def test_an_older_file_is_said_and_the_flag_writes_the_newer_format(tiny_server, tmp_path):
    """#31 item 1: a file from before 4.2 (its header says 4.1) is one warning line and goes on;
    --allow-newer-format writes a shot its Blender cannot open, and says so."""
    build_shot(start=0, end=23, markers=(0, 23))
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "plain.blend"), compress=False)
    data = bytearray((tmp_path / "plain.blend").read_bytes())
    older = tmp_path / "old.blend"
    if data.startswith(b"BLENDER17-01v"):  # the version the header records is what bpy.data.version reads
        data[13:17] = b"0401"
    else:
        data[9:12] = b"401"
    older.write_bytes(bytes(data))
    out = run_batch(older, "--server", tiny_server.url, *FAST)
    assert out.returncode == 0, out.stderr[-2000:]
    said = [line for line in out.stderr.splitlines() if "last saved" in line]
    this = bpy.app.version_string.split()[0]
    cannot = ", which 4.1 cannot open" if writes_the_new_header() else ""
    assert said == [
        f"warning: old.blend was last saved by Blender 4.1, older than the 4.2 the add-on supports: the result is "
        f"a Blender {this} file{cannot}"
    ]


def _wait_for(condition, seconds: float = 120.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def _sequence(folder: Path) -> Path:
    """sh010 (start 101), sh020 (its scene has no camera), sh030 (29.97 fps, start 0, Sequencer on)."""
    folder.mkdir()
    build_shot(start=101, end=124, markers=(101, 124))
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "sh010.blend"))
    scene = build_shot(start=1, end=24, markers=(1, 24))
    bpy.data.objects.remove(scene.camera)
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "sh020.blend"))
    scene = build_shot(start=0, end=30, markers=(0, 30))
    scene.render.fps, scene.render.fps_base = 30000, 1001
    scene.render.use_sequencer = True
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "sh030.blend"))
    shots = folder / "shots.txt"
    shots.write_text("sh010.blend\nsh020.blend --seed 4\nsh030.blend --keyframes every:10\n")
    return shots


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_batch_cancels_its_jobs_and_a_shot_list_is_checked_before_anything_is_sent(
    tiny_server, tmp_path, sig
):
    """#31 items 2 and 7: every shot is checked (its camera too) before the first job is sent, lines name the
    shot's file; SIGTERM (a farm's timeout) or Ctrl-C cancels the jobs sent, in one line, exit 143 / 130."""
    shots = _sequence(tmp_path / "seq")
    batch = subprocess.Popen(
        [sys.executable, "-m", "sparsectrl_blender.batch", "--shots", str(shots), "--server", tiny_server.url]
        + ["--frames", "16", "--size", "128", "--steps", "150", "--prompt", "night"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in batch.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("sh030.blend: job "):
            break
    ids = [line.split()[2] for line in lines if " job " in line]
    assert len(ids) == 2, lines
    _wait_for(lambda: tiny_server.client.get(f"/v1/jobs/{ids[0]}").json()["status"] == "running")
    batch.send_signal(sig)
    stdout, stderr = batch.communicate(timeout=60)
    assert batch.returncode == 128 + sig, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"interrupted ({sig.name}): cancelled jobs {', '.join(ids)} on the server; nothing saved for them"
    )
    # sh020's missing camera was said before anything was sent; every line names the shot's file.
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert error == (
        "error: sh020.blend: the scene 'Scene' has no camera: set one (Scene properties > Camera) to render passes"
    )
    ours = [line for line in lines if not BLENDER_LOG.match(line)]  # bpy 5.2 logs its OCIO config to stdout
    assert all(line.startswith(("sh010.blend: ", "sh030.blend: ")) for line in ours), lines
    assert "shots.txt line" not in stdout + stderr
    statuses = {i: _wait_for(lambda i=i: _over(tiny_server, i)) for i in ids}
    assert statuses == {i: "cancelled" for i in ids}
    assert not list((tmp_path / "seq").glob("*_previs.blend"))


def _over(server, job_id: str) -> str | None:
    status = server.client.get(f"/v1/jobs/{job_id}").json()["status"]
    return status if status in ("succeeded", "failed", "cancelled") else None


def test_quitting_blender_cancels_the_panels_job(tiny_server):
    """#31 item 2: Blender does not unregister add-ons when it quits; the add-on's atexit hook cancels the job
    the panel waits on, so it does not run on for nobody."""
    from types import SimpleNamespace

    import sparsectrl_blender
    from sparsectrl_blender.blender import operators
    from sparsectrl_blender.core.client import Client
    from sparsectrl_blender.core.job import JobRunner
    from tests.e2e.conftest import job_body

    sparsectrl_blender.register()
    try:
        runner = JobRunner(Client(tiny_server.url), job_body(steps=150))
        assert runner.submit().phase in ("queued", "running")
        operators.STATUS.run = SimpleNamespace(runner=runner)
        operators.cancel_on_quit()  # what atexit runs when Blender quits
        assert _wait_for(lambda: _over(tiny_server, runner.state.job_id)) == "cancelled"
        assert runner.state.phase == "cancelled"
    finally:
        operators.STATUS.run = None
        sparsectrl_blender.unregister()


def test_the_sent_line_names_only_the_modalitys_keyframes(tiny_server, tmp_path):
    """#31 item 8: an image file as the RGB look at a frame that is no marker is not counted among the line-art
    keyframes ("2 lineart keyframes [1, 100, 250]" listed the look's frame 100 too)."""
    from tests.conftest import png_bytes, sketch

    build_shot(start=0, end=47, markers=(0, 47))
    shot = tmp_path / "shot.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(shot))
    (tmp_path / "look.png").write_bytes(png_bytes(sketch()))
    look = ("--keyframe-images", "20://look.png", "--keyframe-images-as", "rgb", "--modality", "lineart")
    out = run_batch(shot, "--server", tiny_server.url, *FAST, "--keyframes", "markers", "--frames", 8, *look)
    assert out.returncode == 0, out.stderr[-2000:]
    said = "scene 'Scene': 2 lineart keyframes [0, 47] -> generated frames [0, 7] and 1 rgb keyframes [20] beside them"
    assert said in out.stdout, out.stdout
