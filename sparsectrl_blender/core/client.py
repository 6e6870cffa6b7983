"""HTTP client for the server's API (docs/api.md), on urllib: the add-on may use only Blender and the stdlib.

Every failure is a ServerError with a sentence an artist can act on; no traceback reaches the UI.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# The server API version this add-on speaks; a server's GET /v1/health says its own as "api_version" (servers
# from before it did not say: they speak 1).
API_VERSION = 1


def server_problem(health: dict[str, Any]) -> str | None:
    """Why a server that answered health cannot take a job from this add-on now, as a sentence; None if it can."""
    theirs = health.get("api_version", 1)
    if theirs != API_VERSION:
        newer = "add-on" if isinstance(theirs, int) and theirs > API_VERSION else "server"
        return (
            f"the server speaks API version {theirs}, this add-on version {API_VERSION}: update the {newer} "
            "(Preferences > Get Extensions updates the add-on from the studio's repository)"
        )
    if health.get("status") == "starting":
        return "the server is starting: " + str(health.get("starting") or "its workers are loading the model")
    return None


class ServerError(Exception):
    """Something went wrong talking to the server; str() is a message fit for the panel."""

    def __init__(self, message: str, code: str = "error", status: int | None = None):
        super().__init__(message)
        self.code, self.status = code, status


def _http_error(e: urllib.error.HTTPError) -> ServerError:
    """The server's {"error": {"code", "message"}} as a ServerError (docs/api.md)."""
    try:
        err = json.loads(e.read())["error"]
        message, code = str(err["message"]), str(err["code"])
    except (ValueError, KeyError, TypeError):
        return ServerError(f"the server answered HTTP {e.code} {e.reason}", "http_error", e.code)
    if e.code == 401:
        message = (
            "the server refused the token: set the server's token in the add-on's preferences "
            "(Edit > Preferences > Add-ons > SparseCtrl Previs)"
        )
    return ServerError(message, code, e.code)


def _path(job_id: str) -> str:
    """A job id as one URL path segment: one typed by hand (`--retake-of`) may hold spaces or slashes."""
    return urllib.parse.quote(str(job_id), safe="")


class Client:
    def __init__(self, url: str, timeout: float = 10.0, token: str = ""):
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            url = "http://" + url
        self.url, self.timeout, self.token = url, timeout, token.strip()

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _request(self, method: str, path: str, body: Any = None, raw: bool = False, timeout: float | None = None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        headers.update(self._auth())
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            raise _http_error(e) from None
        except urllib.error.URLError as e:
            reason = e.reason if isinstance(e.reason, str) else (e.reason.strerror or str(e.reason))
            raise ServerError(
                f"cannot reach the server at {self.url} ({reason}). Is it running?", "unreachable"
            ) from None
        except TimeoutError:
            raise ServerError(f"the server at {self.url} did not answer in time", "timeout") from None
        except (ConnectionError, OSError) as e:
            raise ServerError(f"lost the connection to the server at {self.url} ({e})", "unreachable") from None
        if raw:
            return payload
        try:
            return json.loads(payload)
        except ValueError:
            raise ServerError(f"{self.url} did not answer like a SparseCtrl server (not JSON)", "bad_answer") from None

    def health(self) -> dict[str, Any]:
        health = self._request("GET", "/v1/health", timeout=3.0)
        if not isinstance(health, dict) or "modalities" not in health:
            raise ServerError(f"{self.url} did not answer like a SparseCtrl server", "bad_answer")
        return health

    def models(self) -> dict[str, Any]:
        """GET /v1/models: what the server has loaded (its "ip_adapter": the Look reference's, or null)."""
        models = self._request("GET", "/v1/models", timeout=3.0)
        if not isinstance(models, dict):
            raise ServerError(f"{self.url} did not answer like a SparseCtrl server", "bad_answer")
        return models

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", "/v1/jobs", body, timeout=60.0)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{_path(job_id)}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/jobs/{_path(job_id)}")

    def preview(self, job_id: str) -> tuple[int, int, bytes] | None:
        """The job's newest preview (docs/api.md): (step, frames, PNG of the frames side by side), None before
        the first step (404) or from a server without previews."""
        req = urllib.request.Request(f"{self.url}/v1/jobs/{_path(job_id)}/preview", headers=self._auth())
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                png, headers = resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            if e.code in (404, 405):
                return None
            raise _http_error(e) from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise ServerError(f"lost the connection to the server at {self.url} ({e})", "unreachable") from None
        try:
            return int(headers["X-Preview-Step"]), int(headers["X-Preview-Frames"]), png
        except (KeyError, TypeError, ValueError):
            return None  # not a preview as docs/api.md says: none shown

    def video(self, job_id: str) -> bytes:
        return self._request("GET", f"/v1/jobs/{_path(job_id)}/video", raw=True, timeout=120.0)
