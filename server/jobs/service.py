"""The job service the HTTP layer talks to: submit, look up, cancel, health. Owns the store and the executor:
the local worker thread ([cluster] backend = "local": this process holds the engine) or the Ray dispatcher
("ray": the engines live on the cluster's GPU nodes; server/cluster/, imported only then)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..config import Config, ConfigError
from ..engine.engine import Engine, random_seed
from ..request.errors import JobNotFound, RequestError
from ..request.model import TAKE_FRAMES, TAKE_LATENTS, GenerationRequest
from ..request.owner import ArtistToken
from ..request.resolve import resolve_request
from ..weights.inventory import inventory
from .files import JobFiles, is_job_id
from .previews import Preview, Previews
from .retention import prune
from .store import RUNNING, JobRecord, JobStore, work
from .worker import Worker

log = logging.getLogger(__name__)

# The version of the HTTP API (/v1/...) this server speaks; /v1/health says it, and the add-on compares it with its
# own (sparsectrl_blender/core/client.py API_VERSION) to tell the artist when they differ.
API_VERSION = 1


class JobService:
    def __init__(self, config: Config, engine: Engine | None, data_dir: Path, progress_bar: bool = True):
        """`engine`: the loaded engine for the local backend; None with [cluster] backend = "ray"."""
        self.config = config
        cluster = config.cluster.backend == "ray"
        self.store = JobStore(Path(data_dir) / "jobs.sqlite3", requeue_running=cluster)
        self.files = JobFiles(Path(data_dir) / "jobs")
        self.previews = Previews(self.files)
        if cluster:
            try:
                from ..cluster.dispatcher import RayDispatcher
            except ImportError as e:
                raise ConfigError(
                    f'[cluster] backend = "ray" needs Ray on this machine ({e}): pip install -e ".[cluster]"'
                ) from None

            self.worker = RayDispatcher(config, self.store, self.files, after_job=self.prune, previews=self.previews)
        else:
            assert engine is not None, "the local backend runs jobs on an engine loaded here"
            self.worker = Worker(
                engine, self.store, self.files, progress_bar=progress_bar, after_job=self.prune, previews=self.previews
            )
        # Every weight the config names, as found at start (header checks only: everything is loaded already).
        self.weights = inventory(config.model)
        for job_id in self.store.requeued_on_open:
            log.warning("job %s was running when the server last stopped: queued again", job_id)
        for job_id in self.store.interrupted_on_open:
            log.warning("job %s was running when the server last stopped: marked failed (interrupted)", job_id)

    def start(self) -> None:
        """Start the executor; with Ray, returns once a worker has loaded its model (requests are checked
        against what it offers)."""
        self.prune()
        self.worker.start()

    def prune(self) -> list[str]:
        return prune(self.store, self.files, self.config.retention)

    def stop(self) -> None:
        self.worker.stop()
        self.store.close()

    def submit(self, body: dict[str, Any] | BaseModel, artist: ArtistToken | None = None) -> JobRecord:
        """Queue a request: a POST /v1/jobs body (FastAPI has validated it) or the same as a dict. `artist`: the
        [auth] token it came with, which names its owner and bounds its priority (checked before any decoding)."""
        owner, priority = (body.get(k) if isinstance(body, dict) else getattr(body, k) for k in ("owner", "priority"))
        if artist is not None:
            owner, priority = artist.claim(owner, priority)
        model = self.worker.model
        request = resolve_request(
            body,
            self.config,
            model.modalities,
            seed=random_seed(),
            draft_adapter=model.draft_motion_module,
            loras=model.loras,
            controlnets=model.controlnets,
            ip_adapter=model.ip_adapter is not None,
        )
        if request.retake is not None:
            request = self._with_take(request)
        job_id = uuid.uuid4().hex
        fields, images = request.to_record()
        # Files first: the worker may claim the job the moment its record exists.
        self.files.save_images(job_id, images)
        record = self.store.create(
            job_id, fields, request.seed, model.name, request.steps, owner=owner, priority=priority or 0
        )
        self.worker.wake()
        log.info(
            "job %s queued: %s, %d frames %dx%d, %d steps, keyframes %s, controlnets %s",
            job_id,
            request.modality or "no keyframes",
            request.num_frames,
            request.width,
            request.height,
            request.steps,
            [k.index for k in request.keyframes],
            [f"{g.name} x{len(g.frames)}" for g in request.controlnets],
        )
        return record

    def _with_take(self, request: GenerationRequest) -> GenerationRequest:
        """A retake with its parent's take attached (copied into the new job's folder with its record): the
        parent exists, succeeded, still has its take, and was generated at this request's size and frames."""
        retake = request.retake
        assert retake is not None
        parent = self.store.get(retake.job) if is_job_id(retake.job) else None
        if parent is None:
            raise RequestError(
                "invalid_retake",
                f"retake.job {retake.job[:64]!r}: no such job on this server (never submitted here, or pruned by "
                "[retention]); retake a take the server still lists",
            )
        if parent.status != "succeeded":
            raise RequestError(
                "invalid_retake", f"retake.job {parent.id} is {parent.status}: only a succeeded job can be retaken"
            )
        asked = (request.width, request.height, request.num_frames)
        had = tuple(parent.request.get(k) for k in ("width", "height", "num_frames"))
        if asked != had:
            raise RequestError(
                "invalid_retake",
                f"retake.job {parent.id} was generated at {had[0]}x{had[1]} with {had[2]} frames; this request at "
                f"{asked[0]}x{asked[1]} with {asked[2]}: a retake keeps the take's generated size and frame count "
                "(a draft generates smaller: retake a draft with a draft, a final take with a final)",
            )
        try:
            latents, frames = (self.files.read_image(parent.id, path) for path in (TAKE_LATENTS, TAKE_FRAMES))
        except OSError:
            raise RequestError(
                "invalid_retake",
                f"retake.job {parent.id} has no take kept (it finished before this server kept takes, or its "
                "files were removed): generate it again, then retake",
            ) from None
        return dataclasses.replace(
            request, retake=dataclasses.replace(retake, latents_data=latents, frames_data=frames)
        )

    def get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id) if is_job_id(job_id) else None
        if record is None:
            raise JobNotFound(job_id)
        return record

    def preview(self, job_id: str) -> Preview:
        """The job's newest live preview; not_found before its first step."""
        job = self.get(job_id)
        preview = self.previews.latest(job.id)
        if preview is None:
            raise RequestError("not_found", f"job {job.id} has no preview yet (one comes after its first step)")
        return preview

    def preview_step(self, job_id: str) -> int | None:
        """The step of the job's newest preview, None before the first."""
        return self.previews.step(job_id)

    def list_jobs(self, limit: int = 50) -> list[JobRecord]:
        """The newest jobs first, at most `limit` (1 to 500)."""
        return self.store.list(max(1, min(limit, 500)))

    def queue_places(self) -> dict[str, dict[str, Any]]:
        """Each queued job's place in the queue (1: next) and, once a job has succeeded to time by, an estimate of
        the seconds until it starts: the work before it (the running jobs' remaining steps, the queued jobs ahead;
        steps x frames x pixels) at the recent jobs' median speed, shared among the workers."""
        rate = self.store.recent_seconds_per_work()
        workers = max(1, len(self.worker.workers()))
        ahead = sum(work(j.request, j.total - j.step) for j in self.store.running())
        places = {}
        for position, job in enumerate(self.store.queue_order(), start=1):
            eta = None if rate is None else round(ahead * rate / workers, 1)
            places[job.id] = {"position": position, "estimated_start_s": eta}
            ahead += work(job.request, job.total)
        return places

    def video(self, job_id: str) -> Path:
        """A succeeded job's MP4."""
        return self.files.video(self._succeeded(job_id).id)

    def frame(self, job_id: str, n: int) -> Path:
        """Delivered frame n of a succeeded job as PNG (decoded from the video if the PNGs were pruned)."""
        job = self._succeeded(job_id)
        frames = job.request.get("output_frames") or job.request["num_frames"]
        if not 0 <= n < frames:
            raise RequestError("not_found", f"frame {n} is outside 0..{frames - 1}")
        return self.files.frame(job.id, n)

    def _succeeded(self, job_id: str) -> JobRecord:
        job = self.get(job_id)
        if job.status != "succeeded":
            raise RequestError("not_ready", f"job {job_id} is {job.status}; its output exists once it succeeded")
        return job

    def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.finished:
            raise RequestError("job_finished", f"job {job_id} is already {record.status}")
        record = self.store.cancel(job_id)
        assert record is not None
        if record.status == RUNNING:
            self.worker.request_cancel(job_id)
        return record

    def health(self, artist: ArtistToken | None = None) -> dict[str, Any]:
        """The model and the workers; while a cluster's workers load the model, status "starting" and why; once
        the worker thread has ended, "degraded". `caller`: the artist whose token asked (None: the shared token)."""
        workers = self.worker.workers()
        starting = self.worker.starting() if self.config.cluster.backend == "ray" else None  # one box: loaded
        common = {
            "api_version": API_VERSION,
            "queue_length": self.store.queue_length(),
            "running_job": next((w["job"] for w in workers if w["job"]), None),
            "backend": self.config.cluster.backend,
            "workers": workers,
            "caller": None if artist is None else {"owner": artist.owner, "max_priority": artist.max_priority},
        }
        if starting:
            return {
                "status": "starting",
                "starting": starting,
                "device": "",
                "dtype": "",
                "model": {"name": "", "tiny": False},
                "modalities": [],
                "loras": [],
                "controlnets": [],
                "draft_motion_module": False,
                **common,
            }
        model = self.worker.model
        alive = getattr(self.worker, "alive", True)
        return {
            "status": "ok" if alive else "degraded",
            "problem": None if alive else "the worker has stopped: queued jobs will not run; restart the server",
            "device": model.device,
            "dtype": model.dtype,
            "model": {"name": model.name, "tiny": model.tiny},
            "modalities": model.modalities,
            "loras": sorted(model.loras),
            "controlnets": model.controlnets,
            "draft_motion_module": model.draft_motion_module,
            **common,
        }

    def models(self) -> dict[str, Any]:
        model = self.worker.model
        return {
            "model": {"name": model.name, "tiny": model.tiny},
            "device": model.device,
            "dtype": model.dtype,
            "modalities": model.modalities,
            "loras": dict(model.loras),
            "controlnets": model.controlnets,
            "draft_motion_module": model.draft_motion_module,
            "ip_adapter": model.ip_adapter,
            "temporal_norm": self.config.model.temporal_norm,
            "weights": [e.to_dict() for e in self.weights],
        }
