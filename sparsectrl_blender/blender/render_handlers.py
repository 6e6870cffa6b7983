"""Every render, ours and the artist's (F12, a script's bpy.ops.render.render), holds the add-on's render guard,
so the add-on's threads run no Python while Blender renders (core/render_guard.py says why)."""

from __future__ import annotations

import bpy

from ..core.render_guard import GUARD


@bpy.app.handlers.persistent
def _render_pre(*_args) -> None:
    GUARD.begin_render()


@bpy.app.handlers.persistent
def _render_post(*_args) -> None:
    GUARD.end_render()


@bpy.app.handlers.persistent
def _render_cancel(*_args) -> None:
    GUARD.end_all_renders()


HANDLERS = (("render_pre", _render_pre), ("render_post", _render_post), ("render_cancel", _render_cancel))


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
    GUARD.end_all_renders()
