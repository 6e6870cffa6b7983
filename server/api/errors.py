"""Every error leaves the server as {"error": {"code", "message"}} with a 4xx status for bad input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..request.errors import JobNotFound, RequestError
from ..request.schema import describe

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
# The HTTP status of each error code the jobs layer raises; any other RequestError is a 422 (a request that
# cannot be run as sent).
STATUS_OF = {"not_found": 404, "job_finished": 409, "not_ready": 409, "workers_starting": 503}


def status_of(code: str) -> int:
    return STATUS_OF.get(code, 422)


def error_response(status: int, code: str, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return error_response(422, "invalid_request", describe(exc.errors()), details=details)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError):
        return error_response(status_of(exc.code), exc.code, exc.message)

    @app.exception_handler(JobNotFound)
    async def _not_found(_: Request, exc: JobNotFound):
        return error_response(404, "not_found", f"no job with id {exc.args[0]!r}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal server error ({type(exc).__name__}); see the server log")
