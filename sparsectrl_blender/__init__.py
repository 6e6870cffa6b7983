"""SparseCtrl previs: render passes at keyframes, send them to the SparseCtrl server, get the preview strip.

Two folders, as glTF-Blender-IO keeps blender/ and io/ apart: blender/ holds what talks to bpy (properties,
look, look_operators, operators, panels, preferences, passes, render_handlers, live_preview, strips, scene_keyframes,
generation); core/ the logic that imports no bpy (client, exr, frame_mapping, job, png, reference, render_guard,
request, shutdown), tested without
Blender (tests/test_architecture.py imports each with bpy absent). The commands at the top (batch, dataset,
build, bench_passes) use both. The pass contract shared with the server is the sparsectrl_passes package,
shipped as a wheel in the extension zip. bpy is imported only inside register()/unregister() here, so this
package imports anywhere.
"""

import atexit


def _modules():
    from .blender import look, look_operators, operators, panels, preferences, properties

    return preferences, properties, look, operators, look_operators, panels


def register() -> None:
    import bpy

    from .blender import live_preview, render_handlers

    preferences, properties, look, operators, look_operators, panels = _modules()
    for module in (preferences, properties, look, operators, look_operators, panels):
        for cls in module.CLASSES:
            bpy.utils.register_class(cls)
    properties.register()
    look.register()
    render_handlers.register()
    live_preview.register()
    operators.register_handlers()
    atexit.register(operators.cancel_on_quit)  # quitting Blender cancels the job it was waiting on


def unregister() -> None:
    import bpy

    from .blender import live_preview, render_handlers

    preferences, properties, look, operators, look_operators, panels = _modules()
    atexit.unregister(operators.cancel_on_quit)
    operators.unregister_handlers()
    operators.unregister_timers()
    live_preview.unregister()
    render_handlers.unregister()
    look.unregister()
    properties.unregister()
    for module in (panels, look_operators, operators, look, properties, preferences):
        for cls in reversed(module.CLASSES):
            bpy.utils.unregister_class(cls)
