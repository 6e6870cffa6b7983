"""Putting the preview on the Video Sequencer of a previs edit scene, never on the shot's own (bpy).

A movie strip on the shot scene's Sequencer would replace the shot's final render (Post Processing ›
Sequencer is on by default: F12 would output the preview). So previews go to an edit scene per shot,
"<shot> previs" by default: it holds a Scene strip of the shot on channel 1 and the preview strips above it,
on the shot's own frame numbers. In an edit scene the artist names (no camera of its own), the previews go
above the Scene strip that cuts the shot in, shifted with it. The shot scene, its Sequencer and its render
settings are left exactly as they were. Preview strips that earlier versions of the add-on put on the shot
scene are moved there (`move_old_previews`).

The server retimes each clip to the shot's frame count, so the movie strip plays frame for frame.
"""

from __future__ import annotations

import json

PROPS_KEY = "sparsectrl"
SHOT_KEY = "sparsectrl_shot"  # on a previs scene: the name of the shot scene it shows
SHOT_STRIP_KEY = "sparsectrl_shot_strip"  # on the Scene strip of the shot in a previs scene


class PlacementError(ValueError):
    """The previews cannot go where asked; the message is for the artist."""


def _strips(scene):
    editor = scene.sequence_editor or scene.sequence_editor_create()
    return editor.strips if hasattr(editor, "strips") else editor.sequences  # 5.x / 4.x


def _all_strips(scene):
    editor = scene.sequence_editor
    if editor is None:
        return []
    return list(editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all)


def _channel_free(scene, channel: int, start: int, end: int, ignore=()) -> bool:
    for strip in _all_strips(scene):
        if strip in ignore or strip.channel != channel:
            continue
        if strip.frame_final_start <= end and strip.frame_final_end > start:
            return False
    return True


def first_free_channel(scene, start: int, end: int, ignore=(), lowest: int = 1) -> int:
    for channel in range(lowest, 129):
        if _channel_free(scene, channel, start, end, ignore):
            return channel
    raise RuntimeError("no free Sequencer channels over the shot")


def is_previs_scene(scene) -> bool:
    return SHOT_KEY in scene.keys()


def shot_scene_of(scene):
    """The shot a scene stands for: a previs scene's shot (when it still exists); in an edit of the artist's,
    the shot of the active strip (one of our previews, or a Scene strip cutting a shot in); else the scene."""
    import bpy

    if is_previs_scene(scene):
        shot = bpy.data.scenes.get(scene[SHOT_KEY])
        if shot is not None and shot != scene:
            return shot
    editor = scene.sequence_editor
    active = editor.active_strip if editor else None
    if active is not None:
        if PROPS_KEY in active.keys():
            shot = bpy.data.scenes.get(preview_shot(active) or "")
        else:
            shot = active.scene if active.type == "SCENE" else None
        if shot is not None and shot != scene:
            return shot
    return scene


def preview_shot(strip) -> str | None:
    """The name of the shot a preview strip was made for (None for strips of versions that did not say)."""
    try:
        return json.loads(strip[PROPS_KEY]).get("shot")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def previs_scene_name(shot) -> str:
    return f"{shot.name} previs"


def _target_name(shot, name: str) -> str:
    """The scene the previews go to: `name` as the artist typed it, else "<shot> previs"."""
    return (name or "").strip() or previs_scene_name(shot)


def check_target(shot, name: str = ""):
    """The scene the previews would go to, if it exists yet (else None); PlacementError if it cannot be used.
    Changes nothing (for checks before rendering)."""
    import bpy

    name = _target_name(shot, name)
    if name == shot.name:
        raise PlacementError(
            f"the previews cannot go on the shot scene '{shot.name}' itself: its render would become the preview "
            "(Post Processing › Sequencer). Name another scene, or leave it empty for "
            f"'{previs_scene_name(shot)}'"
        )
    target = bpy.data.scenes.get(name)
    if target is None:
        return None
    if target.library is not None:
        raise PlacementError(f"the scene '{name}' is linked from a library and cannot be edited")
    if is_previs_scene(target) and target[SHOT_KEY] != shot.name:
        raise PlacementError(f"the scene '{name}' already holds the previs of the shot '{target[SHOT_KEY]}'")
    if not is_previs_scene(target) and target.camera is not None:
        raise PlacementError(
            f"the scene '{name}' has a camera: previews on its Sequencer would replace its own render. Name an "
            f"edit scene (no camera), or leave it empty for '{previs_scene_name(shot)}'"
        )
    return target


