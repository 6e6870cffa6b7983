"""One generation, the same for the panel and the batch command: keyframes -> passes -> request (main thread,
bpy), then submit / poll / download (JobRunner, plain Python, runs in a background thread for the UI), then
the strip (main thread, bpy)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .client import Client, ServerError
from .frame_mapping import generated_frame_count, map_keyframes
from .png import encode_png
from .request import MAX_GENERATED_FRAMES, MAX_SIZE, MIN_SIZE, GenerationSettings, generation_size, job_body

log = logging.getLogger(__name__)


@dataclass
class PreparedJob:
    body: dict
    start: int
    end: int
    mapping: dict[int, int]  # timeline frame -> generated index
    passes: dict[int, bytes]  # timeline frame -> PNG sent
    messages: list[str]  # warnings for the artist, each said once
    pass_seconds: list[float]  # per keyframe, in render order (the batch reports their sum)
    empty_frames: list[int] = field(default_factory=list)  # keyframes whose pass shows nothing

    @property
    def empty_message(self) -> str:
        if not self.empty_frames:
            return ""
        frames = ", ".join(map(str, self.empty_frames))
        modality = self.body.get("modality", "")
        return (
            f"the {modality} pass is empty at keyframe{'s' if len(self.empty_frames) > 1 else ''} {frames}: "
            "nothing of the scene is in view (camera pointing at the sky or away, an orthographic camera framing "
            "nothing, no geometry), so the model gets no guidance there"
        )


def is_empty_pass(image) -> bool:
    """A pass that carries nothing: one flat colour over the whole image (all black, one grey)."""
    return bool((image == image[:1, :1]).all())


def prepare(scene, settings: GenerationSettings) -> PreparedJob:
    """Choose keyframes, render their passes and build the request. Raises ValueError-like errors with
    messages for the artist (KeyframeError, PassError, ValueError). Clamped settings and empty passes are
    said in `messages` (and `empty_frames`)."""
    from .passes.render import PassRenderer
    from .scene_keyframes import keyframe_frames, shot_range

    messages = []
    if settings.shot_range == "PREVIEW" and not scene.use_preview_range:
        messages.append(
            f"the scene '{scene.name}' has no preview range: using the scene range "
            f"{scene.frame_start}-{scene.frame_end}"
        )
    start, end = shot_range(scene, settings)
    shot_frames = end - start + 1
    r = scene.render
    fps = r.fps / r.fps_base
    if settings.frames_mode == "AUTO":
        num_frames = generated_frame_count(shot_frames, fps, settings.motion_rate, MAX_GENERATED_FRAMES)
    else:
        if settings.num_frames < 1:
            raise ValueError(f"generated frames must be at least 1 (got {settings.num_frames})")
        num_frames = min(settings.num_frames, MAX_GENERATED_FRAMES)
        if num_frames < settings.num_frames:
            messages.append(
                f"{settings.num_frames} generated frames is more than the model's {MAX_GENERATED_FRAMES}: "
                f"generating {num_frames} (the server retimes them to the shot's {shot_frames} frames)"
            )
    mapped = map_keyframes(keyframe_frames(scene, settings), start, end, num_frames)
    if not mapped.indices:
        raise ValueError("no keyframes inside the shot: " + "; ".join(mapped.messages))
    messages.extend(mapped.messages)
    size = min(max(settings.size, MIN_SIZE), MAX_SIZE)
    if size != settings.size:
        messages.append(f"size {settings.size} is outside {MIN_SIZE}-{MAX_SIZE} px: using {size}")
    aspect_w, aspect_h = r.resolution_x * r.pixel_aspect_x, r.resolution_y * r.pixel_aspect_y
    width, height = generation_size(aspect_w, aspect_h, size)
    wanted, got = aspect_w / aspect_h, width / height
    if abs(got - wanted) / wanted > 0.1:
        messages.append(
            f"at size {size} the short side is raised to the model's minimum of 64 px: the preview is "
            f"{width}x{height}, not the scene's aspect {aspect_w / aspect_h:.2f}:1 (use a larger size)"
        )
    frames = list(mapped.indices)
    with PassRenderer(scene, width, height) as renderer:
        images = renderer.render(settings.modality, frames)
        seconds = list(renderer.seconds_per_keyframe)
    empty = sorted(f for f, img in images.items() if is_empty_pass(img))
    passes = {frame: encode_png(img) for frame, img in images.items()}
    # The server retimes the clip to the shot's frame count at the scene's rate, each keyframe's generated
    # frame on the keyframe's own timeline frame: the strip needs no retiming and lines up frame for frame.
    keyframes = [(mapped.indices[f], f - start, png) for f, png in passes.items()]
    body = job_body(settings, num_frames, width, height, max(1, round(fps)), shot_frames, keyframes)
    prepared = PreparedJob(body, start, end, mapped.indices, passes, messages, seconds, empty)
    if empty:
        messages.append(prepared.empty_message)
    return prepared


def write_passes(prepared: PreparedJob, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for frame, png in prepared.passes.items():
        path = folder / f"frame_{frame:04d}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths


@dataclass
class RunnerState:
    phase: str = "submitting"  # submitting, queued, running, downloading, done, failed, cancelled
    step: int = 0
    total: int = 0
    job_id: str | None = None
    error: str | None = None
    lost: bool = False  # the server went away during the job
    job: dict = field(default_factory=dict)
    video: bytes | None = None


class JobRunner:
    """Submit, poll and download one job; no bpy, so it can run in a thread. `state` is read by the UI."""

    def __init__(self, client: Client, body: dict, poll_seconds: float = 0.25, lost_after: float = 10.0):
        self.client, self.body = client, body
        self.poll_seconds, self.lost_after = poll_seconds, lost_after
        self.state = RunnerState()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> RunnerState:
        s = self.state
        try:
            accepted = self.client.submit(self.body)
            s.job_id, s.phase = accepted["id"], accepted["status"]
            unreachable_since = None
            while True:
                if self._cancel.is_set():
                    self.client.cancel(s.job_id)
                    self._cancel.clear()
                try:
                    job = self.client.job(s.job_id)
                    unreachable_since = None
                except ServerError as e:
                    if e.code not in ("unreachable", "timeout"):
                        raise
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > self.lost_after:
                        raise ServerError(
                            f"the server went away during job {s.job_id}: {e}. Start it again and "
                            "press Generate to resubmit.",
                            "lost",
                        ) from None
                    time.sleep(self.poll_seconds)
                    continue
                s.job = job
                s.step, s.total = job["progress"]["step"], job["progress"]["total"]
                if job["status"] == "succeeded":
                    break
                if job["status"] in ("failed", "cancelled"):
                    s.phase = job["status"]
                    if job["status"] == "failed":
                        err = job.get("error") or {}
                        s.error = f"the server could not make the preview: {err.get('message', 'unknown error')}"
                    return s
                s.phase = job["status"]
                time.sleep(self.poll_seconds)
            s.phase = "downloading"
            s.video = self.client.video(s.job_id)
            s.phase = "done"
        except ServerError as e:
            s.phase, s.error, s.lost = "failed", str(e), e.code == "lost"
        except Exception as e:  # noqa: BLE001 - the UI shows a message, never a traceback
            log.exception("generation failed")
            s.phase, s.error = "failed", f"unexpected error: {type(e).__name__}: {e}"
        return s


def video_folder(blend_path: str) -> Path:
    """Next to the .blend (a 'sparsectrl' folder beside it), or a temp folder for an unsaved file."""
    if blend_path:
        return Path(blend_path).parent / "sparsectrl"
    return Path(tempfile.gettempdir()) / "sparsectrl_previews"


def save_video(video: bytes, blend_path: str, scene_name: str, job_id: str) -> Path:
    folder = video_folder(blend_path)
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in scene_name)
    path = folder / f"{safe}_{job_id[:8]}.mp4"
    tmp = path.with_suffix(".mp4.partial")
    tmp.write_bytes(video)
    os.replace(tmp, path)
    return path


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
    from .strips import add_preview_strip, move_old_previews, previs_scene

    if target is None:
        target = previs_scene(shot, settings.preview_scene)
    moved = move_old_previews(shot, target)
    if moved:
        log.info("moved %d earlier preview strip(s) from '%s' to '%s'", moved, shot.name, target.name)
    path = save_video(state.video, video_beside or blend_path, shot.name, state.job_id)
    job = state.job
    metadata = {
        "prompt": prepared.body["prompt"],
        "negative_prompt": prepared.body.get("negative_prompt") or "",
        "seed": job.get("seed", prepared.body["seed"]),
        "modality": prepared.body["modality"],
        "keyframes": {str(frame): index for frame, index in prepared.mapping.items()},
        "model": job.get("model", ""),
        "job_id": state.job_id,
        "num_frames": prepared.body["num_frames"],
        "server": settings.server_url,
        "shot": shot.name,
    }
    if blend_path:  # relative to the .blend ("//sparsectrl/..."), so the project folder can move
        try:
            path = "//" + os.path.relpath(path, Path(blend_path).parent).replace(os.sep, "/")
        except ValueError:  # another drive (Windows): keep it absolute
            pass
    return add_preview_strip(target, str(path), prepared.start, prepared.end, metadata, replace=replace, shot=shot)
