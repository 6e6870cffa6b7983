"""The Look reference in Blender (bpy): its settings on scenes, which one a shot uses, and a take's frame as one.

A sequence's reference lives on its edit scene (the previs scene the shots' previews go to, or an edit of the
artist's that cuts several shots in): every shot cut into it inherits it. A shot may have its own (Own reference
on the shot scene), which replaces the sequence's; an own reference without images is "none for this shot".
The settings are read from the scenes' saved ID properties, so the batch finds them with the add-on not enabled.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy
from bpy.props import BoolProperty, CollectionProperty, FloatProperty, IntProperty, StringProperty

from ..core.reference import STRENGTH_RANGE, LookReference, LookReferenceError, frame_file_name
from .properties import fraction_of_steps

LOOK_PROP = "sparsectrl_look"  # the PropertyGroup's name on every scene
_DEFAULTS = LookReference()


def _relative_path_options() -> set[str]:
    """A file path property that may be "//" relative: Blender 5.x asks for the option (its properties say
    is_path_supports_blend_relative), which 4.x does not know (it refuses the class)."""
    if "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties.keys():
        return {"PATH_SUPPORTS_BLEND_RELATIVE"}
    return set()


class SparseCtrlReferenceImage(bpy.types.PropertyGroup):
    filepath: StringProperty(
        name="Image",
        subtype="FILE_PATH",
        options=_relative_path_options(),
        description="A reference image (PNG, JPEG or WebP); // is beside the .blend",
    )


class SparseCtrlLook(bpy.types.PropertyGroup):
    own: BoolProperty(
        name="Own reference",
        description=(
            "On a shot: this shot's own Look reference replaces its sequence's (with no images: none for this shot)"
        ),
    )
    images: CollectionProperty(type=SparseCtrlReferenceImage)
    active_index: IntProperty()
    strength: FloatProperty(
        name="Strength",
        default=_DEFAULTS.strength,
        min=STRENGTH_RANGE[0],
        max=STRENGTH_RANGE[1],
        description="The IP-Adapter's scale: how strongly the reference's character and style steer (0: not sent)",
    )
    guidance_start: fraction_of_steps(_DEFAULTS.guidance_start, "Start", "before the reference starts to steer")
    guidance_end: fraction_of_steps(_DEFAULTS.guidance_end, "End", "after which the reference stops steering")
    # No methods here (properties.py says why).


def _saved(scene) -> dict:
    """The scene's saved Look settings as a plain dict ({} when never set); readable with the add-on off."""
    system = getattr(scene, "bl_system_properties_get", None)  # Blender 5.0 keeps bpy.props values there
    container = system() if system is not None else scene
    saved = container.get(LOOK_PROP) if container is not None else None
    return saved.to_dict() if hasattr(saved, "to_dict") else {}


def look_of(scene, shot: bool = False) -> LookReference | None:
    """The reference a scene holds: a sequence's when it has images; a shot's when Own reference is on (with or
    without images). None otherwise."""
    saved = _saved(scene)
    written = (str(image.get("filepath", "")).strip() for image in saved.get("images", []))
    files = tuple(text for text in written if text)
    if (shot and not saved.get("own")) or (not shot and not files):
        return None
    return LookReference(
        files,
        float(saved.get("strength", _DEFAULTS.strength)),
        float(saved.get("guidance_start", 0.0)),
        float(saved.get("guidance_end", 1.0)),
        f"shot '{scene.name}'" if shot else f"sequence '{scene.name}'",
    )


def sequence_scenes(shot, preview_scene: str = "") -> list:
    """The edit scenes a shot belongs to, nearest first: the one its previews go to (if it exists yet), then
    every other scene that cuts it in (a Scene strip of it), by name."""
    from .strips import PlacementError, check_target, shot_strip

    try:
        target = check_target(shot, preview_scene)
    except PlacementError:
        target = None
    edits = sorted(
        (s for s in bpy.data.scenes if s != shot and s != target and shot_strip(s, shot) is not None),
        key=lambda s: s.name,
    )
    return ([target] if target is not None else []) + edits


