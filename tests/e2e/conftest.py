from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest

from tests.conftest import png_bytes, sketch
from tests.e2e.server_process import ServerProcess


@pytest.fixture
def addon():
    """The add-on registered in this Blender (bpy as a module) for one test: its operators module, the status
    reset after."""
    import sparsectrl_blender

    sparsectrl_blender.register()
    ops = sys.modules["sparsectrl_blender.blender.operators"]
    yield ops
    sparsectrl_blender.unregister()
    ops.STATUS.__init__()


def keyframe(index: int, shift: int = 0) -> dict:
    return {"index": index, "image": base64.b64encode(png_bytes(sketch(shift=shift))).decode()}


def finished(server, body: dict) -> dict:
    """POST `body`, wait for the job; it must succeed."""
    r = server.client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = server.wait_for(r.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def job_body(**changes) -> dict:
    body = {
        "prompt": "a ball rolling",
        "modality": "lineart",
        "num_frames": 16,
        "width": 64,
        "height": 64,
        "steps": 6,
        "seed": 7,
        "keyframes": [keyframe(0), keyframe(15, shift=10)],
    }
    body.update(changes)
    return body


@pytest.fixture(scope="module")
def configured_server(tmp_path_factory, tiny_root):
    """A server on diffusers folders named in a TOML config (the real-weights path), without a depth encoder."""
    folder: Path = tmp_path_factory.mktemp("configured")
    config = folder / "server.toml"
    config.write_text(
        f"[server]\nmax_body_mb = 1\n"
        f'[model]\nname = "sd15-test"\nbase = "{tiny_root / "base"}"\n'
        f'motion_adapter = "{tiny_root / "motion_adapter"}"\n'
        f'[model.encoders]\nlineart = "{tiny_root / "encoders" / "lineart"}"\n'
        f'rgb = "{tiny_root / "encoders" / "rgb"}"\n'
        f"[generation]\nwidth = 64\nheight = 64\nsteps = 4\n"
    )
    server = ServerProcess(["--config", str(config)], folder / "data", folder / "server.log")
    yield server
    server.stop()
