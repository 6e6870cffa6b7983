"""One generation, the same for the panel and the batch command, in its bpy steps: keyframes -> passes ->
request (prepare, main thread; the passes' PNGs are made in the job thread, PreparedJob.encode), then, once
core/job.py's JobRunner has the video, the strip (import_result, main thread).

The passes are rendered by one function, `prepare_steps`, a generator that pauses after each render: the panel
runs a step per timer tick (Blender's UI answers between renders, and a Cancel closes it), `prepare` (the batch)
runs them in a loop."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.frame_mapping import MappedKeyframes, generated_frame_count, generated_timeline_frames, map_keyframes
from ..core.job import PreparedJob, RunnerState, frame_list, is_empty_pass, save_video
from ..core.reference import LookReference
from ..core.request import (
    MAX_GENERATED_FRAMES,
    MAX_SIZE,
    MIN_SIZE,
    GenerationSettings,
    fraction,
    generation_size,
    images_modality,
    job_body,
    keyframe_modality,
    look_group,
    parse_keyframe_images,
    parse_keyframe_strengths,
    rgb_keyframes,
    rgb_look,
    uses_keyframes,
)
from ..core.retake import Retake, timing_note

log = logging.getLogger(__name__)


@dataclass
class PassProgress:
    """Where `prepare_steps` is: pass renders done of those it will make (the panel's progress bar)."""

    done: int = 0
    total: int = 0


def prepare(
    scene, settings: GenerationSettings, retake: Retake | None = None, reference: LookReference | None = None
) -> PreparedJob:
    """`prepare_steps` run to its end in one go (the batch, scripts)."""
    from .passes import run_steps

    return run_steps(prepare_steps(scene, settings, retake, reference))


def reference_parts(reference: LookReference | None) -> tuple[dict | None, dict]:
    """(the body's "reference", what the strip records of it) for a reference that is on; (None, {}) otherwise.
    The files are read (and checked) here: LookReferenceError naming the file."""
    import bpy

    from ..core import reference as look

    if not look.is_on(reference):
        return None, {}
    images = look.read_images(reference, lambda text: look.absolute(text, bpy.data.filepath))
    return look.entry(reference, images), look.record(reference, images)


def prepare_steps(
    scene, settings: GenerationSettings, retake: Retake | None = None, reference: LookReference | None = None
):
    """Choose keyframes, render their passes and build the request, as steps: a generator that yields its
    PassProgress once the settings are checked (nothing rendered yet), then after each render, and returns the
    PreparedJob. Closing it between steps (Cancel) removes the scene copy: the scene is as it was. Raises
    ValueError-like errors with messages for the artist (KeyframeError, PassError, ValueError): the settings'
    before anything is rendered.
    Clamped settings and empty passes are said in `messages` (and `empty_frames`). This is what the panel's
    Generate runs on Blender's main thread; the PNGs the request carries are made by `PreparedJob.encode`, which
    the job thread calls (the batch calls it itself). A `retake` keeps its parent's shot range, generated frames
    and size (the server refuses others) and regenerates its span; the rest is the settings'. `reference`: the
    Look reference resolved for the shot (blender/look.py), its files read before anything renders."""
    from .passes import PassRenderer

    started = time.perf_counter()
    messages: list[str] = list(retake.messages) if retake else []
    if retake is not None:
        settings = dataclasses.replace(settings, frames_mode="FIXED", num_frames=retake.take.num_frames)
    start, end, num_frames, mapped, scene_frames = _keyframes(scene, settings, messages, retake)
    width, height = retake.take.size if retake and retake.take.size else _size(scene, settings, messages)
    r = scene.render
    fps = r.fps / r.fps_base
    entry = retake.entry() if retake else None
    reference_entry, reference_record = reference_parts(reference)
    body = job_body(
        settings, num_frames, width, height, max(1, round(fps)), end - start + 1, [], entry, reference_entry
    )
    if retake and (note := timing_note(retake, [(f - start, i) for f, i in mapped.indices.items()])):
        messages.append(note)
    frames = list(mapped.indices)
    # Depth every frame: where each generated frame plays (its keyframes' frames among them, pinned).
    dense_frames = []
    if settings.depth_every_frame:
        dense_frames = generated_timeline_frames(start, end, num_frames, mapped.indices)
    stages = {"keyframes": time.perf_counter() - started}
    renderer = PassRenderer(scene, width, height)
    progress = PassProgress()
    images, dense = {}, {}
    files = {f: path for f, path in parse_keyframe_images(settings.keyframe_images).items() if f in mapped.indices}
    if files:  # a missing file is said before anything renders
        from .keyframe_images import check_keyframe_files

        check_keyframe_files(files)
    separate = images_modality(settings)  # the images go to their own encoder, beside the renders
    modality = keyframe_modality(settings)
    # A file's keyframe is not rendered, unless the images are their own group (then the renders are the scene's
    # keyframes, and a frame may have both: the look and the line art).
    rendered = [f for f in frames if (f in scene_frames if separate else f not in files)]
    # The look from a render: RGB at the first or every scene keyframe, but where an image file As RGB is the look.
    look_frames = sorted(scene_frames)[: 1 if settings.rgb_look == "FIRST" else None] if rgb_look(settings) else []
    look_frames = [f for f in look_frames if not (separate == "rgb" and f in files)]
    reuse_depth = modality == "depth" and bool(dense_frames)  # depth keyframes: those frames' depth, as rendered
    progress.total = len(set(dense_frames)) + (0 if reuse_depth else len(rendered)) + len(look_frames)
    yield progress  # checked: nothing rendered yet
    with renderer:  # one scene copy for the keyframes and the depth at every frame
        if dense_frames:  # each frame's range follows the frames slowly (sparsectrl_passes depth_ranges)
            dense = yield from _counted(renderer.render_steps("depth", sorted(set(dense_frames))), renderer, progress)
        if rendered and reuse_depth:
            images = {frame: dense[frame] for frame in rendered}
        elif rendered:
            images = yield from _counted(renderer.render_steps(modality, rendered), renderer, progress)
        further = {}
        if look_frames:
            further["rgb"] = yield from _counted(renderer.render_steps("rgb", look_frames), renderer, progress)
        seconds = list(renderer.seconds_per_keyframe)
    yield progress  # the scene copy removed: the images' checks and the request are the last step
    stages.update(renderer.stage_seconds)
    looks = {}
    if files:
        from .keyframe_images import keyframe_image

        started = time.perf_counter()
        looks = {frame: keyframe_image(path, frame, width, height) for frame, path in files.items()}
        if not separate:
            images = dict(sorted((images | looks).items()))
        stages["image files"] = time.perf_counter() - started
    started = time.perf_counter()
    empty = sorted(f for f, img in images.items() if is_empty_pass(img) and (separate or f not in files))  # renders
    flat = sorted(f for f, img in looks.items() if is_empty_pass(img))
    empty_dense = sorted(f for f, img in dense.items() if is_empty_pass(img))
    stages["empty check"] = time.perf_counter() - started
    prepared = PreparedJob(body, start, end, mapped.indices, images, messages, seconds, empty, stages)
    prepared.dense_frames, prepared.dense_images = dense_frames, dense
    prepared.dense_strength = settings.depth_strength
    prepared.dense_guidance = (settings.depth_guidance_start, settings.depth_guidance_end)
    prepared.strengths = _strengths(settings, mapped.indices, messages)
    prepared.image_files = files
    if separate:  # the image files are their own group (or join the rendered look's)
        further[separate] = dict(sorted((further.get(separate, {}) | looks).items()))
    prepared.further, prepared.look_group = further, look_group(settings)
    prepared.pin, prepared.retake = settings.pin and rgb_keyframes(settings), retake
    prepared.reference = reference_record
    if empty:
        messages.append(prepared.empty_message)
    if flat:
        messages.append(
            f"the keyframe image{'s' if len(flat) > 1 else ''} at frame{'s' if len(flat) > 1 else ''} "
            f"{frame_list(flat)} {'are' if len(flat) > 1 else 'is'} one flat colour: it steers only the colour"
        )
    prepared.empty_dense_frames = empty_dense
    if empty_dense:
        messages.append(prepared.empty_dense_message)
    return prepared


def _counted(steps, renderer, progress: PassProgress):
    """A renderer's steps, each yielding the progress with the renders done so far; returns their result."""
    try:
        while True:
            try:
                next(steps)
            except StopIteration as stop:
                return stop.value
            progress.done = renderer.renders_done
            yield progress
    finally:
        steps.close()


def check(scene, settings: GenerationSettings, reference: LookReference | None = None) -> None:
    """Everything `prepare` would refuse before rendering, without rendering: the camera, the keyframes, the
    image files, the Look reference's files, the request's own settings (prompt, LoRAs). The batch checks every
    shot so before sending any."""
    from .passes import check_camera

    check_camera(scene)
    messages: list[str] = []
    start, end, num_frames, mapped, _ = _keyframes(scene, settings, messages)
    width, height = _size(scene, settings, messages)
    files = {f: path for f, path in parse_keyframe_images(settings.keyframe_images).items() if f in mapped.indices}
    if files:
        from .keyframe_images import check_keyframe_files

        check_keyframe_files(files)
    reference_entry, _ = reference_parts(reference)
    job_body(settings, num_frames, width, height, 24, end - start + 1, [], reference=reference_entry)


def _strengths(settings: GenerationSettings, keyframes: dict[int, int], messages: list[str]) -> dict[int, float]:
    """The keyframes' strengths other than 1, by timeline frame; strengths for frames that are not keyframes
    are said and left out."""
    if not uses_keyframes(settings):
        return {}
    strengths = parse_keyframe_strengths(settings.keyframe_strengths)
    stray = sorted(set(strengths) - set(keyframes))
    if stray:
        messages.append(
            f"keyframe strengths for frame{'s' if len(stray) > 1 else ''} {frame_list(stray)} left out: "
            f"not keyframes of this shot (they are {frame_list(sorted(keyframes))})"
        )
    return {frame: s for frame, s in strengths.items() if frame in keyframes and s != 1.0}


def _keyframes(scene, settings: GenerationSettings, messages: list[str], retake: Retake | None = None):
    """(shot start, shot end, generated frames, the keyframes mapped onto them, the timeline frames of those
    chosen from the scene: markers, camera keys, ... rather than image files only). A retake's shot is its
    parent's."""
    from .scene_keyframes import KeyframeError, keyframe_frames, shot_range

    if settings.shot_range == "PREVIEW" and not scene.use_preview_range and retake is None:
        messages.append(
            f"the scene '{scene.name}' has no preview range: using the scene range "
            f"{scene.frame_start}-{scene.frame_end}"
        )
    start, end = shot_range(scene, settings)
    if retake is not None:
        start, end = retake.take.shot_start, retake.take.shot_start + retake.take.output_frames - 1
    shot_frames = end - start + 1
    r = scene.render
    fps = r.fps / r.fps_base
    if settings.frames_mode == "AUTO":
        num_frames = generated_frame_count(shot_frames, fps, settings.motion_rate, MAX_GENERATED_FRAMES)
    else:
        if settings.num_frames < 1:
            raise ValueError(f"generated frames must be at least 1 (got {settings.num_frames})")
        num_frames = min(settings.num_frames, MAX_GENERATED_FRAMES, shot_frames)  # as automatic mode caps it
        if num_frames == shot_frames < settings.num_frames:
            messages.append(
                f"{settings.num_frames} generated frames is more than the shot's {shot_frames} frames: "
                f"generating {num_frames}, one per frame"
            )
        elif num_frames < settings.num_frames:
            messages.append(
                f"{settings.num_frames} generated frames is more than the model's {MAX_GENERATED_FRAMES}: "
                f"generating {num_frames} (the server retimes them to the shot's {shot_frames} frames)"
            )
    if not uses_keyframes(settings):  # Keyframes: None (job_body says so unless depth every frame is on)
        return start, end, num_frames, MappedKeyframes({}), set()
    chosen = keyframe_frames(scene, settings) if settings.keyframe_source != "NONE" else []
    try:
        files = parse_keyframe_images(settings.keyframe_images)
    except ValueError as e:
        raise KeyframeError(str(e)) from None
    mapped = map_keyframes(sorted(set(chosen) | set(files)), start, end, num_frames)
    if not mapped.indices:
        raise ValueError("no keyframes inside the shot: " + "; ".join(mapped.messages))
    messages.extend(mapped.messages)
    return start, end, num_frames, mapped, set(chosen) & set(mapped.indices)


def _size(scene, settings: GenerationSettings, messages: list[str]) -> tuple[int, int]:
    """The generation size: the scene's aspect (pixel aspect included) at the settings' long side."""
    size = min(max(settings.size, MIN_SIZE), MAX_SIZE)
    if size != settings.size:
        messages.append(f"size {settings.size} is outside {MIN_SIZE}-{MAX_SIZE} px: using {size}")
    r = scene.render
    aspect_w, aspect_h = r.resolution_x * r.pixel_aspect_x, r.resolution_y * r.pixel_aspect_y
    width, height = generation_size(aspect_w, aspect_h, size)
    wanted, got = aspect_w / aspect_h, width / height
    if abs(got - wanted) / wanted > 0.1:
        messages.append(
            f"at size {size} the short side is raised to the model's minimum of 64 px: the preview is "
            f"{width}x{height}, not the scene's aspect {aspect_w / aspect_h:.2f}:1 (use a larger size)"
        )
    return width, height


def import_result(
    shot,
    prepared: PreparedJob,
    state: RunnerState,
    settings: GenerationSettings,
    blend_path: str,
    replace=None,
    target=None,
    video_beside: str | None = None,
):
    """Save the video and add the strip spanning the shot, carrying the generation parameters, on the previs
    scene `target` (default: the shot's "<shot> previs" scene; never the shot itself). The video goes to
    the "sparsectrl" folder beside `video_beside` (default: `blend_path`); its path on the strip is relative to
    `blend_path`, the file as it is now (a later save-as remaps it)."""
    from .strips import add_preview_strip, find_strip, job_of, move_old_previews, preview_strips, previs_scene

    if target is None:
        target = previs_scene(shot, settings.preview_scene)
    moved = move_old_previews(shot, target)
    if moved:
        log.info("moved %d earlier preview strip(s) from '%s' to '%s'", moved, shot.name, target.name)
    path = save_video(state.video, video_beside or blend_path, shot.name, state.job_id)
    metadata = _metadata(shot, prepared, state, settings)
    above = None
    if prepared.retake is not None:  # the parent and the span; stacked above the parent
        metadata["retake"] = prepared.retake.record()
        above = find_strip(target, prepared.retake.take.strip) if prepared.retake.take.strip else None
        above = above or next((s for s in preview_strips(target) if job_of(s) == prepared.retake.take.job_id), None)
    if blend_path:  # relative to the .blend ("//sparsectrl/..."), so the project folder can move
        try:
            path = "//" + os.path.relpath(path, Path(blend_path).parent).replace(os.sep, "/")
        except ValueError:  # another drive (Windows): keep it absolute
            pass
    return add_preview_strip(
        target, str(path), prepared.start, prepared.end, metadata, replace=replace, shot=shot, above=above
    )


def _metadata(shot, prepared: PreparedJob, state: RunnerState, settings: GenerationSettings) -> dict:
    """What a preview strip records: how it was made, and how it is timed (what a retake of it needs)."""
    job = state.job
    return {
        "prompt": prepared.body["prompt"],
        "negative_prompt": prepared.body.get("negative_prompt") or "",
        "seed": job.get("seed", prepared.body["seed"]),
        "modality": prepared.body["modality"] or "",
        "depth_every_frame": bool(prepared.dense_frames),
        "keyframe_strengths": {str(frame): s for frame, s in prepared.strengths.items()},
        "keyframe_images": {str(f): p for f, p in prepared.image_files.items()},  # those used
        "keyframe_images_as": (images_modality(settings) or prepared.body["modality"]) if prepared.image_files else "",
        "rgb_look": settings.rgb_look if rgb_look(settings) else "NONE",
        "keyframe_guidance": [fraction(v) for v in (settings.keyframe_guidance_start, settings.keyframe_guidance_end)],
        "depth_guidance": [fraction(v) for v in prepared.dense_guidance],
        "look_group": prepared.body.get("keyframe_groups", [{}])[0],
        "keyframes": {str(frame): index for frame, index in prepared.mapping.items()},
        "model": job.get("model", ""),
        "job_id": state.job_id,
        "num_frames": prepared.body["num_frames"],
        "server": settings.server_url,
        "shot": shot.name,
        # How the take is timed, for a retake of it (core/retake.take_from_metadata).
        "start": prepared.start,
        "output_frames": prepared.end - prepared.start + 1,
        "size": [prepared.body["width"], prepared.body["height"]],
        "pin": any(k.get("pin") for k in prepared.body.get("keyframes", [])),
        "color_lock": bool(prepared.body.get("color_lock")),
        **({"reference": prepared.reference} if prepared.reference else {}),  # files and hashes, when one was sent
    }
