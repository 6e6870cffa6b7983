"""Who may drive the server: the artist's own tools, never a web page open in their browser.

Browsers let any page send requests to 127.0.0.1. Three checks, in this order, before any route runs:

1. Host (DNS rebinding): on a loopback-only server the Host header must name loopback (127.x, localhost,
   [::1]) or an entry of server.allowed_hosts; a rebinding page's requests carry its own domain.
2. Origin: a browser attaches Origin to cross-site requests (`null` from sandboxed or file:// pages) and
   Sec-Fetch-Site to all; anything but same-origin (the server's own /docs) or server.allowed_origins is
   refused. Scripts and the Blender add-on send neither header.
3. Token: with server.token or [auth] artists' tokens set (one is required to bind another interface), every API
   request needs `Authorization: Bearer TOKEN`: the shared token or an artist's. An artist's token is noted in
   the request's scope (ARTIST_KEY): the job routes take the owner from it (request/owner.py). The pages (/docs,
   /redoc, the queue page at /), their static assets and /openapi.json stay readable: they hold no data; what
   the queue page shows comes from API calls with the token.

CORS is off unless server.allowed_origins lists origins; then exactly those get CORS headers (a web tool
the user trusts), and still need the token if the server has one.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

from .errors import error_response

ARTIST_KEY = "sparsectrl.artist"  # the ArtistToken a request came with (scope key); absent: the shared token or none
OPEN_PATHS = {"/", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc", "/redoc/logo-mini.svg"}
OPEN_PREFIXES = ("/docs-assets/", "/web/")  # static files of the pages (pages.py)


def is_open_path(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def split_host(host: str) -> tuple[str, str]:
    """'127.0.0.1:8765' -> ('127.0.0.1', '8765'); '[::1]:8765' -> ('::1', '8765')."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest.lstrip(":")
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return name, port


def is_loopback_name(name: str) -> bool:
    if name.lower() in ("localhost", "localhost.") or name.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RequestGuard:
    def __init__(self, app, *, loopback_only: bool, token: str, artists=(), allowed_hosts=(), allowed_origins=()):
        self.app = app
        self.loopback_only = loopback_only
        self.token = token.encode() if token else b""
        self.artists = [(a.token.encode(), a) for a in artists]
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.allowed_origins = {o.lower().rstrip("/") for o in allowed_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        refusal = self._refusal(scope.get("method", ""), scope.get("path", ""), headers)
        if refusal is None:
            if artist := self._artist(headers):
                scope = {**scope, ARTIST_KEY: artist}
            return await self.app(scope, receive, send)
        status, code, message = refusal
        response = error_response(status, code, message)
        if status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _refusal(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, str] | None:
        host = headers.get("host", "").lower()
        if self.loopback_only and not (is_loopback_name(split_host(host)[0]) or host in self.allowed_hosts):
            return (
                403,
                "forbidden_host",
                (
                    f"Host '{host}' is not this server; it answers on loopback only (add it to server.allowed_hosts "
                    "if it is a name for this machine)"
                ),
            )
        origin = headers.get("origin")
        fetch_site = headers.get("sec-fetch-site")
        if origin is not None or fetch_site in ("cross-site", "same-site"):
            same_origin = (
                origin is not None and urlsplit(origin).netloc.lower() == host and fetch_site in (None, "same-origin")
            )
            if not same_origin and (origin or "").lower().rstrip("/") not in self.allowed_origins:
                return (
                    403,
                    "forbidden_origin",
                    (
                        f"requests from web pages are refused (Origin: {origin or 'none'}, Sec-Fetch-Site: "
                        f"{fetch_site or 'none'}); list trusted origins in server.allowed_origins"
                    ),
                )
        preflight = method == "OPTIONS" and "access-control-request-method" in headers  # carries no token
        if (self.token or self.artists) and not is_open_path(path) and not preflight:
            given = _bearer(headers)
            shared = self.token and hmac.compare_digest(given, self.token)
            if not shared and self._artist(headers) is None:
                return 401, "unauthorized", "missing or wrong token: send 'Authorization: Bearer TOKEN'"
        return None

    def _artist(self, headers: dict[str, str]):
        """The [auth] entry whose token the request carries, or None (every entry compared in constant time)."""
        given, found = _bearer(headers), None
        for token, artist in self.artists:
            if hmac.compare_digest(given, token):
                found = artist
        return found


def _bearer(headers: dict[str, str]) -> bytes:
    scheme, _, given = headers.get("authorization", "").partition(" ")
    return given.strip().encode("latin-1") if scheme.lower() == "bearer" else b"\x00"
