"""A reference look over HTTP (#30), on a real uvicorn process with the tiny model's IP-Adapter: GET /v1/models
says what it has; a job with a reference (a sheet of two images) beside keyframes, one with only a reference and
the prompt, strength 0 bit for bit the job without; the record echoes the reference and its hashes; each bad
reference a 4xx saying which; a server without an IP-Adapter says so."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.conftest import png_bytes
from tests.e2e.conftest import job_body
from tests.e2e.server_process import ServerProcess
from tests.server.test_reference import look

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_root):
    server = ServerProcess.tiny(tmp_path_factory.mktemp("reference_server"), tiny_root)
    yield server
    server.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def finished(server, body: dict) -> dict:
    r = server.client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = server.wait_for(r.json()["id"])
    assert job["status"] == "succeeded", job
    return job


def frames(server, job: dict, count: int = 16) -> list[bytes]:
    return [server.client.get(f"/v1/jobs/{job['id']}/frames/{n}.png").content for n in range(count)]


def test_a_reference_steers_a_job_and_is_recorded(server):
    s = server
    info = s.client.get("/v1/models").json()
    assert info["ip_adapter"]["kind"] == "plain", info
    sheet = [png_bytes(look(1)), png_bytes(look(2))]
    reference = {"images": [b64(i) for i in sheet], "strength": 0.6, "guidance_end": 0.8}
    plain = finished(s, job_body(steps=3))
    looked = finished(s, job_body(steps=3, reference=reference))
    assert looked["request"]["reference"] == {
        "images": 2,
        "strength": 0.6,
        "guidance_start": 0.0,
        "guidance_end": 0.8,
        "sha256": [hashlib.sha256(i).hexdigest() for i in sheet],
    }
    assert frames(s, looked) != frames(s, plain)
    # Strength 0: the job without a reference, bit for bit.
    zero = finished(s, job_body(steps=3, reference={"images": [b64(sheet[0])], "strength": 0}))
    assert frames(s, zero) == frames(s, plain)
    # A reference alone, with the prompt, steers a job; another reference, another clip.
    alone = {"prompt": "a knight", "num_frames": 8, "width": 64, "height": 64, "steps": 2, "seed": 3}
    first = finished(s, alone | {"reference": {"images": [b64(sheet[0])]}})
    second = finished(s, alone | {"reference": {"images": [b64(sheet[1])]}})
    assert frames(s, first, 8) != frames(s, second, 8)


@pytest.mark.parametrize(
    "reference, code, said",
    [
        ({"images": []}, "invalid_request", "reference.images"),
        ({"images": [b64(b"not an image")]}, "invalid_image", "reference image 0"),
        ({"images": ["@@"]}, "invalid_image", "not valid base64"),
        ({"images": [b64(png_bytes(look(1)))], "strength": 3}, "invalid_request", "reference.strength"),
        ({"images": [b64(png_bytes(look(1)))], "weight": 1}, "invalid_request", "reference.weight"),
        ({"images": [b64(png_bytes(look(1)))], "guidance_start": 1, "guidance_end": 0.5}, "invalid_request", "below"),
    ],
)
def test_a_bad_reference_says_which(server, reference, code, said):
    r = server.client.post("/v1/jobs", json=job_body(reference=reference))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and said in error["message"], error


def test_a_server_without_an_ip_adapter_refuses_a_reference(configured_server):
    assert configured_server.client.get("/v1/models").json()["ip_adapter"] is None
    r = configured_server.client.post(
        "/v1/jobs", json=job_body(reference={"images": [b64(png_bytes(look(1)))], "strength": 0.5})
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "reference_unavailable", r.text
    assert "[model.ip_adapter]" in r.json()["error"]["message"]
