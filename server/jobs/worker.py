"""The single worker: takes queued jobs in queue order (jobs/store.py) and runs them on the engine, one at a time.

It runs in a thread of the server process; torch releases the GIL in its kernels, so the HTTP side keeps
answering while a job runs. An exception fails only its job; the worker lives on.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable

from tqdm import tqdm

from ..engine.engine import Engine, JobCancelled
from ..request.model import GenerationRequest
from .execute import JobOutputs, preview_hook, run_job
from .failures import describe_failure
from .files import JobFiles
from .model_info import ModelInfo
from .previews import Previews
from .store import CANCELLED, FAILED, SUCCEEDED, JobRecord, JobStore

log = logging.getLogger(__name__)


class Worker:
    def __init__(
        self,
        engine: Engine,
        store: JobStore,
        files: JobFiles,
        progress_bar: bool = True,
        after_job: Callable[[], object] | None = None,
        previews: Previews | None = None,
    ):
        self.engine, self.store, self.files = engine, store, files
        self.previews = previews  # where each job's live preview goes (None: no previews)
        self.model = ModelInfo.of(engine.model)  # what the loaded model offers: fixed once it has loaded
        self.after_job = after_job  # called after every job (the service prunes old results there)
        self.progress_bar = progress_bar
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._current: str | None = None
        self._thread = threading.Thread(target=self._loop, name="sparsectrl-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current step; a job cut short is recorded as interrupted."""
        self._stopping.set()
        self._cancel.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def request_cancel(self, job_id: str) -> None:
        with self._lock:
            if self._current == job_id:
                self._cancel.set()

    def workers(self) -> list[dict]:
        """This process's one worker, as /v1/health lists workers."""
        model = self.model
        return [
            {
                "name": "local",
                "node": socket.gethostname(),
                "state": "running" if self._current else "idle",
                "job": self._current,
                "model": model.name,
                "device": model.device,
                "error": None,
            }
        ]

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self.store.claim_next(worker="local")
            if job is None:
                self._wake.wait(timeout=1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: JobRecord) -> None:
        with self._lock:
            self._current = job.id
            self._cancel.clear()
        # A cancel that arrived between claiming and the line above is in the record.
        latest = self.store.get(job.id)
        if latest is not None and latest.cancel_requested:
            self._cancel.set()

        bar = tqdm(
            total=job.total,
            desc=f"job {job.id[:8]}",
            unit="step",
            file=sys.stderr,
            disable=not self.progress_bar,
            dynamic_ncols=True,
        )

        def on_step(step: int, total: int) -> None:
            self.store.set_progress(job.id, step)
            bar.update(step - bar.n)

        try:
            request = GenerationRequest.from_record(job.request, lambda path: self.files.read_image(job.id, path))
            outputs = JobOutputs(self.files.video(job.id), self.files.frames(job.id), self.files.folder(job.id))
            hooks = []
            if self.previews is not None:
                hooks.append(preview_hook(self.engine, self.previews.sink(job.id, request.num_frames)))
            result = run_job(
                self.engine, request, outputs, on_step=on_step, should_cancel=self._cancel.is_set, hooks=hooks
            )
            self.store.finish(job.id, SUCCEEDED)
            peak = f", peak {result.peak_memory_bytes / 2**30:.2f} GiB" if result.peak_memory_bytes else ""
            log.info("job %s succeeded in %.1f s (seed %d%s)", job.id, result.seconds, result.seed, peak)
        except JobCancelled:
            self.files.remove_outputs(job.id)
            if self._stopping.is_set():
                self.store.finish(job.id, FAILED, "interrupted", "the server stopped while this job was running")
                log.info("job %s interrupted by shutdown", job.id)
            else:
                self.store.finish(job.id, CANCELLED)
                log.info("job %s cancelled", job.id)
        except Exception as e:  # noqa: BLE001 - a job's failure must never end the worker
            self.files.remove_outputs(job.id)  # never serve a partial result
            code, message = describe_failure(e)
            self.store.finish(job.id, FAILED, code, message)
            if code == "generation_failed":
                log.exception("job %s failed", job.id)
            else:
                log.error("job %s failed: %s (%s)", job.id, code, e)
        finally:
            bar.close()
            if self.previews is not None:
                self.previews.finish(job.id)
            with self._lock:
                self._current = None
            self.engine.release_memory()
            if self.after_job is not None:
                self.after_job()
