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


def _box(name: str, size, location, collection):
    import bmesh
    import bpy

    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bmesh.ops.scale(bm, vec=size, verts=bm.verts)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    obj.location = location
    return obj


def build_real_file(tmp_dir, start: int = 101, end: int = 160, markers=(101, 130, 160)):
    """A shot with the traits of real files at once: start frame 101, 29.97 fps (30000/1001), non-square pixels
    (anamorphic 1440x1080 at 4:3 pixel aspect), two cameras bound to markers, Sequencer post-processing on,
    a second scene ('Other', active when saved: `--scene` picks the shot), a material with a missing texture and
    a missing linked library. Returns the shot scene (named 'Shot')."""
    import bpy

    scene = build_shot(start=start, end=end, markers=markers, resolution=(1440, 1080))
    scene.name = "Shot"
    r = scene.render
    r.fps, r.fps_base = 30000, 1001
    r.pixel_aspect_x, r.pixel_aspect_y = 4.0, 3.0
    r.use_sequencer = True
    r.use_compositing = True
    cam2 = bpy.data.objects.new("Camera.side", bpy.data.cameras.new("Camera.side"))
    scene.collection.objects.link(cam2)
    cam2.location = (0.5, 0, 0)
    cam2.rotation_euler = (math.pi / 2, 0, 0)
    for marker in scene.timeline_markers:
        marker.camera = scene.camera if marker.frame < markers[-1] else cam2
    # A material whose image texture is not on disk.
    mat = bpy.data.materials.new("Painted")
    if mat.node_tree is None:  # 4.x; 5.x materials always have nodes (use_nodes is deprecated)
        mat.use_nodes = True
    tex = mat.node_tree.nodes.new("ShaderNodeTexImage")
    image = bpy.data.images.new("missing_texture", 4, 4)
    image.source = "FILE"
    image.filepath = str(tmp_dir / "textures" / "missing.png")
    tex.image = image
    mat.node_tree.links.new(tex.outputs["Color"], mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"])
    scene.objects["near"].data.materials.append(mat)
    # A library that is not there any more (as in a shot moved without its linked assets).
    lib_path = tmp_dir / "assets_lib.blend"
    lib_scene = bpy.data.scenes.new("lib")
    _box("linked_prop", (1, 1, 1), (0, 8, 0), lib_scene.collection)
    bpy.data.libraries.write(str(lib_path), {lib_scene.objects["linked_prop"]})
    with bpy.data.libraries.load(str(lib_path), link=True) as (src, dst):
        dst.objects = ["linked_prop"]
    scene.collection.objects.link(dst.objects[0])
    bpy.data.scenes.remove(lib_scene)
    other = bpy.data.scenes.new("Other")
    other.frame_start, other.frame_end = 1, 10
    return scene


def save_real_file(path, tmp_dir, active: str = "Other", **kwargs):
    """build_real_file, saved with `active` as the window's scene, the library file then deleted."""
    import os

    import bpy

    scene = build_real_file(tmp_dir, **kwargs)
    lib = bpy.data.libraries[0].filepath
    if bpy.context.window is not None:
        bpy.context.window.scene = bpy.data.scenes[active]
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    os.remove(bpy.path.abspath(lib))
    return scene


def build_lineart_stage(resolution=(512, 288)):
    """Line-art test stage: a 400 m floor seen at a grazing angle from 1.6 m up (out to the horizon), a wall
    8 m away on the right with a 0.9 m sign 3 cm in front of it, a flat text object ('PREVIS', no extrusion)
    2 cm in front of a backdrop board on the left, and a 0.6 m cube on the floor in the middle."""
    import bpy

    scene = build_shot(markers=(1,), resolution=resolution)
    for name in ("near", "far"):
        bpy.data.objects.remove(scene.objects[name])
    cam = scene.camera
    cam.location = (0, 0, 1.6)
    cam.rotation_euler = (math.radians(84), 0, 0)  # 6 degrees below the horizon
    col = scene.collection
    _box("floor", (400, 400, 0.02), (0, 200, -0.01), col)
    _box("wall", (1.6, 0.2, 2.4), (1.2, 8.1, 1.2), col)
    _box("sign", (0.9, 0.01, 0.5), (1.2, 7.97, 1.5), col)  # 3 cm in front of the wall's face at y=8.0
    _box("backdrop", (1.5, 0.05, 1.0), (-1.2, 6.0, 1.3), col)
    font = bpy.data.curves.new("title", "FONT")
    font.body = "PREVIS"
    font.size = 0.35
    font.extrude = 0.0
    font.align_x, font.align_y = "CENTER", "CENTER"
    text = bpy.data.objects.new("title", font)
    col.objects.link(text)
    text.location = (-1.2, 5.955, 1.3)  # 2 cm in front of the backdrop's face at y=5.975
    text.rotation_euler = (math.pi / 2, 0, 0)
    _box("cube", (0.6, 0.6, 0.6), (0.1, 5.0, 0.3), col)
    return scene


ROOM = {"x": 3.0, "y": 8.0, "z": 3.0}  # the bevelled room: x from -3 to 3 m, y from 0 to 8 m, z from 0 to 3 m
ROOM_BEVEL = 0.05


def build_bevelled_room(resolution=(512, 288)):
    """Line-art test room (#31), as modelled rooms often are: one smooth-shaded mesh, a floor and three walls
    (no ceiling, open towards the camera), every corner bevelled 5 cm in 3 segments (30 degrees a step, under
    line art's 35). The camera stands 1.6 m up near the open side, a 24 mm lens looking along +Y, 8 degrees
    down: the floor runs away at a grazing angle to the back wall; both back corners and the side walls show."""
    import bmesh
    import bpy

    scene = build_shot(markers=(1,), resolution=resolution)
    for name in ("near", "far"):
        bpy.data.objects.remove(scene.objects[name])
    cam = scene.camera
    cam.location = (0, 0.5, 1.6)
    cam.rotation_euler = (math.radians(82), 0, 0)
    cam.data.lens = 24
    mesh = bpy.data.meshes.new("room")
    bm = bmesh.new()
    bmesh.ops.create_cube(bm, size=1.0)
    bmesh.ops.scale(bm, vec=(2 * ROOM["x"], ROOM["y"], ROOM["z"]), verts=bm.verts)
    bmesh.ops.translate(bm, vec=(0, ROOM["y"] / 2, ROOM["z"] / 2), verts=bm.verts)
    open_sides = [f for f in bm.faces if f.normal.z > 0.5 or f.normal.y < -0.5]  # ceiling, front
    bmesh.ops.delete(bm, geom=open_sides, context="FACES_ONLY")
    corners = [e for e in bm.edges if len(e.link_faces) == 2]
    bmesh.ops.bevel(bm, geom=corners, offset=ROOM_BEVEL, segments=3, profile=0.5, affect="EDGES")
    for face in bm.faces:
        face.smooth = True
    bm.to_mesh(mesh)
    bm.free()
    room = bpy.data.objects.new("room", mesh)
    scene.collection.objects.link(room)
    return scene
