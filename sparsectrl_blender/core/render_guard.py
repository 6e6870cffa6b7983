"""Keep the add-on's own threads still while Blender renders.

With Blender as a Python module (bpy 4.2 and 5.0 reproduced it), a Python thread that runs Python while the main
thread is inside `bpy.ops.render.render` makes the process segfault after some dozens of renders
(docs/troubleshooting.md). So our threads (the connection check, the job runner) run their Python only in a
segment of this guard, and a render begins only once every thread has stepped aside; a thread then waits out the
render. A render waits at most for one HTTP exchange and one poll interval (0.25 s).

No bpy here: blender/render_handlers.py puts every render (ours and the artist's) inside it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class RenderGuard:
    """Renders and threads' segments exclude each other. A thread sleeps between polls inside its segment and
    steps aside only after waking (pause), then waits with no timeout until the renders are over: a thread that
    woke from a timed wait in the middle of a render would run Python there, and that alone crashed the bpy
    module (measured: tests/addon/test_render_guard.py). Renders nest (our pass render and the render_init
    handler it triggers both begin) and may end on another thread than they began (Blender's render job), so
    they are counted."""

    def __init__(self):
        self._state = threading.Condition()
        self._renders = 0  # renders running
        self._waiting = 0  # renders waiting for the threads to step aside
        self._active = 0  # threads in a segment, not stepped aside

    @property
    def rendering(self) -> bool:
        return self._renders > 0

    def _clear(self) -> bool:
        return self._renders == 0 and self._waiting == 0

    def begin_render(self) -> None:
        """Wait until every thread has stepped aside (at most its current HTTP exchange and poll interval)."""
        with self._state:
            self._waiting += 1
            try:
                self._state.wait_for(lambda: self._active == 0)
            finally:
                self._waiting -= 1
            self._renders += 1

    def end_render(self) -> None:
        """One render ended; an end without a begin (a handler added mid-render) is ignored."""
        with self._state:
            if self._renders == 0:
                return
            self._renders -= 1
            if self._renders == 0:
                self._state.notify_all()

    def end_all_renders(self) -> None:
        """The handlers are gone (the add-on disabled mid-render): the ends may never come, so the threads go on."""
        with self._state:
            self._renders = 0
            self._state.notify_all()

    @contextmanager
    def render(self) -> Iterator[None]:
        self.begin_render()
        try:
            yield
        finally:
            self.end_render()

    @contextmanager
    def thread_segment(self) -> Iterator[None]:
        """A background thread's Python, run only while no render runs or waits."""
        with self._state:
            self._state.wait_for(self._clear)
            self._active += 1
        try:
            yield
        finally:
            with self._state:
                self._active -= 1
                self._state.notify_all()

    def pause(self, seconds: float) -> None:
        """Inside thread_segment: sleep, then step aside for any render that began to wait meanwhile."""
        time.sleep(seconds)
        with self._state:
            if self._clear():
                return
            self._active -= 1
            self._state.notify_all()
            self._state.wait_for(self._clear)  # no timeout: nothing wakes this thread during a render
            self._active += 1


# The add-on's one guard: its renders (through the render handlers) and its threads share it.
GUARD = RenderGuard()
