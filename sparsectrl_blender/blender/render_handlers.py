"""Every render, ours and the artist's (F12, a script's bpy.ops.render.render), holds the add-on's render guard,
so the add-on's threads run no Python while Blender renders (core/render_guard.py says why).

A render job is render_init, then render_pre/render_post per frame, render_write after each file is written
(after render_post), and render_complete or render_cancel (also when it fails: no camera). Seen on bpy 4.2 and
5.0. So the guard is held from render_init to render_complete/render_cancel: the file writes are inside it."""

from __future__ import annotations

import bpy

from ..core.render_guard import GUARD


@bpy.app.handlers.persistent
def _render_init(*_args) -> None:
    GUARD.begin_render()


@bpy.app.handlers.persistent
def _render_end(*_args) -> None:
    GUARD.end_render()


HANDLERS = (("render_init", _render_init), ("render_complete", _render_end), ("render_cancel", _render_end))


def register() -> None:
    for name, handler in HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if handler not in handlers:
            handlers.append(handler)


def unregister() -> None:
    for name, handler in HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        while handler in handlers:
            handlers.remove(handler)
    GUARD.end_all_renders()  # a render begun under the handlers ends without them now
