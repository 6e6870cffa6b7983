"""The Look reference's operators (bpy): add image files, remove one, use the Sequencer's frame as the reference.

Each acts on the sequence's reference (the edit scene the shot's previews go to, made if it is not there yet) or on
the shot's own (`which`). Errors are one readable report, never a traceback."""

from __future__ import annotations

from pathlib import Path

import bpy

WHICH = (
    ("SEQUENCE", "Sequence", "The edit scene's reference, which every shot cut into it inherits"),
    ("SHOT", "Shot", "The shot's own reference, in place of its sequence's"),
)


def look_scene(context, which: str, make: bool = False):
    """The scene whose Look settings `which` names, for the shot the panel works on: the shot itself, or its
    sequence (the scene shown when that is an edit, else the nearest edit; made, when `make`, as Generate would
    make it). None when the sequence does not exist yet."""
    from .look import sequence_of
    from .strips import previs_scene, shot_scene_of

    shot = shot_scene_of(context.scene)
    if which == "SHOT":
        return shot
    if context.scene != shot:
        return context.scene
    props = shot.sparsectrl
    sequence = sequence_of(shot, props.preview_scene)
    if sequence is None and make:
        sequence = previs_scene(shot, props.preview_scene)
    return sequence


def selected_take(context):
    """(the scene, the take) the frame comes from: the active preview strip of the scene shown, or, shown in the
    shot itself, of its sequence; (None, None) when no take is selected."""
    from .strips import PlacementError, active_preview_strip

    try:
        sequence = look_scene(context, "SEQUENCE")
    except PlacementError:
        sequence = None
    for scene in (context.scene, sequence):
        strip = active_preview_strip(scene) if scene is not None else None
        if strip is not None and strip.type == "MOVIE":
            return scene, strip
    return None, None


def _look(context, which: str, make: bool):
    from .strips import PlacementError

    try:
        scene = look_scene(context, which, make)
    except PlacementError as e:
        return None, str(e)
    if scene is None:
        return None, "the shot has no sequence yet: Generate once, or name the Previs scene under Takes"
    if scene.library is not None:
        return None, f"the scene '{scene.name}' is linked from a library and cannot be edited"
    return scene.sparsectrl_look, ""


class SPARSECTRL_OT_reference_add(bpy.types.Operator):
    bl_idname = "sparsectrl.reference_add"
    bl_label = "Add Reference Images"
    bl_description = "Add image files (PNG, JPEG, WebP) to the Look reference: a character sheet's views, a style"
    bl_options = {"REGISTER", "UNDO"}

    which: bpy.props.EnumProperty(items=WHICH, default="SEQUENCE", options={"SKIP_SAVE"})
    filepath: bpy.props.StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})
    directory: bpy.props.StringProperty(subtype="DIR_PATH", options={"SKIP_SAVE"})
    files: bpy.props.CollectionProperty(type=bpy.types.OperatorFileListElement, options={"SKIP_SAVE"})
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})
    filter_folder: bpy.props.BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        from ..core.reference import MAX_IMAGES, LookReferenceError, read_image
        from .look import stored_path

        paths = [Path(self.directory) / f.name for f in self.files if f.name] if self.directory else []
        paths = paths or ([Path(bpy.path.abspath(self.filepath))] if self.filepath else [])
        if not paths:
            return _fail(self, "choose one or more image files")
        for path in paths:
            try:
                read_image(path)
            except LookReferenceError as e:
                return _fail(self, str(e))
        look, why = _look(context, self.which, make=True)
        if look is None:
            return _fail(self, why)
        if len(look.images) + len(paths) > MAX_IMAGES:
            return _fail(self, f"the Look reference takes at most {MAX_IMAGES} images (it has {len(look.images)})")
        for path in paths:
            look.images.add().filepath = stored_path(path)
        look.active_index = len(look.images) - 1
        if self.which == "SHOT":
            look.own = True
        return {"FINISHED"}


class SPARSECTRL_OT_reference_remove(bpy.types.Operator):
    bl_idname = "sparsectrl.reference_remove"
    bl_label = "Remove Reference Image"
    bl_description = "Remove this image from the Look reference (the file stays)"
    bl_options = {"REGISTER", "UNDO"}

    which: bpy.props.EnumProperty(items=WHICH, default="SEQUENCE", options={"SKIP_SAVE"})
    index: bpy.props.IntProperty(default=-1, options={"SKIP_SAVE"})

    def execute(self, context):
        look, why = _look(context, self.which, make=False)
        if look is None:
            return _fail(self, why)
        index = self.index if self.index >= 0 else look.active_index
        if not 0 <= index < len(look.images):
            return _fail(self, "no reference image to remove there")
        look.images.remove(index)
        look.active_index = min(look.active_index, len(look.images) - 1)
        return {"FINISHED"}


class SPARSECTRL_OT_reference_from_frame(bpy.types.Operator):
    bl_idname = "sparsectrl.reference_from_frame"
    bl_label = "Use This Frame as the Reference"
    bl_description = (
        "The current frame of the selected take on the Sequencer, written as a PNG beside the add-on's videos, "
        "becomes the Look reference (the take's file is only read)"
    )
    bl_options = {"REGISTER", "UNDO"}

    which: bpy.props.EnumProperty(items=WHICH, default="SEQUENCE", options={"SKIP_SAVE"})
    add: bpy.props.BoolProperty(
        name="Add", description="Add it to the images there instead of replacing them", options={"SKIP_SAVE"}
    )

    def execute(self, context):
        from ..core.reference import MAX_IMAGES, LookReferenceError
        from .look import frame_path, grab_frame, stored_path

        scene, strip = selected_take(context)
        if strip is None:
            return _fail(self, "select a take first: click a preview strip on the sequence's Sequencer")
        look, why = _look(context, self.which, make=False)
        if look is None:
            return _fail(self, why)
        if self.add and len(look.images) >= MAX_IMAGES:
            return _fail(self, f"the Look reference takes at most {MAX_IMAGES} images")
        frame = scene.frame_current
        try:
            path = grab_frame(strip, frame, frame_path(strip, frame))
        except (LookReferenceError, RuntimeError, OSError) as e:
            return _fail(self, f"cannot use frame {frame} of '{strip.name}': {e}")
        if not self.add:
            look.images.clear()
        look.images.add().filepath = stored_path(path)
        look.active_index = len(look.images) - 1
        if self.which == "SHOT":
            look.own = True
        self.report({"INFO"}, f"frame {frame} of '{strip.name}' is the Look reference ({path.name})")
        return {"FINISHED"}


def _fail(operator, message: str):
    from .operators import STATUS

    STATUS.say(message, error=True)
    operator.report({"ERROR"}, message)
    return {"CANCELLED"}


CLASSES = (SPARSECTRL_OT_reference_add, SPARSECTRL_OT_reference_remove, SPARSECTRL_OT_reference_from_frame)
