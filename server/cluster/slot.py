"""One GPU slot of a Ray cluster: an actor that loads the engine once and runs jobs through run_job.

The head sends a job's record and keyframe bytes; the slot runs it into a node-local temporary folder and sends
the MP4 and frames back as bytes (tens of MB), so nothing is written on shared paths and the head writes the
files it serves itself. Progress is read through `progress()`, in its own concurrency group so it answers while
a job runs; a cancel is Ray's own (`ray.cancel`), seen at the next step through `is_canceled()`. Memory is
released when the head finds no next job for the slot (`release_memory()`), never on a result's way back. The
live preview rides on the progress poll: the slot keeps only the newest one's pixels and encodes it when asked, so
a slow head drops stale previews instead of queueing them, and the steps never wait.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import ray

from ..config import Config
from ..engine.build import build_engine
from ..engine.engine import JobCancelled
from ..jobs.execute import JobOutputs, preview_hook, run_job
from ..jobs.failures import describe_failure
from ..jobs.model_info import ModelInfo
from ..jobs.previews import Preview, encode_preview
from ..request.model import TAKE_FRAMES, TAKE_LATENTS, GenerationRequest

log = logging.getLogger(__name__)


@ray.remote(max_restarts=0, max_task_retries=0, concurrency_groups={"ctl": 1})
class GenerationSlot:
    def __init__(self, config: Config, data_dir: str):
        logging.basicConfig(level=config.server.log_level.upper(), format="%(levelname)-7s %(name)s: %(message)s")
        self.data_dir = Path(data_dir).expanduser()
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, data_dir=str(self.data_dir)))
        self.engine = build_engine(config)
        self.info = ModelInfo.of(self.engine.model)
        self._progress: tuple[str, int, int] | None = None
        # The running job's newest live preview, raw: (job id, step, frames, pixels); encoded when progress() asks,
        # so the steps never wait on it, and one the head has not fetched yet is simply replaced (never queued).
        self._preview: tuple[str, int, int, Any] | None = None
        self._preview_sent: tuple[str, int] | None = None
        self.scratch = self.data_dir / "worker-outputs"
        self.scratch.mkdir(parents=True, exist_ok=True)
        _remove_dead_workers_scratch(self.scratch)

    def ready(self) -> dict[str, Any]:
        """What this slot offers, once its model is loaded (the head waits on this)."""
        context = ray.get_runtime_context()
        return {"model": self.info, "node_id": context.get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}

    def run(self, job_id: str, attempt: int, fields: dict[str, Any], images: dict[str, bytes]) -> dict[str, Any]:
        """Run one job: {"video", "frames", "seconds", "seed"} or {"error": (code, message)}; a cancel raises.
        "seconds" is the worker's own time, run_job's (generate, deliver, write the files): whatever the job's claim
        to finish takes beyond it is the dispatch's overhead (server/cluster/bench.py measures it that way)."""
        context = ray.get_runtime_context()
        self._progress = (job_id, attempt, 0)

        def on_step(step: int, total: int) -> None:
            self._progress = (job_id, attempt, step)

        tmp = Path(tempfile.mkdtemp(dir=self.scratch, prefix=f"{os.getpid()}-"))
        try:
            request = GenerationRequest.from_record(fields, images.__getitem__)
            frames = request.num_frames

            def on_preview(step: int, image) -> None:
                self._preview = (job_id, step, frames, image)

            hook = preview_hook(self.engine, on_preview)
            outputs = JobOutputs(video=tmp / "video.mp4", frames=tmp / "frames", folder=tmp)
            try:
                started = time.perf_counter()
                result = run_job(
                    self.engine, request, outputs, on_step=on_step, should_cancel=context.is_canceled, hooks=[hook]
                )
                seconds = time.perf_counter() - started
            except JobCancelled:
                raise  # the head sees Ray's TaskCancelledError
            except Exception as e:  # noqa: BLE001 - the job fails, the slot and its model live on
                code, message = describe_failure(e)
                if code == "generation_failed":
                    log.exception("job %s failed", job_id)
                return {"error": (code, message)}
            return {
                "video": outputs.video.read_bytes(),
                "frames": {p.name: p.read_bytes() for p in sorted(outputs.frames.glob("*.png"))},
                "take": {path: (tmp / path).read_bytes() for path in (TAKE_LATENTS, TAKE_FRAMES)},
                "seconds": seconds,
                "seed": result.seed,
                "preview": self._new_preview(),  # the last step's, if progress() had not fetched it
            }
        finally:
            self._progress, self._preview = None, None
            # Off the result's way back: removing the folder took 20-110 ms on a busy disk, longer than the rest
            # of the dispatch together. A slot killed before this runs leaves it to the next slot on the node.
            threading.Thread(target=shutil.rmtree, args=(tmp, True), daemon=True).start()

    @ray.method(concurrency_group="ctl")
    def release_memory(self) -> None:
        """Between jobs, once the slot is idle: collect cycles, return cached accelerator memory. Not in run():
        a full gc.collect takes 0.3-0.9 s with the model's objects, which every result and cancel would wait for."""
        self.engine.release_memory()

    @ray.method(concurrency_group="ctl")
    def progress(self) -> tuple[str, int, int, Preview | None] | None:
        """(job id, attempt, step, the newest live preview not sent yet or None) of the running job, or None."""
        progress = self._progress
        return None if progress is None else (*progress, self._new_preview())

    def _new_preview(self) -> Preview | None:
        """The newest preview as PNG, once (None when it was sent already)."""
        latest = self._preview
        if latest is None or self._preview_sent == latest[:2]:
            return None
        job_id, step, frames, image = latest
        self._preview_sent = (job_id, step)
        return encode_preview(step, frames, image)


def _remove_dead_workers_scratch(scratch: Path) -> None:
    """A slot killed mid-job (its node lost) leaves its scratch folder; the next slot on the node removes it."""
    for folder in scratch.iterdir():
        pid = folder.name.partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and os.path.exists("/proc/self"):
            shutil.rmtree(folder, ignore_errors=True)
