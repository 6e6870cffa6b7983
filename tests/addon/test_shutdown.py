"""Blender processes end, promptly and with the right status, on every bpy in the matrix (4.2 LTS to 5.x).

Found on the bpy module (docs/troubleshooting.md): 4.2.x segfaults at exit once a PropertyGroup with a Python
method was registered (even after unregister_class) or while a bpy.app.timers function is registered; 4.5.x
hangs for ever in the same states. The add-on avoids them (its PropertyGroup has no methods; every timer
registration is removed on unregister), and the commands end through sparsectrl_blender.core.shutdown.exit_process,
which exits with their status whatever the bpy module would do after.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytest.importorskip("bpy")

EXIT_BOUND_SECONDS = 60  # a Blender process that has not ended by then has hung

# A panel session without UI: enable, check the connection, generate twice (the timers the panel uses are
# registered; without an event loop they never fire), disable; then a plain interpreter exit, no os._exit.
_ADDON_SESSION = r"""
import socket, sys
import bpy
import sparsectrl_blender
from tests.addon.scenes import build_shot

sparsectrl_blender.register()
ops = sys.modules["sparsectrl_blender.blender.operators"]
build_shot(start=1, end=8, markers=(1, 8), resolution=(64, 64))
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
props = bpy.context.scene.sparsectrl
props.server_url, props.prompt, props.size, props.steps = dead, "x", 64, 1
bpy.ops.sparsectrl.check_connection()
for _ in range(2):
    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    ops.run_timers(60)  # what the event loop would do; the timers themselves stay registered
    print("MESSAGE", ops.STATUS.message, flush=True)
sparsectrl_blender.unregister()
print("TIMERS LEFT", [bpy.app.timers.is_registered(t) for t in ops.TIMERS], flush=True)
print("END", flush=True)
"""

# What a command's process may leave behind in the worst case: the two states the bpy module fails on.
_COMMAND = r"""
import sys
import bpy
from sparsectrl_blender.core.shutdown import exit_process

class WithMethod(bpy.types.PropertyGroup):
    value: bpy.props.IntProperty()

    def describe(self):
        return str(self.value)

bpy.utils.register_class(WithMethod)
bpy.app.timers.register(lambda: None, first_interval=100)
print("REPORT written", flush=True)
sys.stdout.write("UNFLUSHED tail")
exit_process(int(sys.argv[1]))
"""


def _run(code: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=EXIT_BOUND_SECONDS,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the Blender process did not exit within {EXIT_BOUND_SECONDS} s:\n{e.stdout}\n{e.stderr}")
    return out, time.monotonic() - start


def test_an_addon_session_exits_cleanly_with_a_plain_exit():
    out, _ = _run(_ADDON_SESSION)
    assert out.returncode == 0, f"exit status {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    assert out.stdout.count("MESSAGE cannot reach the server") == 2, out.stdout[-2000:]
    assert "TIMERS LEFT [False, False, False]" in out.stdout and "END" in out.stdout


@pytest.mark.parametrize("status", [0, 3])
def test_a_command_exits_with_its_status_whatever_bpy_was_left_holding(status):
    out, seconds = _run(_COMMAND, str(status))
    assert out.returncode == status, f"exit status {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    assert "REPORT written" in out.stdout and out.stdout.endswith("UNFLUSHED tail")
    assert seconds < 30
