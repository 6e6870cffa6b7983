"""SparseCtrl previs: render passes at keyframes, send them to the SparseCtrl server, get the preview strip.

Blender-facing modules (properties, operators, panels, passes.render, strips, batch) import bpy; the logic
(frame_mapping, request, client, png, passes.process) does not, so it is tested without Blender. bpy is
imported only inside register()/unregister() here, so those modules import anywhere.
"""


def _modules():
    from . import operators, panels, preferences, properties

    return preferences, properties, operators, panels


def register() -> None:
    import bpy

    preferences, properties, operators, panels = _modules()
    for module in (preferences, properties, operators, panels):
        for cls in module.CLASSES:
            bpy.utils.register_class(cls)
    properties.register()


def unregister() -> None:
    import bpy

    preferences, properties, operators, panels = _modules()
    operators.unregister_timers()
    properties.unregister()
    for module in (panels, operators, properties, preferences):
        for cls in reversed(module.CLASSES):
            bpy.utils.unregister_class(cls)
