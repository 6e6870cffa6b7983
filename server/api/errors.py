"""Every error leaves the server as {"error": {"code", "message"}} with a 4xx status for bad input."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ..request.errors import JobNotFound, RequestError
from ..request.schema import describe

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}
# The HTTP status of each error code the jobs layer raises; any other RequestError is a 422 (a request that
# cannot be run as sent).
STATUS_OF = {
    "not_found": 404,
    "job_finished": 409,
    "not_ready": 409,
    "forbidden_owner": 403,
    "forbidden_priority": 403,
    "workers_starting": 503,
}
# An error message never echoes much of the request: longer ones are cut here (and `details` to its first few).
MAX_MESSAGE_CHARS = 1000
MAX_DETAILS = 20
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def status_of(code: str) -> int:
    return STATUS_OF.get(code, 422)


def error_response(status: int, code: str, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    error = {"code": code, "message": cut(message), **extra}
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def cut(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text`, at most `limit` characters: the rest replaced by a note of how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[: limit - 40]}… ({len(text) - limit + 40} more characters)"


def unreadable_body(cause: BaseException) -> str:
    """Why a body's JSON could not be read, for the errors FastAPI turns into a bare 400."""
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply to read"
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 ({cause.reason} at byte {cause.start}); JSON must be UTF-8"
    if "digits" in str(cause):
        return "the body holds an integer with more than 4,300 digits"
    return f"the body is not readable JSON ({type(cause).__name__})"


def _allowed_methods(request: Request) -> str:
    """Every method some route answers at this path (Starlette's Allow names only the first route's)."""
    scope = {"type": "http", "path": request.scope["path"], "root_path": request.scope.get("root_path", "")}
    routes = request.app.router.routes  # a fresh scope per try: FastAPI keeps route state in the request's
    return ", ".join(m for m in _METHODS if any(r.matches({**scope, "method": m})[0] is Match.FULL for r in routes))


def _not_json(request: Request, errors: list[dict]) -> str | None:
    """The message for a body refused because it was not sent as JSON, naming the Content-Type it came with."""
    content_type = request.headers.get("content-type", "")
    media = content_type.partition(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return None
    if not any(tuple(e.get("loc", ())) == ("body",) for e in errors):
        return None
    shown = cut(content_type, 100) if content_type else "none"
    return f"the body must be JSON sent with 'Content-Type: application/json' (this request's Content-Type: {shown})"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        details = [
            {"loc": [cut(p, 100) if isinstance(p, str) else p for p in e.get("loc", ())], "msg": cut(e.get("msg", ""))}
            for e in errors[:MAX_DETAILS]
        ]
        message = _not_json(request, errors) or describe(errors)
        return error_response(422, "invalid_request", message, details=details)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError):
        return error_response(status_of(exc.code), exc.code, exc.message)

    @app.exception_handler(JobNotFound)
    async def _not_found(_: Request, exc: JobNotFound):
        return error_response(404, "not_found", f"no job with id {exc.args[0]!r}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and isinstance(exc.__cause__, (RecursionError, ValueError)):
            # FastAPI's "error parsing the body": nesting past the recursion limit, an integer over Python's
            # 4,300-digit limit, bytes that are not UTF-8. Bad input as documented: 422 invalid_request.
            return error_response(422, "invalid_request", unreadable_body(exc.__cause__))
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception):
        log.exception("unhandled error")
        return error_response(500, "internal", f"internal server error ({type(exc).__name__}); see the server log")
