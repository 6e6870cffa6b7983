"""Each job's latest live preview (#29): kept in memory while the job runs, and as `preview.png` in its folder.

The step hook (engine/previews.py) hands in raw pixels; a thread here encodes the PNG and writes the file, so
the denoising step never waits on zlib. Only the newest preview of a job is kept: one that arrives while the
last is still being encoded replaces it (stale ones are dropped, never queued). The file carries its step and
tile count in PNG text chunks, so a finished job's preview is served from the file alone, while the job is
retained (the job's folder goes with it).
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import JobFiles

PREVIEW_FILE = "preview.png"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Preview:
    step: int  # the denoising step it shows, from 1
    frames: int  # tiles, side by side
    png: bytes


def encode_preview(step: int, frames: int, image: np.ndarray) -> Preview:
    """Raw pixels (h, frames * w, 3) as a Preview, its step and tile count in text chunks (fast zlib level)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("preview_step", str(step))
    info.add_text("preview_frames", str(frames))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return Preview(step, frames, buffer.getvalue())


def read_preview(path: Path) -> Preview | None:
    """A preview file, or None where there is none (or it is not one of ours)."""
    from PIL import Image

    try:
        png = path.read_bytes()
        text = Image.open(io.BytesIO(png)).text
        return Preview(int(text["preview_step"]), int(text["preview_frames"]), png)
    except (OSError, KeyError, ValueError):
        return None


class Previews:
    """The latest preview per job, encoded off the step's path by one thread."""

    def __init__(self, files: JobFiles):
        self.files = files
        self._latest: dict[str, Preview] = {}  # running jobs' newest encoded preview
        self._pending: dict[str, tuple[int, int, np.ndarray | None, Preview | None]] = {}
        self._busy: set[str] = set()  # jobs whose preview the thread is writing now
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._encode_loop, name="sparsectrl-previews", daemon=True)
        self._thread.start()

    def sink(self, job_id: str, frames: int):
        """The callable the step hook calls: (step, pixels) of this job."""
        return lambda step, image: self.offer(job_id, step, frames, image)

    def offer(self, job_id: str, step: int, frames: int, image: np.ndarray) -> None:
        """Raw pixels of a step; replaces a preview of the job not yet encoded."""
        with self._cond:
            self._pending[job_id] = (step, frames, image, None)
            self._cond.notify()

    def offer_encoded(self, job_id: str, preview: Preview) -> None:
        """An already encoded preview (a cluster worker's), to keep and write."""
        with self._cond:
            self._pending[job_id] = (preview.step, preview.frames, None, preview)
            self._cond.notify()

    def finish(self, job_id: str, timeout: float = 10.0) -> None:
        """The job ended: wait until its newest preview is in its file, then let the memory copy go."""
        with self._cond:
            self._cond.wait_for(lambda: job_id not in self._pending and job_id not in self._busy, timeout)
            self._latest.pop(job_id, None)

    def latest(self, job_id: str) -> Preview | None:
        """The newest preview: the running job's from memory, else the file's; None before the first step."""
        with self._cond:
            preview = self._latest.get(job_id)
        return preview if preview is not None else read_preview(self.files.folder(job_id) / PREVIEW_FILE)

    def step(self, job_id: str) -> int | None:
        """The newest preview's step (from memory, else the file's header alone), None before the first."""
        from PIL import Image

        with self._cond:
            preview = self._latest.get(job_id)
        if preview is not None:
            return preview.step
        try:
            with Image.open(self.files.folder(job_id) / PREVIEW_FILE) as image:
                return int(image.info["preview_step"])
        except (OSError, KeyError, ValueError):
            return None

    def _encode_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._pending))
                job_id, (step, frames, image, preview) = self._pending.popitem()
                self._busy.add(job_id)
            try:
                if preview is None:
                    preview = encode_preview(step, frames, image)
                self._write(job_id, preview)
            except Exception:  # noqa: BLE001 - a lost preview (its folder pruned, say) must not end the thread
                log.debug("preview of job %s not kept", job_id, exc_info=True)
            finally:
                with self._cond:
                    if preview is not None:
                        self._latest[job_id] = preview
                    self._busy.discard(job_id)
                    self._cond.notify_all()

    def _write(self, job_id: str, preview: Preview) -> None:
        folder = self.files.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{PREVIEW_FILE}.partial"
        partial.write_bytes(preview.png)
        partial.replace(folder / PREVIEW_FILE)
