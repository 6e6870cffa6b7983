"""`python -m server models` and `python -m server download`, as processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.original_layout import write_original_files


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_models_reports_found_missing_and_unusable_without_loading(tiny_root, tmp_path):
    originals = write_original_files(tiny_root, tmp_path / "files")
    shutil.copy(originals["motion_module"], tmp_path / "files" / "not_a_model.safetensors")  # wrong format
    (tmp_path / "server.toml").write_text(
        f'[model]\nbase = "{originals["sd15"]}"\nmotion_adapter = "v3_sd15_mm.ckpt"\n'
        'draft_motion_adapter = "AnimateLCM_sd15_t2v.ckpt"\n'
        f'[model.encoders]\nrgb = "{originals["sparsectrl_rgb"]}"\nlineart = "{tiny_root / "encoders" / "lineart"}"\n'
        f'depth = "{originals["sd15"]}"\n'
        '[model.controlnets]\ndepth = "control_v11f1p_sd15_depth.pth"\n'
        f'wrong = "{originals["sparsectrl_rgb"]}"\n'
        f'[model.search]\nfolders = ["{tmp_path / "files"}"]\n'
    )
    out = run("models", "--config", str(tmp_path / "server.toml"), "--json", "--deep")
    assert out.returncode == 1, out.stderr  # something is missing or unusable
    entries = {(e["role"], e["name"]): e for e in json.loads(out.stdout)}
    assert entries[("base", "base")]["loadable"] is True and entries[("base", "base")]["format"] == ".safetensors"
    assert entries[("motion_adapter", "motion_adapter")]["source"] == "search"
    assert entries[("motion_adapter", "motion_adapter")]["loadable"] is True
    assert entries[("draft_motion_adapter", "draft_motion_adapter")]["found"] is False
    assert "not found; looked in" in entries[("draft_motion_adapter", "draft_motion_adapter")]["detail"]
    assert entries[("encoder", "rgb")]["condition_input"] == "latents"
    assert entries[("encoder", "lineart")]["condition_input"] == "pixels"
    assert entries[("encoder", "lineart")]["format"] == "diffusers folder"
    depth = entries[("encoder", "depth")]
    assert depth["loadable"] is False and depth["detail"] == "holds sd15, expected sparsectrl"
    controlnet = entries[("controlnet", "depth")]  # found by file name in the model folders
    assert controlnet["loadable"] is True and controlnet["source"] == "search" and controlnet["format"] == ".pth"
    assert entries[("controlnet", "wrong")]["detail"] == "holds sparsectrl, expected controlnet"

    table = run("models", "--config", str(tmp_path / "server.toml"))
    assert "UNUSABLE" in table.stdout and "missing" in table.stdout and table.returncode == 1


def test_download_offline_says_so_and_exits_2(tmp_path):
    out = run("download", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
    assert out.returncode == 2 and "offline (HF_HUB_OFFLINE is set)" in out.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_download_without_a_network_fails_clearly(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    out = run("download", "sparsectrl-rgb", env=env)
    assert out.returncode == 2
    assert "could not download guoyww/animatediff-sparsectrl-rgb" in out.stdout and "resume" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_download_lists_and_refuses_unknown_names():
    listing = run("download", "--list")
    assert listing.returncode == 0 and "guoyww/animatediff-sparsectrl-rgb" in listing.stdout
    unknown = run("download", "sdxl")
    assert unknown.returncode == 2 and "unknown download sdxl" in unknown.stdout


def test_download_fetches_the_depth_controlnet_on_request_only(monkeypatch):
    """The hub is the edge we cannot reach: snapshot_download is recorded, not run. The depth ControlNet is
    fetched when named (#16), never by a plain `download`; the listing gives the config line that uses it."""
    from server.weights import download as downloads

    fetched = []
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda repo, allow_patterns: fetched.append(repo))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    said = []
    assert downloads.download(["controlnet-depth"], say=said.append) == 0
    assert fetched == ["lllyasviel/control_v11f1p_sd15_depth"]
    assert downloads.DOWNLOADS["controlnet-depth"].files == ("config.json", "diffusion_pytorch_model.safetensors")
    assert 'controlnets.depth = "lllyasviel/control_v11f1p_sd15_depth"' in "\n".join(said)
    fetched.clear()
    assert downloads.download([], say=said.append) == 0
    assert "lllyasviel/control_v11f1p_sd15_depth" not in fetched and len(fetched) == 4
    assert "   controlnet-depth" in downloads.describe()  # listed, not starred
