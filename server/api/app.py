"""The FastAPI application: routes only; the work is in jobs.service."""

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from ..config import Config
from ..jobs.service import JobService
from ..request.schema import body_model
from .errors import error_response, install_error_handlers
from .extensions import extension_routes
from .pages import install_pages
from .routes import api_routes
from .security import RequestGuard, is_loopback_name


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
    """The app for `service`; `token` (server.token or SPARSECTRL_TOKEN) is required on every API call if set.
    Middleware here (outermost last), the routes in routes.py, the pages in pages.py."""

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
    install_pages(app)
    app.include_router(api_routes(service, body_model(config.limits)))
    app.include_router(extension_routes(config.data_dir))
    return app
