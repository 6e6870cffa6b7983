"""Errors a request can meet before it runs. Each carries a code; api/errors.py maps codes to HTTP statuses."""

from __future__ import annotations


class RequestError(ValueError):
    """A request that cannot be run (or a job that cannot do what was asked); `code` is the API error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class JobNotFound(LookupError):
    """No job with that id."""
