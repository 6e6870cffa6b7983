"""Response bodies of the HTTP API (the request body is request/schema.py's); with it, the OpenAPI schema at
/docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..jobs.store import JobRecord
from ..request.model import MODALITIES

Modality = Literal[MODALITIES]  # type: ignore[valid-type]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class ErrorInfo(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorInfo


class Progress(BaseModel):
    step: int
    total: int


class JobAccepted(BaseModel):
    id: str
    status: JobStatus


class QueuePlace(BaseModel):
    position: int = Field(description="1: the next job to start, as the fair queue stands now")
    estimated_start_s: float | None = Field(
        description="about how many seconds until it starts, from the recent jobs' speed (null before any finished)"
    )


class JobOut(BaseModel):
    id: str
    status: JobStatus
    progress: Progress
    error: ErrorInfo | None
    request: dict[str, Any] = Field(description="the resolved request (defaults applied), keyframes without images")
    seed: int
    model: str
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    video_url: str | None = Field(description="where the MP4 is served once the job succeeded")
    owner: str | None = Field(
        description="who submitted it: as given in the request, or the artist whose [auth] token sent it (null: none)"
    )
    priority: int = Field(description="as given in the request (0 if not given); higher runs first")
    attempt: int = Field(description="how many times it was started (a job whose cluster worker was lost runs again)")
    worker: str | None = Field(description="the worker that runs or ran it")
    queue: QueuePlace | None = Field(None, description="a queued job's place in the queue (null once it started)")
    preview_step: int | None = Field(
        default=None, description="the step of the newest live preview (GET .../preview); null before the first"
    )

    @classmethod
    def of(cls, job: JobRecord, place: dict[str, Any] | None = None, preview_step: int | None = None) -> JobOut:
        error = ErrorInfo(code=job.error_code, message=job.error_message or "") if job.error_code else None
        return cls(
            id=job.id,
            status=job.status,
            progress=Progress(step=job.step, total=job.total),
            error=error,
            request=job.request,
            seed=job.seed,
            model=job.model,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            video_url=f"/v1/jobs/{job.id}/video" if job.status == "succeeded" else None,
            owner=job.owner,
            priority=job.priority,
            attempt=job.attempt,
            worker=job.worker,
            queue=QueuePlace(**place) if place and job.status == "queued" else None,
            preview_step=preview_step,
        )


class JobList(BaseModel):
    jobs: list[JobOut]


class ModelInfo(BaseModel):
    name: str
    tiny: bool


class WorkerOut(BaseModel):
    name: str = Field(description='"local", or NODE/SLOT on a Ray cluster')
    node: str = Field(description="the host (Ray: its node id and address)")
    state: Literal["starting", "idle", "running", "failed"]
    job: str | None = Field(description="the job it is running")
    model: str | None = Field(description="the model it has loaded (null while starting)")
    device: str | None
    error: str | None = Field(description="why it failed to start (state failed)")


class Caller(BaseModel):
    owner: str
    max_priority: int


class Health(BaseModel):
    status: Literal["ok", "starting", "degraded"] = Field(
        description='"starting": a cluster\'s workers are still loading the model (the model fields are empty '
        'and jobs are refused with 503 workers_starting until one has); `starting` says why. "degraded": jobs '
        "are accepted but none will run (`problem`)"
    )
    starting: str | None = Field(None, description="while status is starting: what the workers are doing")
    problem: str | None = Field(None, description="what is wrong when status is degraded")
    api_version: int = Field(description="the HTTP API version this server speaks (the add-on compares its own)")
    device: str
    dtype: str
    model: ModelInfo
    modalities: list[Modality]
    loras: list[str] = Field(description="LoRA names a request may turn on (GET /v1/models has the details)")
    controlnets: list[str] = Field(description="per-frame ControlNets loaded, by their [model.controlnets] name")
    draft_motion_module: bool = Field(description='quality "draft" uses a distilled motion module')
    queue_length: int = Field(description="jobs waiting, not counting the running ones")
    running_job: str | None = Field(description="a running job (the first worker's); `workers` has them all")
    backend: Literal["local", "ray"] = Field(description="[cluster] backend: this process, or a Ray cluster")
    workers: list[WorkerOut]
    caller: Caller | None = Field(
        None, description="the artist whose [auth] token asked: their jobs' owner and highest priority"
    )


class WeightEntry(BaseModel):
    role: str = Field(
        description="base, vae, tokenizer, motion_adapter, draft_motion_adapter, domain_adapter, encoder, "
        "controlnet or lora"
    )
    name: str = Field(description="the modality for encoders, the name for ControlNets and LoRAs, else the role")
    ref: str = Field(description="as configured")
    found: bool
    path: str | None
    source: str | None = Field(description="path, search (model folders), hf-cache, built (tiny)")
    format: str | None = Field(description="diffusers folder, .safetensors, .ckpt, tiny random model")
    size_bytes: int | None
    loadable: bool | None = Field(description="its contents match the role (None: not checked)")
    detail: str
    condition_input: str | None = Field(description='encoders: "latents" (RGB-type) or "pixels" (scribble-type)')


class IPAdapterOut(BaseModel):
    name: str = Field(description="the adapter file's name, e.g. ip-adapter-plus_sd15")
    kind: Literal["plain", "plus", "plus-face"]
    image_encoder: str | None = Field(description="where its CLIP image encoder was found")


class ModelsOut(BaseModel):
    model: ModelInfo
    device: str
    dtype: str
    modalities: list[Modality] = Field(description="modalities with a loaded encoder")
    loras: dict[str, float] = Field(description="loaded LoRAs: name -> default scale")
    controlnets: list[str] = Field(description="loaded per-frame ControlNets, by name")
    draft_motion_module: bool
    ip_adapter: IPAdapterOut | None = Field(
        description="the IP-Adapter a job's reference uses; null: none configured (a reference is refused)"
    )
    temporal_norm: str
    weights: list[WeightEntry] = Field(description="every weight the config names, as found at start")
