"""The job service the HTTP layer talks to: submit, look up, cancel, health. Owns the store and the worker."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from ..config import Config
from ..engine.engine import Engine, random_seed
from ..weights.inventory import inventory
from .files import JobFiles, is_job_id
from .resolve import RequestError, resolve_request
from .retention import prune
from .store import RUNNING, JobRecord, JobStore
from .worker import Worker

log = logging.getLogger(__name__)


class JobNotFound(LookupError):
    pass


class JobService:
    def __init__(self, config: Config, engine: Engine, data_dir: Path, progress_bar: bool = True):
        self.config, self.engine = config, engine
        self.store = JobStore(Path(data_dir) / "jobs.sqlite3")
        self.files = JobFiles(Path(data_dir) / "jobs")
        self.worker = Worker(engine, self.store, self.files, progress_bar=progress_bar, after_job=self.prune)
        # Every weight the config names, as found at start (header checks only: everything is loaded already).
        self.weights = inventory(config.model)
        for job_id in self.store.interrupted_on_open:
            log.warning("job %s was running when the server last stopped: marked failed (interrupted)", job_id)

    def start(self) -> None:
        self.prune()
        self.worker.start()

    def prune(self) -> list[str]:
        return prune(self.store, self.files, self.config.retention)

    def stop(self) -> None:
        self.worker.stop()
        self.store.close()

    def submit(self, fields: dict[str, Any]) -> JobRecord:
        resolved = resolve_request(
            fields,
            self.config,
            self.engine.modalities,
            seed=random_seed(),
            draft_adapter=self.engine.model.has_draft_adapter,
            loras=self.engine.model.loras,
        )
        job_id = uuid.uuid4().hex
        # Files first: the worker may claim the job the moment its record exists.
        self.files.save_keyframes(job_id, resolved.keyframe_pngs())
        request = resolved.request
        record = self.store.create(
            job_id, resolved.echo(), request.seed, self.engine.model.name, request.steps, owner=fields.get("owner")
        )
        self.worker.wake()
        log.info(
            "job %s queued: %s, %d frames %dx%d, %d steps, keyframes %s",
            job_id,
            request.modality,
            request.num_frames,
            request.width,
            request.height,
            request.steps,
            [k.index for k in request.keyframes],
        )
        return record

    def get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id) if is_job_id(job_id) else None
        if record is None:
            raise JobNotFound(job_id)
        return record

    def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.finished:
            raise RequestError("job_finished", f"job {job_id} is already {record.status}", status=409)
        record = self.store.cancel(job_id)
        assert record is not None
        if record.status == RUNNING:
            self.worker.request_cancel(job_id)
        return record

    def health(self) -> dict[str, Any]:
        model = self.engine.model
        return {
            "status": "ok",
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "model": {"name": model.name, "tiny": model.tiny},
            "modalities": self.engine.modalities,
            "loras": sorted(model.loras),
            "draft_motion_module": model.has_draft_adapter,
            "queue_length": self.store.queue_length(),
            "running_job": self.worker.current_job_id,
        }

    def models(self) -> dict[str, Any]:
        model = self.engine.model
        return {
            "model": {"name": model.name, "tiny": model.tiny},
            "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."),
            "modalities": self.engine.modalities,
            "loras": dict(model.loras),
            "draft_motion_module": model.has_draft_adapter,
            "temporal_norm": self.config.model.temporal_norm,
            "weights": [e.to_dict() for e in self.weights],
        }