def previs_scene(shot, name: str = ""):
    """The edit scene that holds `shot`'s previews: `name` if given, else "<shot> previs"; never the shot.

    A scene made here (for this shot) follows the shot's frame range, rate and resolution and gets a Scene strip
    of the shot on channel 1 at the shot's own frames. A scene of the artist's (an edit holding several shots)
    keeps its settings: the previews go above the Scene strip that shows the shot there (one is added on a
    free channel at the shot's frames if it has none), shifted with it."""
    import bpy

    target = check_target(shot, name)
    made = target is None
    if made:
        target = bpy.data.scenes.new(_target_name(shot, name))
        target[SHOT_KEY] = shot.name
    if target.get(SHOT_KEY) == shot.name:
        _fit_to_shot(target, shot, preview_range=made)
    if shot_strip(target, shot) is None:
        length = shot.frame_end - shot.frame_start + 1
        channel = first_free_channel(target, shot.frame_start, shot.frame_start + length - 1)
        strip = _strips(target).new_scene(name=shot.name, scene=shot, channel=channel, frame_start=shot.frame_start)
        strip[SHOT_STRIP_KEY] = shot.name
    return target


def shot_strip(target, shot):
    """The Scene strip showing `shot` in `target` (the one this add-on made first), or None."""
    showing = [s for s in _all_strips(target) if s.type == "SCENE" and s.scene == shot]
    return next((s for s in showing if SHOT_STRIP_KEY in s.keys()), showing[0] if showing else None)


def shot_offset(target, shot) -> tuple[int, int]:
    """(frames to add to a shot frame to get `target`'s timeline frame, the lowest channel above the shot)."""
    strip = shot_strip(target, shot)
    if strip is None:
        return 0, 2
    return round(strip.frame_start) - shot.frame_start, strip.channel + 1


def _fit_to_shot(target, shot, preview_range: bool) -> None:
    """Frame range, frame rate, resolution and pixel aspect of the shot, so the edit plays as the shot does; its
    preview range only when the edit is made (later, the edit's own preview range is the artist's Retake range)."""
    tr, sr = target.render, shot.render
    target.frame_start, target.frame_end = shot.frame_start, shot.frame_end
    if preview_range:
        target.use_preview_range = shot.use_preview_range
    if preview_range and shot.use_preview_range:
        target.frame_preview_start, target.frame_preview_end = shot.frame_preview_start, shot.frame_preview_end
    tr.fps, tr.fps_base = sr.fps, sr.fps_base
    tr.resolution_x, tr.resolution_y = sr.resolution_x, sr.resolution_y
    tr.resolution_percentage = sr.resolution_percentage
    tr.pixel_aspect_x, tr.pixel_aspect_y = sr.pixel_aspect_x, sr.pixel_aspect_y


def preview_strips(scene) -> list:
    """The movie strips this add-on made, oldest first."""
    return [s for s in _all_strips(scene) if s.type == "MOVIE" and PROPS_KEY in s.keys()]


def _tag(movie, metadata: dict) -> None:
    movie[PROPS_KEY] = json.dumps(metadata)
    for key in ("prompt", "seed", "modality", "model", "job_id"):
        if key in metadata:
            movie[f"{PROPS_KEY}_{key}"] = metadata[key]
    movie[f"{PROPS_KEY}_keyframes"] = json.dumps(metadata.get("keyframes", {}))
    if "retake" in metadata:  # the parent (job, strip) and the span (generated, timeline), readable in the UI
        movie[f"{PROPS_KEY}_retake"] = json.dumps(metadata["retake"])
    if "reference" in metadata:  # the Look reference's files and hashes, readable in the UI
        movie[f"{PROPS_KEY}_reference"] = json.dumps(metadata["reference"])


