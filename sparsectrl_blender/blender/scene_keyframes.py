"""Which timeline frames are keyframes, and what the shot is, read from the scene (bpy)."""

from __future__ import annotations

from ..core.frame_mapping import every_n, parse_frame_list
from ..core.request import GenerationSettings


class KeyframeError(ValueError):
    """No usable keyframes; the message tells the artist what to do."""


def shot_range(scene, settings: GenerationSettings) -> tuple[int, int]:
    if settings.shot_range == "PREVIEW" and scene.use_preview_range:
        return scene.frame_preview_start, scene.frame_preview_end
    return scene.frame_start, scene.frame_end


def _camera_fcurves(camera):
    anim = camera.animation_data if camera else None
    action = anim.action if anim else None
    if action is None:
        return []
    slot = getattr(anim, "action_slot", None)
    if slot is not None:  # Blender 4.4+: layered actions; fcurves live in the slot's channel bag
        from bpy_extras import anim_utils

        bag = anim_utils.action_get_channelbag_for_slot(action, slot)
        return list(bag.fcurves) if bag else []
    return list(action.fcurves)


def keyframe_frames(scene, settings: GenerationSettings) -> list[int]:
    """The timeline frames to condition on, from the chosen source (before mapping to the shot)."""
    source = settings.keyframe_source
    if source == "NONE":  # no keyframes: Depth every frame alone
        return []
    start, end = shot_range(scene, settings)
    if source == "MARKERS":
        frames = [m.frame for m in scene.timeline_markers]
        hint = "add timeline markers (M in the timeline) at the frames to condition on"
    elif source == "SELECTED_MARKERS":
        frames = [m.frame for m in scene.timeline_markers if m.select]
        hint = "select some timeline markers"
    elif source == "CAMERA_KEYS":
        frames = sorted({round(k.co[0]) for fc in _camera_fcurves(scene.camera) for k in fc.keyframe_points})
        hint = "the active camera has no keyframes"
    elif source == "EVERY_N":
        frames = every_n(start, end, settings.every_n)
        hint = ""
    elif source == "LIST":
        try:
            frames = parse_frame_list(settings.frame_list)
        except ValueError as e:
            raise KeyframeError(str(e)) from None
        hint = "type frame numbers, e.g. 1, 24, 48"
    else:
        raise KeyframeError(f"unknown keyframe source {source!r}")
    if not frames:
        raise KeyframeError(f"no keyframes: {hint}")
    return sorted(set(frames))
