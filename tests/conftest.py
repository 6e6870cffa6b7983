"""Shared fixtures: the tiny random-weight model, built once per test session into real diffusers folders."""

from __future__ import annotations

import atexit
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


_SESSION_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _SESSION_STATUS[:] = [int(exitstatus)]


def _exit_past_bpy() -> None:
    """Registered first, so Python runs it last at exit: once pytest has reported, and when the tests imported
    bpy, leave with pytest's status before the bpy module's C++ static destructors run (4.2.x segfaults, 4.5.x
    hangs there; docs/troubleshooting.md). sparsectrl_blender.core.shutdown does the same for the commands."""
    if "bpy" in sys.modules and _SESSION_STATUS:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(_SESSION_STATUS[0])


atexit.register(_exit_past_bpy)


def server_python() -> str:
    """The interpreter that runs `python -m server` in the tests: SPARSECTRL_SERVER_PYTHON, else this one.

    The add-on suite runs on several bpy versions (.ci/run), each in a venv without torch; their servers (and the
    tiny model they load) come from the main venv named there."""
    return os.environ.get("SPARSECTRL_SERVER_PYTHON") or sys.executable


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sketch(width: int = 64, height: int = 64, shift: int = 0):
    """A white-on-black line drawing (what the line-art encoder expects), different for each `shift`."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(img)
    draw.rectangle((8 + shift, 12, width // 2 + shift, height - 10), outline="white", width=2)
    draw.line((0, height - 6, width, height // 3), fill="white", width=2)
    return img


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models") / "tiny"
    if importlib.util.find_spec("torch") is not None:
        from server.engine.tiny import build_tiny_model

        return build_tiny_model(root)
    if server_python() == sys.executable:
        pytest.skip("the tiny model needs torch: install the server extra or set SPARSECTRL_SERVER_PYTHON")
    code = "import sys, pathlib, server.engine.tiny as t; t.build_tiny_model(pathlib.Path(sys.argv[1]))"
    subprocess.run([server_python(), "-c", code, str(root)], cwd=ROOT, check=True, timeout=300)
    return root


@pytest.fixture(scope="session")
def tiny_config(tiny_root):
    from server.config import load_config

    return load_config(overrides={"model": {"base": "tiny"}, "server": {"data_dir": str(tiny_root.parent.parent)}})


@pytest.fixture(scope="session")
def engine(tiny_config, tiny_root):
    from server.engine.engine import Engine
    from server.engine.models import load_model

    # data_dir/models/tiny is tiny_root, so the session's tiny model is reused, not rebuilt.
    model = load_model(tiny_config.model, tiny_config.data_dir)
    return Engine(model, tiny_config.scheduler, tiny_config.long_video)


@pytest.fixture
def data_dir_with_tiny(tmp_path, tiny_root) -> Path:
    """A fresh data dir that already holds the tiny model (copied: building it again takes seconds)."""
    shutil.copytree(tiny_root, tmp_path / "models" / "tiny")
    return tmp_path
