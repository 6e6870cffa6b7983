"""The executor seam: one function runs a resolved job to its files, and every runner calls it.

The server's worker thread, `python -m server generate` and any remote worker differ only in where the request
comes from and where progress goes; what a job *is* — generate (engine), deliver (video/), write the video and
frames (atomically, never a partial file) — lives here once. Progress and cancellation pass straight through to
the engine's step callback.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..engine.engine import CancelCheck, Engine, GenerationResult, StepCallback
from ..engine.previews import PreviewHook, PreviewSink
from ..engine.step_hooks import StepHook
from ..request.model import TAKE_FRAMES, TAKE_LATENTS, GenerationRequest
from ..video.deliver import deliver
from ..video.encode import write_mp4, write_pngs


@dataclass(frozen=True)
class JobOutputs:
    video: Path  # the MP4
    frames: Path | None = None  # a folder for every delivered frame as NNNN.png; None: no PNGs
    folder: Path | None = None  # the job's folder, for its take (TAKE_LATENTS, TAKE_FRAMES); None: not kept


def run_job(
    engine: Engine,
    request: GenerationRequest,
    outputs: JobOutputs,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    hooks: Sequence[StepHook] = (),
) -> GenerationResult:
    """Generate, deliver and write one job; the result carries the delivered frames. Raises JobCancelled. The
    take (final latents and generated frames, what a retake of this job keeps) is written first: a job whose
    video exists has its take. `hooks`: further step hooks for the engine (a live preview: preview_hook)."""
    result = engine.generate(request, on_step=on_step, should_cancel=should_cancel, hooks=hooks)
    if outputs.folder is not None and result.latents is not None:
        write_take(result, outputs.folder)
    frames = deliver(result.frames, request)
    if outputs.frames is not None:
        write_pngs(frames, outputs.frames)
    write_mp4(frames, request.fps, outputs.video)
    return dataclasses.replace(result, frames=frames)


def preview_hook(engine: Engine, sink: PreviewSink) -> PreviewHook:
    """A live preview of the job for `sink` (step, pixels), with the engine's TAESD where it has one."""
    return PreviewHook(sink, engine.preview_decoder)


def take_files(result: GenerationResult) -> dict[str, bytes]:
    """A result's take as .npy bytes by their path in the job's folder (a cluster worker sends them so)."""
    files = {}
    for path, array in ((TAKE_LATENTS, result.latents), (TAKE_FRAMES, result.generated)):
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        files[path] = buffer.getvalue()
    return files


def write_take(result: GenerationResult, folder: Path) -> None:
    """The take in the job's folder, each file renamed into place when whole."""
    for path, data in take_files(result).items():
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        partial.replace(target)
