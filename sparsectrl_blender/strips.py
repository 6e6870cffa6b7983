"""Putting the preview on the Video Sequencer: a movie strip spanning exactly the shot (bpy).

The add-on asks the server for a clip retimed to the shot's N frames, so the movie strip plays frame for
frame. Should a clip have another frame count n, a Speed effect in Stretch mode above the movie strip spreads
it over the N frames (Blender shows clip frame round((f - start) * n / N) at timeline frame f).
"""

from __future__ import annotations

import json

PROPS_KEY = "sparsectrl"


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


def first_free_channel(scene, start: int, end: int, needed: int = 1, ignore=()) -> int:
    for channel in range(1, 129 - needed):
        if all(_channel_free(scene, channel + k, start, end, ignore) for k in range(needed)):
            return channel
    raise RuntimeError("no free Sequencer channels over the shot")


def preview_strips(scene) -> list:
    """The movie strips this add-on made, oldest first."""
    return [s for s in _all_strips(scene) if s.type == "MOVIE" and PROPS_KEY in s.keys()]


def add_preview_strip(scene, video_path: str, start: int, end: int, num_frames: int, metadata: dict, replace=None):
    """Add the preview spanning timeline frames start..end; `replace` is an earlier preview strip to take the
    place of (its channel is reused and it is removed). Returns the movie strip."""
    strips = _strips(scene)
    shot_frames = end - start + 1
    needed = 1 if num_frames == shot_frames else 2
    old = []
    if replace is not None:
        # Effects first: removing the movie strip would take its Speed effect with it.
        old = [s for s in _all_strips(scene) if getattr(s, "input_1", None) == replace] + [replace]
    channel = first_free_channel(scene, start, end, needed, ignore=old)
    if replace is not None:
        channel = (
            replace.channel
            if all(_channel_free(scene, replace.channel + k, start, end, old) for k in range(needed))
            else channel
        )
        for strip in old:
            strips.remove(strip)
    name = f"SparseCtrl {metadata.get('modality', '')} {metadata.get('seed', '')}".strip()
    movie = strips.new_movie(name, video_path, channel=channel, frame_start=start)
    if needed == 2:
        speed = strips.new_effect(
            name=name + " (timing)",
            type="SPEED",
            channel=channel + 1,
            frame_start=start,
            length=shot_frames,
            input1=movie,
        )
        speed.speed_control = "STRETCH"
    movie.frame_final_duration = shot_frames
    movie[PROPS_KEY] = json.dumps(metadata)
    for key in ("prompt", "seed", "modality", "model", "job_id"):
        if key in metadata:
            movie[f"{PROPS_KEY}_{key}"] = metadata[key]
    movie[f"{PROPS_KEY}_keyframes"] = json.dumps(metadata.get("keyframes", {}))
    return movie


def find_strip(scene, name: str):
    return next((s for s in _all_strips(scene) if s.name == name), None)


def active_preview_strip(scene):
    """The active Sequencer strip if it is one of this add-on's previews, else None."""
    editor = scene.sequence_editor
    strip = editor.active_strip if editor else None
    return strip if strip is not None and PROPS_KEY in strip.keys() else None