def sequence_of(shot, preview_scene: str = ""):
    """The edit scene whose reference the shot inherits: the nearest holding one, else the nearest; None if none."""
    scenes = sequence_scenes(shot, preview_scene)
    return next((s for s in scenes if look_of(s) is not None), scenes[0] if scenes else None)


def reference_for(shot, preview_scene: str = "") -> LookReference | None:
    """The reference a shot is generated with: its own, else its sequence's, else None (core/reference.resolve)."""
    from ..core.reference import resolve

    sequence = sequence_of(shot, preview_scene)
    return resolve(look_of(shot, shot=True), look_of(sequence) if sequence is not None else None)


def grab_frame(strip, frame: int, path: Path) -> Path:
    """Timeline frame `frame` of the movie strip `strip` written as a PNG at `path`, as the Sequencer shows it
    (a temporary scene renders the movie's frame with the Standard view; it is removed after). Nothing of the
    artist's scenes or files changes. LookReferenceError for a frame the strip does not show."""
    first, last = round(strip.frame_final_start), round(strip.frame_final_end) - 1
    if not first <= frame <= last:
        raise LookReferenceError(
            f"frame {frame} is not on the take '{strip.name}' (frames {first}-{last}): move the playhead onto it"
        )
    element = strip.elements[0] if len(strip.elements) else None
    if element is None or not element.orig_width:
        raise LookReferenceError(f"the take '{strip.name}' has no readable movie ({strip.filepath})")
    path.parent.mkdir(parents=True, exist_ok=True)
    results = set(bpy.data.images)  # the render result image made here is removed with the scene
    temp = bpy.data.scenes.new("sparsectrl frame grab")
    try:
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:
            editor = temp.sequence_editor_create()
            strips = editor.strips if hasattr(editor, "strips") else editor.sequences  # 5.x / 4.x
            strips.new_movie("frame", bpy.path.abspath(strip.filepath, library=strip.id_data.library), 1, 1)
            # The movie's own frame, trims aside; rendered as a one-frame animation: a still render of a scene
            # other than the window's renders the window scene's frame.
            temp.frame_start = temp.frame_end = frame - round(strip.frame_start) + 1
            _plain_output(temp, element.orig_width, element.orig_height, Path(folder) / "frame_")
            bpy.ops.render.render(animation=True, scene=temp.name)
            written = sorted(Path(folder).glob("frame_*.png"))
            if not written:
                raise LookReferenceError(f"could not render frame {frame} of '{strip.name}'")
            os.replace(written[0], path)
    finally:
        bpy.data.scenes.remove(temp)
        for image in set(bpy.data.images) - results:
            bpy.data.images.remove(image)
    return path


def _plain_output(scene, width: int, height: int, path: Path) -> None:
    """The movie's pixels as they are: its size, the Standard view (where the OCIO config has it), no dither."""
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.use_sequencer, r.use_compositing, r.dither_intensity = True, False, 0.0
    r.image_settings.file_format, r.image_settings.color_mode = "PNG", "RGB"
    r.filepath = str(path)
    try:
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
    except TypeError:  # a studio's OCIO config without them: its default view
        pass
    scene.view_settings.exposure, scene.view_settings.gamma = 0.0, 1.0


def frame_path(strip, frame: int) -> Path:
    """Where a take's frame grabbed as a reference goes: a 'reference' folder beside the add-on's videos."""
    from ..core.job import video_folder
    from .strips import job_of

    return video_folder(bpy.data.filepath) / "reference" / frame_file_name(strip.name, frame, job_of(strip))


def stored_path(path: Path) -> str:
    """A file as the list keeps it: relative to the saved .blend ("//...") where it can be, else absolute."""
    if bpy.data.filepath:
        try:
            return bpy.path.relpath(str(path))
        except ValueError:  # another drive (Windows)
            pass
    return str(path)


CLASSES = (SparseCtrlReferenceImage, SparseCtrlLook)


def register() -> None:
    bpy.types.Scene.sparsectrl_look = bpy.props.PointerProperty(type=SparseCtrlLook)


def unregister() -> None:
    del bpy.types.Scene.sparsectrl_look