def metadata_of(strip) -> dict:
    """A preview strip's recorded metadata ({} when it has none readable)."""
    try:
        meta = json.loads(strip[PROPS_KEY])
    except (KeyError, TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def job_of(strip) -> str:
    """The job a preview strip shows ("" when it does not say)."""
    return str(metadata_of(strip).get("job_id") or "")


def take_of_strip(strip, shot):
    """The take a preview strip is (core/retake.Take): its job, where it plays, how its frames are timed.
    ValueError for the artist if it cannot be retaken."""
    from ..core.retake import take_from_metadata

    shift, _ = shot_offset(strip.id_data, shot)
    first = round(strip.frame_start)  # delivered frame 0, trims aside
    shown = (round(strip.frame_final_start), round(strip.frame_final_end) - 1)
    duration = round(getattr(strip, "frame_duration", 0)) or shown[1] - shown[0] + 1
    return take_from_metadata(metadata_of(strip), first, duration, first - shift, shown, strip.name)


def add_preview_strip(
    target, video_path: str, start: int, end: int, metadata: dict, replace=None, shot=None, above=None
):
    """Add the preview spanning the shot's frames start..end in the previs scene `target`, above the Scene strip
    of `shot` there (and shifted with it); `replace` is an earlier preview strip to take the place of (its
    channel is reused and it is removed); `above`: a strip to stack it above (a retake's parent). Returns the
    movie strip."""
    strips = _strips(target)
    shift, lowest = shot_offset(target, shot) if shot is not None else (0, 2)
    if above is not None:
        lowest = max(lowest, above.channel + 1)
    start, end = start + shift, end + shift
    shot_frames = end - start + 1
    ignore = [replace] if replace is not None else []
    channel = first_free_channel(target, start, end, ignore=ignore, lowest=lowest)
    if replace is not None:
        if replace.channel >= lowest and _channel_free(target, replace.channel, start, end, ignore):
            channel = replace.channel
        strips.remove(replace)
    # What steered it: the keyframes' modality, or depth every frame alone (Keyframes: None).
    steered = metadata.get("modality") or ("depth every frame" if metadata.get("depth_every_frame") else "")
    name = " ".join(str(part) for part in ("SparseCtrl", steered, metadata.get("seed", "")) if part != "")
    movie = strips.new_movie(name, video_path, channel=channel, frame_start=start)
    movie.frame_final_duration = shot_frames
    _tag(movie, metadata)
    return movie


def move_old_previews(shot, target) -> int:
    """Move the preview strips earlier versions put on the shot's own Sequencer to `target` (same frames, same
    file, same metadata); the shot's Sequencer is then as it was before them. Returns how many moved."""
    old = preview_strips(shot)
    if not old:
        return 0
    strips = _strips(shot)
    moved = 0
    shift, lowest = shot_offset(target, shot)
    for strip in old:
        start, duration = strip.frame_final_start + shift, strip.frame_final_duration
        channel = first_free_channel(target, start, start + duration - 1, lowest=max(lowest, strip.channel))
        movie = _strips(target).new_movie(
            strip.name, strip.filepath, channel=channel, frame_start=round(strip.frame_start) + shift
        )
        movie.frame_offset_start, movie.frame_offset_end = strip.frame_offset_start, strip.frame_offset_end
        movie.frame_final_duration = duration
        for key in strip.keys():
            if key.startswith(PROPS_KEY):
                movie[key] = strip[key]
        # Effects that used it (earlier versions' Speed effect) go with it.
        for effect in [s for s in _all_strips(shot) if getattr(s, "input_1", None) == strip]:
            strips.remove(effect)
        strips.remove(strip)
        moved += 1
    return moved


def find_strip(scene, name: str):
    return next((s for s in _all_strips(scene) if s.name == name), None)


def active_preview_strip(scene, shot=None):
    """The active Sequencer strip if it is one of this add-on's previews (of `shot`, when given: in an edit
    holding several shots, Replace never takes another shot's preview), else None."""
    editor = scene.sequence_editor
    strip = editor.active_strip if editor else None
    if strip is None or PROPS_KEY not in strip.keys():
        return None
    made_for = preview_shot(strip)
    if shot is not None and made_for is not None and made_for != shot.name:
        return None
    return strip
