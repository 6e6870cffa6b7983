"""One job as the add-on holds it, without bpy: the passes and request prepared for it (PreparedJob), then
submit / poll / download on the server (JobRunner: plain Python, run in a background thread for the panel),
and where its video is saved. The bpy steps around it are blender/generation.py's."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .client import Client, ServerError
from .png import encode_png
from .render_guard import GUARD, RenderGuard
from .request import dense_entries, keyframe_entries
from .retake import Retake

log = logging.getLogger(__name__)


@dataclass
class PreparedJob:
    """A job's request and its passes. The passes come as images (uint8 (h, w, 3)); `encode` makes them the
    PNGs the request carries, without bpy, so the panel's job thread does it, off Blender's main thread."""

    body: dict  # "keyframes" filled in by encode()
    start: int
    end: int
    mapping: dict[int, int]  # timeline frame -> generated index
    images: dict[int, np.ndarray]  # timeline frame -> the pass, uint8 (h, w, 3)
    messages: list[str]  # warnings for the artist, each said once
    pass_seconds: list[float]  # per keyframe, in render order (the batch reports their sum)
    empty_frames: list[int] = field(default_factory=list)  # keyframes whose pass shows nothing
    # Main-thread seconds by stage (keyframes, scene copy, frame_set, render, read, process, cleanup, ...):
    # what a Generate blocks Blender's UI for (python -m sparsectrl_blender.bench_passes reports them).
    stage_seconds: dict[str, float] = field(default_factory=dict)
    passes: dict[int, bytes] = field(default_factory=dict)  # timeline frame -> PNG sent (by encode())
    encode_seconds: float = 0.0  # what encode() took, wherever it ran
    # Depth every frame: the timeline frame of each generated frame (index order), and the depth pass at each.
    dense_frames: list[int] = field(default_factory=list)
    dense_images: dict[int, np.ndarray] = field(default_factory=dict)  # timeline frame -> uint8 (h, w, 3)
    dense_strength: float = 1.0
    dense_passes: dict[int, bytes] = field(default_factory=dict)  # timeline frame -> PNG sent (by encode())
    dense_guidance: tuple[float, float] = (0.0, 1.0)
    empty_dense_frames: list[int] = field(default_factory=list)  # timeline frames whose depth shows nothing
    strengths: dict[int, float] = field(default_factory=dict)  # keyframe's timeline frame -> strength (not 1)
    # Image files as keyframes: those used (timeline frame -> path as written).
    image_files: dict[int, str] = field(default_factory=dict)
    # Keyframes for encoders beside the request's modality (the RGB look: a render or image files), by modality:
    # timeline frame -> uint8 (h, w, 3); and as the PNGs sent (by encode()).
    further: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    further_passes: dict[str, dict[int, bytes]] = field(default_factory=dict)
    look_group: dict = field(default_factory=dict)  # the RGB look's keyframe_groups entry (core/request.look_group)
    pin: bool = False  # the RGB keyframes pinned (settings.pin)
    retake: Retake | None = None  # the span of a take this job regenerates (its body's "retake")
    reference: dict = field(default_factory=dict)  # the Look reference sent (core/reference.record); {}: none

    def encode(self) -> None:
        """The passes as PNG into the request body (once; later calls do nothing)."""
        if self.passes or self.dense_passes or self.further_passes:
            return
        started = time.perf_counter()
        by_index = {self.mapping[frame]: strength for frame, strength in self.strengths.items()}

        def entries(passes: dict[int, bytes], modality: str = "") -> list[dict]:
            # The server retimes the clip to the shot's frame count at the scene's rate, each keyframe's generated
            # frame on the keyframe's own timeline frame: the strip needs no retiming and lines up frame for frame.
            keyframes = [(self.mapping[frame], frame - self.start, png) for frame, png in passes.items()]
            pin = self.pin and (modality or self.body.get("modality")) == "rgb"
            return keyframe_entries(keyframes, by_index, modality, pin)

        self.passes = {frame: encode_png(image) for frame, image in self.images.items()}
        self.body["keyframes"] = entries(self.passes)
        for modality, images in self.further.items():
            self.further_passes[modality] = {frame: encode_png(image) for frame, image in images.items()}
            self.body["keyframes"] += entries(self.further_passes[modality], modality)
        if "rgb" in self.further_passes and self.look_group:  # only with the look's keyframes (older servers: none)
            self.body["keyframe_groups"] = [self.look_group]
        if self.dense_frames:  # each timeline frame's PNG made once (more generated frames than shot frames)
            self.dense_passes = {frame: encode_png(image) for frame, image in self.dense_images.items()}
            frames = [(i, self.dense_passes[frame]) for i, frame in enumerate(self.dense_frames)]
            self.body["controlnets"] = dense_entries(self.dense_strength, frames, self.dense_guidance)
        self.encode_seconds = time.perf_counter() - started

    @property
    def empty_message(self) -> str:
        if not self.empty_frames:
            return ""
        frames = ", ".join(map(str, self.empty_frames))
        modality = self.body.get("modality") or ""
        return (
            f"the {modality} pass is empty at keyframe{'s' if len(self.empty_frames) > 1 else ''} {frames}: "
            "the camera sees one flat colour there (nothing in view, or one surface filling the frame, such as a "
            "wall close to the lens), so the model gets no guidance there"
        )

    @property
    def empty_dense_message(self) -> str:
        if not self.empty_dense_frames:
            return ""
        frames = self.empty_dense_frames
        return (
            f"the depth pass is empty at frame{'s' if len(frames) > 1 else ''} {frame_list(frames)}: the camera "
            "sees one flat colour there (nothing in view, or one surface square to the lens)"
        )


def frame_list(frames: list[int], most: int = 8) -> str:
    """Frames for a message: "1, 2, 3" (past `most`: "... and 4 more")."""
    shown = ", ".join(map(str, frames[:most]))
    return shown + (f" and {len(frames) - most} more" if len(frames) > most else "")


def is_empty_pass(image) -> bool:
    """A pass that carries nothing: one flat colour over the whole image (all black, one grey)."""
    return bool((image == image[:1, :1]).all())


def write_passes(prepared: PreparedJob, folder: Path) -> list[Path]:
    prepared.encode()
    folder.mkdir(parents=True, exist_ok=True)
    # The keyframes' passes as frame_NNNN.png, the look's beside them named by their modality, depth every frame's.
    named = [("frame", prepared.passes), *prepared.further_passes.items(), ("depth", prepared.dense_passes)]
    paths = []
    for prefix, passes in named:
        for frame, png in passes.items():
            path = folder / f"{prefix}_{frame:04d}.png"
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
    # The newest preview fetched (with previews on): (step, frames, PNG), replaced whole, read by the UI.
    preview: tuple[int, int, bytes] | None = None


class JobRunner:
    """Submit, poll and download one job; no bpy, so it can run in a thread. `state` is read by the UI.
    `prepare` (PreparedJob.encode) finishes the body first, in the runner's thread. Its Python runs inside the
    render guard, let go of only while it sleeps between polls: a render never runs beside it (core/render_guard).
    `run` is submit, then poll until the job is over; the batch calls them itself, to wait on many jobs at once.
    `default_owner` (the login name) is sent as the job's owner unless the body names one or the server says the
    token is an artist's own ([auth]): then the server takes the owner from the token."""

    def __init__(
        self,
        client: Client,
        body: dict,
        poll_seconds: float = 0.25,
        lost_after: float = 10.0,
        prepare=None,
        guard: RenderGuard = GUARD,
        default_owner: str | None = None,
        previews: bool = False,
    ):
        self.client, self.body, self.prepare = client, body, prepare
        self.default_owner = default_owner
        self.previews = previews  # fetch the newest preview when the job says there is one (the panel)
        self.poll_seconds, self.lost_after = poll_seconds, lost_after
        self.guard = guard
        self.state = RunnerState()
        self._cancel = threading.Event()
        self._unreachable_since: float | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def cancel_now(self) -> bool:
        """Cancel the job on the server at once, for when no poll comes after (Blender quitting, the batch
        stopped by a signal). True when the server was told; a job not yet sent or already over: False."""
        s = self.state
        if s.job_id is None or self.over:
            return False
        try:
            self.client.cancel(s.job_id)
        except ServerError:
            return False
        s.phase = "cancelled"
        return True

    @property
    def over(self) -> bool:
        return self.state.phase in ("done", "failed", "cancelled")

    def run(self) -> RunnerState:
        with self.guard.thread_segment():
            self.submit()
            while not self.poll():
                self.guard.pause(self.poll_seconds)
            return self.state

    def submit(self) -> RunnerState:
        """Finish the body and send it; the state says "queued" (or "running"), or "failed" and why."""
        return self._guarded(self._submit)

    def poll(self) -> bool:
        """One look at the job, and its video once it succeeded: True when the job is over (done, failed or
        cancelled: the state says which), False to look again after a pause."""
        if not self.over:
            self._guarded(self._poll)
        return self.over

    def _guarded(self, step) -> RunnerState:
        s = self.state
        try:
            step()
        except ServerError as e:
            s.phase, s.error, s.lost = "failed", str(e), e.code == "lost"
        except Exception as e:  # noqa: BLE001 - the UI shows a message, never a traceback
            log.exception("generation failed")
            s.phase, s.error = "failed", f"unexpected error: {type(e).__name__}: {e}"
        return s

    def _submit(self) -> None:
        s = self.state
        if self.prepare is not None:
            self.prepare()
        if self.default_owner and "owner" not in self.body:
            if not self.client.token or not self.client.health().get("caller"):
                self.body["owner"] = self.default_owner
        accepted = self.client.submit(self.body)
        s.job_id, s.phase = accepted["id"], accepted["status"]

    def _poll(self) -> None:
        s = self.state
        if self._cancel.is_set():
            self.client.cancel(s.job_id)
            self._cancel.clear()
        try:
            job = self.client.job(s.job_id)
            self._unreachable_since = None
        except ServerError as e:
            if e.code not in ("unreachable", "timeout"):
                raise
            self._unreachable_since = self._unreachable_since or time.monotonic()
            if time.monotonic() - self._unreachable_since > self.lost_after:
                raise ServerError(
                    f"the server went away during job {s.job_id}: {e}. Start it again and press Generate to resubmit.",
                    "lost",
                ) from None
            return
        s.job = job
        s.step, s.total = job["progress"]["step"], job["progress"]["total"]
        if job["status"] in ("failed", "cancelled"):
            s.phase = job["status"]
            if job["status"] == "failed":
                err = job.get("error") or {}
                s.error = f"the server could not make the preview: {err.get('message', 'unknown error')}"
                if err.get("code") == "interrupted":  # abandoned by a server that stopped; nobody cancelled it
                    s.error = (
                        f"interrupted: the server stopped while job {s.job_id} was running (it was not cancelled); "
                        "generate again to resubmit"
                    )
            return
        if job["status"] != "succeeded":
            s.phase = job["status"]
            self._fetch_preview(job)
            return
        s.phase = "downloading"
        s.video = self.client.video(s.job_id)
        s.phase = "done"

    def _fetch_preview(self, job: dict) -> None:
        """The newest preview, when the job has one newer than the one held (servers before previews: none)."""
        step = job.get("preview_step")
        if not self.previews or not step or (self.state.preview and self.state.preview[0] >= step):
            return
        try:
            preview = self.client.preview(self.state.job_id)
        except ServerError as e:  # a preview missed is no reason to fail the job: the next poll tries again
            log.info("preview of job %s: %s", self.state.job_id, e)
            return
        if preview is not None:
            self.state.preview = preview


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
