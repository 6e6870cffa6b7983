"""The render guard: the add-on's threads run no Python while Blender renders (core/render_guard.py).

Found on the bpy module: a Python thread running Python while the main thread renders our passes segfaults the
process. Measured while writing this (bpy 5.0.1, 20 line-art Generates of 4 keyframes at 128×72, a thread
looping over small Python work): exit 139 in 3 of 5 runs without a guard; 2 of 5 with a plain lock let go around
the thread's sleeps (the thread woke mid-render); 0 of 8 with this guard, and this file passed 5 runs in a row."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from sparsectrl_blender.core.render_guard import RenderGuard
from tests.conftest import ROOT


def _started(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_a_render_waits_for_a_threads_segment_and_the_thread_waits_out_the_render():
    guard, events = RenderGuard(), []
    in_segment, leave = threading.Event(), threading.Event()

    def segment():
        with guard.thread_segment():
            in_segment.set()
            leave.wait(5)
            events.append("segment ends")
            guard.pause(0.05)  # a render starts here
            events.append("segment again")

    thread = _started(segment)
    in_segment.wait(5)
    render = _started(lambda: (guard.begin_render(), events.append("render begins")))
    time.sleep(0.1)
    assert events == []  # the render is held while the thread runs Python
    leave.set()
    render.join(5)
    time.sleep(0.2)  # the thread's pause is over: it still waits for the render
    assert events == ["segment ends", "render begins"] and guard.rendering
    guard.end_render()
    thread.join(5)
    assert events[-1] == "segment again" and not guard.rendering


def _segment_runs(guard: RenderGuard) -> threading.Event:
    """A thread that enters a segment and says so."""
    ran = threading.Event()

    def segment():
        with guard.thread_segment():
            ran.set()

    _started(segment)
    return ran


def test_nested_renders_hold_the_threads_until_the_last_ends_and_unregistering_frees_them():
    guard = RenderGuard()
    guard.begin_render()  # our pass render
    guard.begin_render()  # the render_init handler it triggers
    ran = _segment_runs(guard)
    guard.end_render()  # render_complete
    assert not ran.wait(0.2)
    guard.end_render()  # our render returns
    assert ran.wait(5)
    guard.end_render()  # an end without a begin (a handler added mid-render) changes nothing
    assert not guard.rendering

    guard = RenderGuard()
    guard.begin_render()  # a render job begun under the handlers, and the add-on disabled meanwhile
    ran = _segment_runs(guard)
    assert not ran.wait(0.2)
    guard.end_all_renders()
    assert ran.wait(5)


# The add-on registered, a thread doing small Python work in the guard (as the job runner does: segments,
# pauses between them), while the main thread runs 20 Generates' passes (80 renders through the compositor's
# File Output), then 10 plain bpy.ops.render.render calls, as an artist's script would (held only by the
# render handlers), and one that fails (no camera). Test handlers placed around ours record each render's
# span; no thread iteration may fall inside one.
_SESSION = r"""
import json, os, threading, time
import bpy
import sparsectrl_blender
from sparsectrl_blender.core.render_guard import GUARD
from sparsectrl_blender.blender.generation import prepare
from sparsectrl_blender.core.request import GenerationSettings
from tests.addon.scenes import build_shot

scene = build_shot(start=101, end=132, markers=(101, 110, 120, 132), resolution=(128, 72))
sparsectrl_blender.register()
spans, ticks, stop = [], [], threading.Event()
bpy.app.handlers.render_init.append(lambda *a: spans.append([time.monotonic(), None]))  # after ours begins
for name in ("render_complete", "render_cancel"):  # before ours end
    getattr(bpy.app.handlers, name).insert(0, lambda *a: spans[-1].__setitem__(1, time.monotonic()))

def work():
    with GUARD.thread_segment():
        while not stop.is_set():
            ticks.append(time.monotonic())
            [i * i for i in range(200)]
            b"abcdef:ghij".index(b":")
            GUARD.pause(0.0005)

thread = threading.Thread(target=work, daemon=True)
thread.start()
settings = GenerationSettings(prompt="x", modality="lineart", size=128)
for _ in range(20):
    prepare(scene, settings)
passes_ticks = len(ticks)
scene.render.engine, scene.cycles.samples = "CYCLES", 1
for _ in range(10):
    bpy.ops.render.render()
camera, scene.camera = scene.camera, None
try:
    bpy.ops.render.render()  # fails (no camera): render_cancel ends it
except RuntimeError:
    pass
before_failed = len(ticks)
time.sleep(0.3)
after_failed = len(ticks) - before_failed
stop.set()
thread.join(10)
inside = sum(1 for t in ticks for a, b in spans if b is not None and a < t < b)
print("RESULT", json.dumps({"renders": len(spans), "open": sum(b is None for _, b in spans),
      "ticks": len(ticks), "passes_ticks": passes_ticks, "inside": inside, "alive": thread.is_alive(),
      "after_failed": after_failed}), flush=True)
sparsectrl_blender.unregister()
os._exit(0)
"""


@pytest.mark.slow
def test_blender_survives_a_thread_running_python_across_a_hundred_renders():
    pytest.importorskip("bpy")
    out = subprocess.run([sys.executable, "-c", _SESSION], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"exit status {out.returncode}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    line = next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["renders"] == 91 and result["open"] == 0  # the failed render's span ends at render_cancel
    assert result["inside"] == 0  # the thread never ran during a render, ours or the script's
    assert result["passes_ticks"] > 0 and result["ticks"] > result["passes_ticks"]  # it ran between them
    assert result["after_failed"] > 0  # a failed render lets the thread go on
    assert not result["alive"]
