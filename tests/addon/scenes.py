"""Scenes built in the tests with bpy: a camera looking down -Y... at cubes at known distances, and markers."""

from __future__ import annotations

import math


def build_shot(start: int = 1, end: int = 48, markers=(1, 24, 48), resolution=(1920, 1080)):
    """Reset Blender to an empty file and build the test shot in it. Returns the scene.

    The camera sits at the origin looking along +Y; a 2 m cube 'near' stands 4 m in front of it (left) and a
    3 m cube 'far' 12 m in front (right), so depth, silhouettes and shading are known.
    """
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = start, end
    scene.render.resolution_x, scene.render.resolution_y = resolution
    scene.render.fps = 24
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(cam)
    cam.rotation_euler = (math.pi / 2, 0, 0)  # looking along +Y
    scene.camera = cam
    for name, x, y, size in (("near", -1.2, 4.0, 2.0), ("far", 2.5, 12.0, 3.0)):
        mesh = bpy.data.meshes.new(name)
        obj = bpy.data.objects.new(name, mesh)
        scene.collection.objects.link(obj)
        import bmesh

        bm = bmesh.new()
        bmesh.ops.create_cube(bm, size=size)
        bm.to_mesh(mesh)
        bm.free()
        obj.location = (x, y, 0)
    for frame in markers:
        scene.timeline_markers.new(f"F_{frame:02d}", frame=frame)
    return scene
