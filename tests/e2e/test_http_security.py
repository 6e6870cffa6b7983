"""Only the user gets in: web pages (Origin / Sec-Fetch-Site / DNS rebinding) are refused, tokens enforced,
nothing from a request reaches the filesystem, and no CORS header is ever sent."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import httpx
import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import job_body
from tests.e2e.server_process import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory, tiny_root):
    import shutil

    folder = tmp_path_factory.mktemp("token_server")
    shutil.copytree(tiny_root, folder / "data" / "models" / "tiny")
    config = folder / "server.toml"
    config.write_text(
        f'[server]\ntoken = "{TOKEN}"\nallowed_origins = ["http://localhost:3000"]\n'
        'allowed_hosts = ["previs-box.local:8765"]\n'
    )
    server = ServerProcess(
        ["--model", "tiny", "--config", str(config)], folder / "data", folder / "server.log", token=TOKEN
    )
    yield server
    server.stop()


WEB_PAGES = [
    ("evil site", {"Origin": "https://evil.example"}),
    ("null origin", {"Origin": "null"}),
    ("file page", {"Origin": "file://"}),
    ("other localhost port", {"Origin": "http://localhost:3001"}),
    ("no-cors GET from a page", {"Sec-Fetch-Site": "cross-site"}),
    ("same-site page", {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"}),
]


@pytest.mark.parametrize("headers", [h for _, h in WEB_PAGES], ids=[n for n, _ in WEB_PAGES])
@pytest.mark.parametrize("method, path", [("POST", "/v1/jobs"), ("GET", "/v1/health"), ("DELETE", "/v1/jobs/x")])
def test_requests_from_web_pages_are_refused(configured_server, headers, method, path):
    c = configured_server.client
    r = c.request(method, path, headers=headers, json=job_body() if method == "POST" else None)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin"
    assert "access-control-allow-origin" not in r.headers
    assert c.get("/v1/health").json()["queue_length"] == 0  # nothing was queued


def test_the_servers_own_docs_page_may_call_it(configured_server):
    c = configured_server.client
    same = {"Origin": configured_server.url, "Sec-Fetch-Site": "same-origin"}
    assert c.get("/v1/health", headers=same).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "192.168.1.10:8765", "previs-box.local"])
def test_dns_rebinding_hosts_are_refused_on_a_loopback_server(configured_server, host):
    r = configured_server.client.get("/v1/health", headers={"Host": host})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]:8765", "127.0.0.2:9"])
def test_loopback_host_names_are_accepted(configured_server, host):
    assert configured_server.client.get("/v1/health", headers={"Host": host}).status_code == 200


def test_no_cors_headers_even_for_a_preflight(configured_server):
    r = configured_server.client.options(
        "/v1/jobs", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert r.status_code == 403 and not any(k.startswith("access-control-") for k in r.headers)


def _bomb_png(width=40_000, height=40_000) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # A header promising 1.6 gigapixels; the server must refuse it before decoding a single row.
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + chunk(b"IEND", b"")
    )


def test_decompression_bombs_are_refused_before_decoding(configured_server):
    import base64

    body = job_body(keyframes=[{"index": 0, "image": base64.b64encode(_bomb_png()).decode()}])
    r = configured_server.client.post("/v1/jobs", json=body)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_image"
    assert "too large, more than the 16777216 pixels allowed" in r.json()["error"]["message"]
    small_bomb = job_body(keyframes=[{"index": 0, "image": base64.b64encode(_bomb_png(5000, 5000)).decode()}])
    r = configured_server.client.post("/v1/jobs", json=small_bomb)  # under PIL's own guard, over ours
    assert r.status_code == 422 and "5000x5000: too large" in r.json()["error"]["message"]


def test_a_streamed_body_over_the_limit_is_refused(configured_server):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MiB in all, no Content-Length (max_body_mb = 1)
        yield b'"}'

    r = configured_server.client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_the_schema_carries_the_configured_limits(configured_server):
    schema = configured_server.client.get("/openapi.json").json()
    body = schema["components"]["schemas"]["JobCreate"]["properties"]
    num_frames = next(s for s in body["num_frames"]["anyOf"] if s.get("type") == "integer")
    width = next(s for s in body["width"]["anyOf"] if s.get("type") == "integer")
    assert num_frames["maximum"] == 256 and width == {
        "type": "integer",
        "minimum": 64,
        "maximum": 1024,
        "multipleOf": 8,
    }


def test_a_token_server_needs_the_token_on_every_api_call(token_server):
    url = token_server.url
    with httpx.Client(base_url=url) as anon:
        for method, path in (("GET", "/v1/health"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs")):
            r = anon.request(method, path, json=job_body() if method == "POST" else None)
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
        assert anon.get("/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert anon.get("/v1/health", headers={"Authorization": TOKEN}).status_code == 401  # scheme needed
        assert anon.get("/openapi.json").status_code == 200  # the schema is public
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as user:
        assert user.get("/v1/health").status_code == 200
        job = user.post("/v1/jobs", json=job_body(steps=1)).json()["id"]
        assert user.get(f"/v1/jobs/{job}").status_code == 200
        # Listed origins and hosts pass, with CORS headers for exactly that origin; the token is still needed.
        listed = user.get("/v1/health", headers={"Origin": "http://localhost:3000"})
        assert listed.status_code == 200
        assert listed.headers["access-control-allow-origin"] == "http://localhost:3000"
        preflight = httpx.options(
            f"{url}/v1/jobs", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 200 and "POST" in preflight.headers["access-control-allow-methods"]
        assert httpx.get(f"{url}/v1/health", headers={"Origin": "http://localhost:3000"}).status_code == 401
        assert user.get("/v1/health", headers={"Host": "previs-box.local:8765"}).status_code == 200


def test_a_token_server_serves_its_pages_without_the_token_and_nothing_else(token_server):
    """The pages and their files hold no data (what the queue page shows comes from API calls with the token)."""
    with httpx.Client(base_url=token_server.url) as anon:
        for path in (
            "/",
            "/web/queue.js",
            "/web/queue.css",
            "/docs",
            "/redoc",
            "/redoc/logo-mini.svg",
            "/docs-assets/swagger/swagger-ui-bundle.js",
            "/docs-assets/swagger/swagger-ui.css",
            "/docs-assets/redoc/redoc.standalone.js",
            "/docs-assets/fastapi/favicon.png",
        ):
            assert anon.get(path).status_code == 200, path
        page = anon.get("/")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        # An open prefix is no way around the token, whatever the path says (sent as is: http.client does not
        # resolve dot segments, httpx would).
        import http.client
        import json

        conn = http.client.HTTPConnection("127.0.0.1", token_server.port, timeout=10)
        for path in (
            "/web/../v1/jobs",
            "/docs-assets/../v1/health",
            "/docs-assets/../../jobs.sqlite3",
            "/web/%2e%2e/v1/jobs",
        ):
            conn.request("GET", path)
            r = conn.getresponse()
            body = json.loads(r.read())
            assert r.status in (401, 404) and "error" in body and "jobs" not in body, (path, r.status, body)
        conn.close()
        assert anon.get("/v1/jobs").status_code == 401
        # Reached from another site (a link, a frame), the pages are refused like the API: open them by address.
        r = anon.get("/", headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin"


def test_binding_another_interface_without_a_token_refuses_to_start(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "server", "--model", "tiny", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2
    assert "binding 0.0.0.0 lets other machines drive this GPU: set server.token" in out.stderr


def test_the_addon_client_sends_the_token_and_explains_a_refusal(token_server):
    from sparsectrl_blender.core.client import Client, ServerError

    assert Client(token_server.url, token=TOKEN).health()["status"] == "ok"
    for token in ("", "wrong"):
        with pytest.raises(ServerError) as e:
            Client(token_server.url, token=token).health()
        assert e.value.status == 401 and "the server refused the token" in str(e.value)
