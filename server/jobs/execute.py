"""The executor seam: one function runs a resolved job to its files, and every runner calls it.

The server's worker thread, `python -m server generate` and any remote worker differ only in where the request
comes from and where progress goes; what a job *is* — generate (engine), deliver (video/), write the video and
frames (atomically, never a partial file) — lives here once. Progress and cancellation pass straight through to
the engine's step callback.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..engine.engine import CancelCheck, Engine, GenerationResult, StepCallback
from ..request.model import GenerationRequest
from ..video.deliver import deliver
from ..video.encode import write_mp4, write_pngs


@dataclass(frozen=True)
class JobOutputs:
    video: Path  # the MP4
    frames: Path | None = None  # a folder for every delivered frame as NNNN.png; None: no PNGs


def run_job(
    engine: Engine,
    request: GenerationRequest,
    outputs: JobOutputs,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> GenerationResult:
    """Generate, deliver and write one job; the result carries the delivered frames. Raises JobCancelled."""
    result = engine.generate(request, on_step=on_step, should_cancel=should_cancel)
    frames = deliver(result.frames, request)
    if outputs.frames is not None:
        write_pngs(frames, outputs.frames)
    write_mp4(frames, request.fps, outputs.video)
    return dataclasses.replace(result, frames=frames)
