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
    owner: str | None = Field(description="who submitted it, as given in the request (null if not given)")
    priority: int = Field(description="as given in the request (0 if not given); higher runs first")
    attempt: int = Field(description="how many times it was started (a job whose cluster worker was lost runs again)")
    worker: str | None = Field(description="the worker that runs or ran it")
    preview_step: int | None = Field(
        default=None, description="the step of the newest live preview (GET .../preview); null before the first"
    )

    @classmethod
    def of(cls, job: JobRecord, preview_step: int | None = None) -> JobOut:
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


class Health(BaseModel):
    status: Literal["ok", "starting"] = Field(
        description='"starting": a cluster\'s workers are still loading the model (the model fields are empty '
        "and jobs are refused with 503 workers_starting until one has); `starting` says why"
    )
    starting: str | None = Field(None, description="while status is starting: what the workers are doing")
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


class ModelsOut(BaseModel):
    model: ModelInfo
    device: str
    dtype: str
    modalities: list[Modality] = Field(description="modalities with a loaded encoder")
    loras: dict[str, float] = Field(description="loaded LoRAs: name -> default scale")
    controlnets: list[str] = Field(description="loaded per-frame ControlNets, by name")
    draft_motion_module: bool
    temporal_norm: str
    weights: list[WeightEntry] = Field(description="every weight the config names, as found at start")
