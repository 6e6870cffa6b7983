"""The FastAPI application: routes only; the work is in jobs.service."""

from contextlib import asynccontextmanager

from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse

from ..config import Config
from ..jobs.resolve import RequestError
from ..jobs.service import JobService
from .errors import error_response, install_error_handlers
from .pages import install_pages
from .schemas import ErrorResponse, Health, JobAccepted, JobList, JobOut, ModelsOut, job_create_model
from .security import RequestGuard, is_loopback_name

ERRORS = {
    401: {"model": ErrorResponse, "description": "missing or wrong token (when the server has one)"},
    403: {"model": ErrorResponse, "description": "request from a web page or for another host"},
    404: {"model": ErrorResponse, "description": "no such job"},
    409: {"model": ErrorResponse, "description": "the job is not in a state that allows this"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    422: {"model": ErrorResponse, "description": "invalid request"},
}


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, whether or not Content-Length is sent.

    With Content-Length, the header decides (the HTTP server holds the body to it). Without (chunked), the body
    is read here up to the limit and handed on whole.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                return await self._too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)

    async def _too_large(self, scope, receive, send):
        message = f"request body is larger than {self.max_bytes // 2**20} MiB (server.max_body_mb)"
        await error_response(413, "payload_too_large", message)(scope, receive, send)


def create_app(service: JobService, config: Config, token: str = "") -> FastAPI:
    """The app for `service`; `token` (server.token or SPARSECTRL_TOKEN) is required on every API call if set."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="SparseCtrl previs server",
        summary="Sparse keyframe conditions in, a short video out (AnimateDiff v3 + SparseCtrl).",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # served offline by install_pages, not from a CDN
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.server.max_body_mb * 2**20)
    if config.server.allowed_origins:  # CORS stays off unless origins are listed
        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.server.allowed_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # Added last, so it runs first: nothing else sees a refused request.
    app.add_middleware(
        RequestGuard,
        loopback_only=is_loopback_name(config.server.host),
        token=token,
        allowed_hosts=config.server.allowed_hosts,
        allowed_origins=config.server.allowed_origins,
    )
    JobCreate = job_create_model(config.limits)
    install_pages(app)

    @app.get("/v1/health", response_model=Health)
    def health():
        return service.health()

    @app.get("/v1/models", response_model=ModelsOut)
    def models():
        """What is loaded (modalities, LoRAs) and every weight the config names: where found, size, format."""
        return service.models()

    @app.post("/v1/jobs", status_code=202, response_model=JobAccepted, responses=ERRORS)
    def submit(body: JobCreate, response: Response):
        fields = body.model_dump()
        fields["keyframes"] = [k.model_dump() for k in body.keyframes]
        job = service.submit(fields)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobAccepted(id=job.id, status=job.status)

    @app.get("/v1/jobs", response_model=JobList)
    def list_jobs(limit: int = 50):
        return JobList(jobs=[JobOut.of(j) for j in service.store.list(max(1, min(limit, 500)))])

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
    def get_job(job_id: str):
        return JobOut.of(service.get(job_id))

    @app.delete("/v1/jobs/{job_id}", response_model=JobOut, responses=ERRORS)
    def cancel_job(job_id: str, response: Response):
        job = service.cancel(job_id)
        if job.status == "running":
            response.status_code = 202  # stops within one denoising step; poll until "cancelled"
        return JobOut.of(job)

    def _finished_output(job_id: str):
        job = service.get(job_id)
        if job.status != "succeeded":
            raise RequestError("not_ready", f"job {job_id} is {job.status}; its output exists once it succeeded", 409)
        return job

    @app.get(
        "/v1/jobs/{job_id}/video",
        response_class=FileResponse,
        responses={200: {"content": {"video/mp4": {}}}, **ERRORS},
    )
    def get_video(job_id: str):
        job = _finished_output(job_id)
        return FileResponse(service.files.video(job.id), media_type="video/mp4", filename=f"{job.id}.mp4")

    @app.get(
        "/v1/jobs/{job_id}/frames/{n}.png",
        response_class=FileResponse,
        responses={200: {"content": {"image/png": {}}}, **ERRORS},
    )
    def get_frame(job_id: str, n: int):
        job = _finished_output(job_id)
        frames = job.request.get("output_frames") or job.request["num_frames"]
        if not 0 <= n < frames:
            raise RequestError("not_found", f"frame {n} is outside 0..{frames - 1}", 404)
        return FileResponse(service.files.frame(job.id, n), media_type="image/png")

    return app
