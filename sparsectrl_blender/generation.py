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
from .request import MAX_GENERATED_FRAMES, GenerationSettings, generation_size, job_body

log = logging.getLogger(__name__)


@dataclass
class PreparedJob:
    body: dict
    start: int
    end: int
    mapping: dict[int, int]  # timeline frame -> generated index
    passes: dict[int, bytes]  # timeline frame -> PNG sent
    messages: list[str]
    pass_seconds: list[float]


def prepare(scene, settings: GenerationSettings) -> PreparedJob:
    """Choose keyframes, render their passes and build the request. Raises ValueError-like errors with
    messages for the artist (KeyframeError, PassError, ValueError)."""
    from .passes.render import PassRenderer
    from .scene_keyframes import keyframe_frames, shot_range

    start, end = shot_range(scene, settings)
    shot_frames = end - start + 1
    r = scene.render
    fps = r.fps / r.fps_base
    if settings.frames_mode == "AUTO":
        num_frames = generated_frame_count(shot_frames, fps, settings.motion_rate, MAX_GENERATED_FRAMES)
    else:
        num_frames = min(settings.num_frames, MAX_GENERATED_FRAMES)
    mapped = map_keyframes(keyframe_frames(scene, settings), start, end, num_frames)
    if not mapped.indices:
        raise ValueError("no keyframes inside the shot: " + "; ".join(mapped.messages))
    width, height = generation_size(r.resolution_x * r.pixel_aspect_x, r.resolution_y * r.pixel_aspect_y, settings.size)
    frames = list(mapped.indices)
    with PassRenderer(scene, width, height) as renderer:
        images = renderer.render(settings.modality, frames)
        seconds = list(renderer.seconds_per_keyframe)
    passes = {frame: encode_png(img) for frame, img in images.items()}
    # The server retimes the clip to the shot's frame count at the scene's rate, each keyframe's generated
    # frame on the keyframe's own timeline frame: the strip needs no retiming and lines up frame for frame.
    keyframes = [(mapped.indices[f], f - start, png) for f, png in passes.items()]
    body = job_body(settings, num_frames, width, height, max(1, round(fps)), shot_frames, keyframes)
    for message in mapped.messages:
        log.warning(message)
    return PreparedJob(body, start, end, mapped.indices, passes, mapped.messages, seconds)


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
    scene, prepared: PreparedJob, state: RunnerState, settings: GenerationSettings, blend_path: str, replace=None
):
    """Save the video and add the strip spanning the shot, carrying the generation parameters."""
    from .strips import add_preview_strip

    path = save_video(state.video, blend_path, scene.name, state.job_id)
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
    }
    if blend_path:  # relative to the .blend ("//sparsectrl/..."), so the project folder can move
        path = "//" + os.path.relpath(path, Path(blend_path).parent).replace(os.sep, "/")
    delivered = prepared.body.get("output_frames") or prepared.body["num_frames"]
    return add_preview_strip(scene, str(path), prepared.start, prepared.end, delivered, metadata, replace=replace)
