"""The API's routes (/v1/...): thin, everything goes through the job service; errors are api/errors.py's.

No `from __future__ import annotations` here: FastAPI reads the body type (a class built per config) from
the annotation itself."""

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel

from ..jobs.service import JobService
from .schemas import ErrorResponse, Health, JobAccepted, JobList, JobOut, ModelsOut

ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or wrong token (when the server has one)"},
    403: {"model": ErrorResponse, "description": "request from a web page or for another host"},
    404: {"model": ErrorResponse, "description": "no such job"},
    409: {"model": ErrorResponse, "description": "the job is not in a state that allows this"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid request"},
}


def api_routes(service: JobService, JobCreate: type[BaseModel]) -> APIRouter:  # noqa: N803 - a class
    """The routes over `service`; `JobCreate` is the POST /v1/jobs body (request/schema.py, with the limits)."""
    app = APIRouter()

    @app.get("/v1/health", response_model=Health)
    def health():
        return service.health()

    @app.get("/v1/models", response_model=ModelsOut)
    def models():
        """What is loaded (modalities, LoRAs) and every weight the config names: where found, size, format."""
        return service.models()

    @app.post("/v1/jobs", status_code=202, response_model=JobAccepted, responses=ERRORS)
    def submit(body: JobCreate, response: Response):
        job = service.submit(body)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobAccepted(id=job.id, status=job.status)

    @app.get("/v1/jobs", response_model=JobList)
    def list_jobs(limit: int = 50):
        return JobList(jobs=[JobOut.of(j, service.preview_step(j.id)) for j in service.list_jobs(limit)])

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
    def get_job(job_id: str):
        job = service.get(job_id)
        return JobOut.of(job, service.preview_step(job.id))

    @app.delete("/v1/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
    def cancel_job(job_id: str, response: Response):
        job = service.cancel(job_id)
        if job.status == "running":
            response.status_code = 202  # stops within one denoising step; poll until "cancelled"
        return JobOut.of(job, service.preview_step(job.id))

    @app.get(
        "/v1/jobs/{job_id}/video",
        response_class=FileResponse,
        responses={200: {"content": {"video/mp4": {}}}, **ERRORS},
    )
    def get_video(job_id: str):
        return FileResponse(service.video(job_id), media_type="video/mp4", filename=f"{job_id}.mp4")

    @app.get(
        "/v1/jobs/{job_id}/frames/{n}.png",
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
    )
    def get_frame(job_id: str, n: int):
        return FileResponse(service.frame(job_id, n), media_type="image/png")

    @app.get(
        "/v1/jobs/{job_id}/preview",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
    )
    def get_preview(job_id: str):
        """The newest live preview: every generated frame side by side, frame 0 leftmost (X-Preview-Frames tiles),
        at latent size (TAESD: larger); X-Preview-Step: the denoising step it shows, from 1."""
        preview = service.preview(job_id)
        headers = {
            "X-Preview-Step": str(preview.step),
            "X-Preview-Frames": str(preview.frames),
            "Cache-Control": "no-store",
        }
        return Response(preview.png, media_type="image/png", headers=headers)

    return app
