"""Depth keyframes for real, end to end: Blender renders training clips, an encoder is trained on them, the server
serves it as `depth`, and the add-on's batch command puts a depth-conditioned preview on the Sequencer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

bpy = pytest.importorskip("bpy")

from sparsectrl_blender import dataset  # noqa: E402
from tests.addon.scenes import build_shot  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.e2e.server_process import ServerProcess  # noqa: E402
from tests.e2e.test_addon import preview_strips, run_batch  # noqa: E402

pytestmark = pytest.mark.slow


def test_blender_clips_to_a_trained_depth_encoder_to_a_depth_preview(tmp_path, tiny_root):
    scene = build_shot(start=1, end=16, markers=(1, 16), resolution=(640, 360))
    near = scene.objects["near"]
    near.keyframe_insert("location", frame=1)
    near.location.x = -0.4
    near.keyframe_insert("location", frame=16)
    blend = tmp_path / "boxes_in_fog.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))

    # 1. Training clips from the .blend (the add-on's own depth pass).
    args = [str(blend), "--out", str(tmp_path / "clips"), "--frames", "8", "--size", "64", "--cameras", "scene"]
    assert dataset.main(args) == 0
    assert len(list((tmp_path / "clips").iterdir())) == 2  # frames 1-8 and 9-16

    # 2. A depth encoder trained on them (a couple of steps: the plumbing, not the quality).
    (tmp_path / "train.toml").write_text(
        '[model]\nbase = "tiny"\n'
        f'[data]\nclips = "{tmp_path / "clips"}"\nframes = 8\nwidth = 64\nheight = 64\n'
        f'[train]\nsteps = 2\noutput_dir = "{tmp_path / "run"}"\n'
    )
    command = [sys.executable, "-m", "server.train", "--config", str(tmp_path / "train.toml")]
    trained = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stderr[-2000:]
    encoder = tmp_path / "run" / "encoder"

    # 3. The server with it as the depth encoder; 4. the add-on's batch command asks for a depth preview.
    (tmp_path / "server.toml").write_text(
        f'[model]\nbase = "tiny"\n[model.encoders]\ndepth = "{encoder}"\n[generation]\nsteps = 2\n'
    )
    server = ServerProcess(["--config", str(tmp_path / "server.toml")], tiny_root.parent.parent, tmp_path / "log")
    try:
        out = run_batch(
            blend,
            "--server",
            server.url,
            "--modality",
            "depth",
            "--frames",
            "8",
            "--size",
            "64",
            "--prompt",
            "two boxes in fog",
            "--out",
            tmp_path / "out.blend",
        )
        assert out.returncode == 0, out.stderr[-2000:]
    finally:
        server.stop()
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "out.blend"))
    shot = bpy.context.scene
    (strip,) = preview_strips(bpy.data.scenes[f"{shot.name} previs"])  # the previs edit scene, not the shot
    assert not preview_strips(shot)
    meta = json.loads(strip["sparsectrl"])
    assert meta["modality"] == "depth" and (strip.frame_final_start, strip.frame_final_duration) == (1, 16)
