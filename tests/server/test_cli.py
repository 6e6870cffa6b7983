"""`python -m server generate`: one clip without HTTP, for scripts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from server.video.encode import read_video
from tests.conftest import ROOT, sketch

pytestmark = pytest.mark.slow


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_generate_writes_the_clip_and_frames(data_dir_with_tiny, tmp_path):
    sketch().save(tmp_path / "a.png")
    sketch(shift=10).save(tmp_path / "b.png")
    out = run(
        "generate",
        "--model",
        "tiny",
        "--data-dir",
        str(data_dir_with_tiny),
        "--modality",
        "lineart",
        "--keyframe",
        f"0:{tmp_path / 'a.png'}",
        "--keyframe",
        f"7:{tmp_path / 'b.png'}",
        "--keyframe",  # an RGB look beside the line art (the tiny model has both encoders)
        f"rgb:0:{tmp_path / 'b.png'}",
        "--frames",
        "8",
        "--prompt",
        "a ball",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "clip.mp4"),
        "--frames-dir",
        str(tmp_path / "frames"),
        "--reference",  # a look (the tiny model's IP-Adapter), two views
        str(tmp_path / "a.png"),
        "--reference",
        str(tmp_path / "b.png"),
        "--reference-strength",
        "0.5",
    )
    assert out.returncode == 0, out.stderr
    assert "seed 3" in out.stdout
    frames, fps = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (8, 64, 64, 3) and fps == 8  # size and fps: the tiny defaults of defaults.toml
    assert len(list((tmp_path / "frames").glob("*.png"))) == 8


def test_generate_from_a_config_file(tiny_root, tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(
        f'[model]\nbase = "{tiny_root / "base"}"\nmotion_adapter = "{tiny_root / "motion_adapter"}"\n'
        f'[model.encoders]\nrgb = "{tiny_root / "encoders" / "rgb"}"\n'
        "[generation]\nwidth = 80\nheight = 64\nsteps = 2\nfps = 10\n"
    )
    sketch().save(tmp_path / "a.png")
    out = run(
        "generate",
        "--config",
        str(config),
        "--data-dir",
        str(tmp_path),
        "--modality",
        "rgb",
        "--keyframe",
        f"0:{tmp_path / 'a.png'}",
        "--frames",
        "4",
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "clip.mp4"),
    )
    assert out.returncode == 0, out.stderr
    frames, fps = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (4, 64, 80, 3) and fps == 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/sd15"], "base model: /nonexistent/sd15: no such file or folder"),
        (["--model", "tiny", "--modality", "lineart", "--frames", "4"], "keyframe index 9 is outside 0..3"),
        (["--model", "tiny", "--keyframe", "x:y.png"], "--keyframe takes INDEX:IMAGE"),
        (["--model", "tiny", "--keyframe", "rgb:y.png"], "--keyframe takes INDEX:IMAGE or MODALITY:INDEX:IMAGE"),
        (["--model", "tiny", "--reference", "/nonexistent/knight.png"], "cannot read reference image"),
        (["--model", "tiny", "--reference", "docs/queue-page.png", "--reference-strength", "3"], "reference.strength"),
    ],
)
def test_generate_errors_are_one_line(data_dir_with_tiny, tmp_path, args, message):
    sketch().save(tmp_path / "a.png")
    base = [
        "generate",
        "--data-dir",
        str(data_dir_with_tiny),
        "--modality",
        "lineart",
        "--prompt",
        "x",
        "--out",
        str(tmp_path / "c.mp4"),
        "--keyframe",
        f"9:{tmp_path / 'a.png'}",
    ]
    out = run(*base, *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
