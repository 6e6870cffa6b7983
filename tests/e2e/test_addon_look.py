"""#30 item 5 end to end: the add-on sending the sequence's Look reference for two shots of one edit, against a
real `python -m server --model tiny` (its tiny IP-Adapter), from the panel and from the batch; and what it says
before anything is sent when the server has no IP-Adapter or a file is not there."""

from __future__ import annotations

import hashlib
import io
import json
import os
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
def look_server(tmp_path_factory, tiny_root):
    """The tiny server, which ships an IP-Adapter (GET /v1/models names it)."""
    server = ServerProcess.tiny(tmp_path_factory.mktemp("look_server"), tiny_root)
    assert server.client.get("/v1/models").json()["ip_adapter"]["kind"] == "plain"
    yield server
    server.stop()


def _strips(scene):
    editor = scene.sequence_editor or scene.sequence_editor_create()
    return editor.strips if hasattr(editor, "strips") else editor.sequences  # 5.x / 4.x


def previews(scene) -> list:
    editor = scene.sequence_editor
    strips = editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all
    return sorted((s for s in strips if s.type == "MOVIE" and "sparsectrl" in s.keys()), key=lambda s: s.frame_start)


def art(folder: Path) -> dict[str, bytes]:
    """A character sheet of two views (a PNG and a JPEG) and another character (a PNG), as files beside the shots."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(30)
    files = {}
    for name, fmt in (("knight.png", "PNG"), ("knight_back.jpg", "JPEG"), ("other.png", "PNG")):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 32, 3), dtype=np.uint8)).save(buffer, fmt)
        (folder / name).write_bytes(buffer.getvalue())
        files[name] = buffer.getvalue()
    return files


def edit_of_two_shots(folder: Path, server_url: str) -> Path:
    """sh010 (frames 1-16) and sh020 (1-12), cut one after the other into the edit 'Edit', which holds the
    sequence's reference (the knight's two views at 0.6); the previews go to the edit. Saved as shots.blend."""
    sh010 = build_shot(start=1, end=16, markers=(1, 16))
    sh010.name = "sh010"
    sh020 = sh010.copy()
    sh020.name, sh020.frame_end = "sh020", 12
    edit = bpy.data.scenes.new("Edit")
    _strips(edit).new_scene(name="sh010", scene=sh010, channel=1, frame_start=1)
    _strips(edit).new_scene(name="sh020", scene=sh020, channel=1, frame_start=17)
    for shot in (sh010, sh020):
        props = shot.sparsectrl
        props.server_url, props.prompt, props.size, props.steps, props.seed = server_url, "a knight", 64, 2, 3
        props.preview_scene = "Edit"
    look = edit.sparsectrl_look
    for name in ("//art/knight.png", "//art/knight_back.jpg"):
        look.images.add().filepath = name
    look.strength = 0.6
    path = folder / "shots.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_panel_sends_the_sequences_reference_for_two_shots_of_one_edit(look_server, tmp_path, addon):
    ops = addon
    files = art(tmp_path / "art")
    edit_of_two_shots(tmp_path, look_server.url)
    knight = [sha(files["knight.png"]), sha(files["knight_back.jpg"])]
    for name in ("sh010", "sh020"):
        with bpy.context.temp_override(scene=bpy.data.scenes[name]):
            assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
        ops.run_timers(180)
        assert not ops.STATUS.message_is_error, ops.STATUS.message
    strips = previews(bpy.data.scenes["Edit"])
    assert [round(s.frame_start) for s in strips] == [1, 17]  # each above its shot's cut
    for strip, shot in zip(strips, ("sh010", "sh020"), strict=True):
        meta = json.loads(strip["sparsectrl"])
        assert meta["shot"] == shot
        assert meta["reference"] == {
            "files": ["//art/knight.png", "//art/knight_back.jpg"],
            "sha256": knight,
            "strength": 0.6,
            "guidance": [0.0, 1.0],
            "source": "sequence 'Edit'",
        }
        job = look_server.client.get(f"/v1/jobs/{meta['job_id']}").json()
        assert job["status"] == "succeeded", job
        sent = job["request"]["reference"]
        assert sent["images"] == 2 and sent["strength"] == pytest.approx(0.6) and sent["sha256"] == knight
        assert (look_server.data_dir / "jobs" / meta["job_id"] / "reference" / "1.png").is_file()


def test_the_batch_sends_the_sequences_reference_and_a_shot_lists_own(look_server, tmp_path, addon):
    """A shot list of the two shots: sh010 inherits the edit's reference, sh020's line gives its own."""
    files = art(tmp_path / "art")
    blend = edit_of_two_shots(tmp_path, look_server.url)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    (tmp_path / "list.txt").write_text(
        "shots.blend --scene sh010 --out sh010_previs.blend\n"
        "shots.blend --scene sh020 --out sh020_previs.blend --reference art/other.png --reference-strength 0.3\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "sparsectrl_blender.batch", "--shots", str(tmp_path / "list.txt")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "the Look reference of sequence 'Edit'" in out.stdout
    expected = {
        "sh010": ([sha(files["knight.png"]), sha(files["knight_back.jpg"])], 0.6, "sequence 'Edit'"),
        "sh020": ([sha(files["other.png"])], 0.3, "--reference"),
    }
    for shot, (hashes, strength, source) in expected.items():
        bpy.ops.wm.open_mainfile(filepath=str(tmp_path / f"{shot}_previs.blend"))
        (strip,) = [s for s in previews(bpy.data.scenes["Edit"]) if json.loads(s["sparsectrl"])["shot"] == shot]
        meta = json.loads(strip["sparsectrl"])
        assert meta["reference"]["sha256"] == hashes and meta["reference"]["source"] == source
        sent = look_server.client.get(f"/v1/jobs/{meta['job_id']}").json()["request"]["reference"]
        assert sent["sha256"] == hashes and sent["strength"] == pytest.approx(strength)
    assert blend.is_file()


def test_a_reference_the_server_cannot_take_is_said_before_anything_is_sent(configured_server, tmp_path, addon):
    """A server without an IP-Adapter (or from before #30), and a reference file that is not there: one error
    line from the batch, one readable report in Blender, no job sent."""
    ops = addon
    art(tmp_path / "art")
    edit_of_two_shots(tmp_path, configured_server.url)
    jobs = len(configured_server.client.get("/v1/jobs").json()["jobs"])
    shot = bpy.data.scenes["sh010"]
    with bpy.context.temp_override(scene=shot):
        bpy.ops.sparsectrl.check_connection()
        ops.run_timers(30)
        assert ops.STATUS.connection.health is not None
        with pytest.raises(RuntimeError, match="Look reference unavailable: the server"):
            bpy.ops.sparsectrl.generate()
    assert ops.STATUS.message_is_error and ops.STATUS.run is None

    def batch(*flags):
        return subprocess.run(
            [sys.executable, "-m", "sparsectrl_blender.batch", str(tmp_path / "shots.blend"), "--scene", "sh010"]
            + ["--out", str(tmp_path / "out.blend"), *flags],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    refused = batch()
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "error: Look reference unavailable: the server" in refused.stderr
    missing = batch("--reference", str(tmp_path / "art" / "gone.png"))
    assert missing.returncode == 1 and f"error: Look reference: no file {tmp_path / 'art'}" in missing.stderr
    bad = batch("--reference-strength", "3")
    assert bad.returncode == 1 and "error: --reference-strength must be 0 to 2 (got 3)" in bad.stderr
    # Strength 0 is the job without the reference: nothing of it is sent, so this server takes the job.
    off = batch("--reference-strength", "0")
    assert off.returncode == 0, off.stdout + off.stderr
    assert len(configured_server.client.get("/v1/jobs").json()["jobs"]) == jobs + 1
    (job,) = configured_server.client.get("/v1/jobs").json()["jobs"][:1]
    assert (job.get("request") or {}).get("reference") is None
    assert "Look reference" not in off.stdout
