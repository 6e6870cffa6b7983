"""Request and response bodies of the HTTP API; these models are the OpenAPI schema at /docs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..config import Limits
from ..engine.request import SCHEDULER_NAMES
from ..jobs.resolve import SEED_MAX
from ..jobs.store import JobRecord

Modality = Literal["lineart", "rgb", "depth"]
SchedulerName = Literal[SCHEDULER_NAMES]  # type: ignore[valid-type]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
OWNER_MAX_CHARS = 64
OWNER_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # no control characters (newlines, escapes)


def job_create_model(limits: Limits) -> type[BaseModel]:
    """The POST /v1/jobs body, with the configured limits in its schema (so /docs and clients see them)."""

    class KeyframeIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        index: int = Field(ge=0, le=limits.max_frames - 1, description="0-based generated frame it conditions")
        image: str = Field(min_length=1, description="base64-encoded PNG (JPEG and WebP are accepted too)")
        output_index: int | None = Field(
            None,
            ge=0,
            le=limits.max_output_frames - 1,
            description="with output_frames: the delivered frame that must show this keyframe's generated frame",
        )

    size = dict(ge=limits.min_size, le=limits.max_size, multiple_of=8)

    class LoraIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        name: str = Field(min_length=1, max_length=64, description="a LoRA name from GET /v1/models (never a path)")
        scale: float | None = Field(None, ge=-4, le=4, description="strength; omitted: the configured default")

    class JobCreate(BaseModel):
        """A generation request. Omitted optional fields take the server's configured defaults."""

        model_config = ConfigDict(extra="forbid", strict=True)
        prompt: str = Field(max_length=limits.max_prompt_chars)
        negative_prompt: str | None = Field(None, max_length=limits.max_prompt_chars)
        modality: Modality
        num_frames: int | None = Field(None, ge=1, le=limits.max_frames)
        width: int | None = Field(None, **size)
        height: int | None = Field(None, **size)
        steps: int | None = Field(None, ge=1, le=limits.max_steps)
        guidance_scale: float | None = Field(None, ge=0, le=limits.max_guidance_scale)
        conditioning_scale: float | None = Field(None, ge=0, le=limits.max_conditioning_scale)
        seed: int | None = Field(None, ge=0, le=SEED_MAX)
        scheduler: SchedulerName | None = None  # type: ignore[valid-type]
        fps: int | None = Field(None, ge=1, le=limits.max_fps)
        quality: Literal["final", "draft"] | None = Field(
            None, description="draft: smaller and fewer steps ([draft] in the config), scaled up to width x height"
        )
        output_frames: int | None = Field(
            None,
            ge=1,
            le=limits.max_output_frames,
            description="retime the clip to this many frames (e.g. the shot's length), keyframes pinned",
        )
        keyframes: list[KeyframeIn] = Field(min_length=1, max_length=limits.max_frames)
        loras: list[LoraIn] | None = Field(None, max_length=8, description="configured LoRAs to turn on")
        owner: str | None = Field(
            None,
            min_length=1,
            max_length=OWNER_MAX_CHARS,
            pattern=OWNER_PATTERN,
            description="who submitted the job (a name, for the queue page); not checked against anything",
        )

    return JobCreate


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

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
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
        )


class JobList(BaseModel):
    jobs: list[JobOut]


class ModelInfo(BaseModel):
    name: str
    tiny: bool


class Health(BaseModel):
    status: Literal["ok"]
    device: str
    dtype: str
    model: ModelInfo
    modalities: list[Modality]
    loras: list[str] = Field(description="LoRA names a request may turn on (GET /v1/models has the details)")
    draft_motion_module: bool = Field(description='quality "draft" uses a distilled motion module')
    queue_length: int = Field(description="jobs waiting, not counting the running one")
    running_job: str | None


class WeightEntry(BaseModel):
    role: str = Field(
        description="base, vae, tokenizer, motion_adapter, draft_motion_adapter, domain_adapter, encoder or lora"
    )
    name: str = Field(description="the modality for encoders, the LoRA's name for LoRAs, else the role")
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
    draft_motion_module: bool
    temporal_norm: str
    weights: list[WeightEntry] = Field(description="every weight the config names, as found at start")
