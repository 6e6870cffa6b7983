"""#32 item 2: per-artist tokens make the fair queue ungameable; the single shared token keeps working.

A real server with [auth] artists and a shared token; the renamed-owner trick (a new owner name per job) and a
self-granted priority are refused with 403s that say why, and the add-on's runner (core/job.py, as the add-on and
the batch use it) lets the token name the artist.
"""

from __future__ import annotations

import httpx
import pytest

from sparsectrl_blender.core.client import Client
from sparsectrl_blender.core.job import JobRunner
from tests.e2e.conftest import job_body
from tests.e2e.server_process import ServerProcess

pytestmark = pytest.mark.slow

SHARED = "shared-token-for-the-whole-studio"
ANA = "ana-own-token-0123456789"
FARM = "farm-own-token-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("artists")
    config = folder / "server.toml"
    config.write_text(
        f'[server]\ntoken = "{SHARED}"\n'
        "[auth]\nartists = [\n"
        f'  {{ owner = "ana", token = "{ANA}" }},\n'
        f'  {{ owner = "render farm", token = "{FARM}", max_priority = -1 }},\n'
        "]\n"
    )
    server = ServerProcess(
        ["--model", "tiny", "--config", str(config)], folder / "data", folder / "server.log", token=SHARED
    )
    yield server
    server.stop()


def client(server: ServerProcess, token: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {token}"})


def test_the_owner_comes_from_the_artists_token(server):
    with client(server, ANA) as ana:
        r = ana.post("/v1/jobs", json=job_body(steps=2))
        assert r.status_code == 202, r.text
        assert ana.get(f"/v1/jobs/{r.json()['id']}").json()["owner"] == "ana"
        assert ana.post("/v1/jobs", json=job_body(steps=2, owner="ana")).status_code == 202  # repeating it is fine
        assert ana.get("/v1/health").json()["caller"] == {"owner": "ana", "max_priority": 0}
    with client(server, FARM) as farm:
        job = farm.get(f"/v1/jobs/{farm.post('/v1/jobs', json=job_body(steps=2)).json()['id']}").json()
        assert (job["owner"], job["priority"]) == ("render farm", -1)  # its highest priority is its default


@pytest.mark.parametrize("owner", ["bob", "ana 2", "ana-" + "x" * 8])
def test_the_renamed_owner_trick_fails(server, owner):
    with client(server, ANA) as ana:
        before = len(ana.get("/v1/jobs").json()["jobs"])
        r = ana.post("/v1/jobs", json=job_body(owner=owner))
        assert r.status_code == 403, r.text
        error = r.json()["error"]
        assert error["code"] == "forbidden_owner" and "'ana'" in error["message"] and repr(owner) in error["message"]
        assert len(ana.get("/v1/jobs").json()["jobs"]) == before  # nothing was queued


def test_a_priority_above_the_tokens_is_refused(server):
    with client(server, ANA) as ana:
        r = ana.post("/v1/jobs", json=job_body(priority=10))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_priority", r.text
        assert "above the 0 allowed" in r.json()["error"]["message"]
        assert ana.post("/v1/jobs", json=job_body(steps=2, priority=-3)).status_code == 202  # lower is always fine
    with client(server, FARM) as farm:
        assert farm.post("/v1/jobs", json=job_body(priority=0)).json()["error"]["code"] == "forbidden_priority"


def test_the_shared_token_keeps_working_as_before(server):
    with client(server, SHARED) as shared:
        r = shared.post("/v1/jobs", json=job_body(steps=2, owner="anyone", priority=10))
        assert r.status_code == 202, r.text
        job = shared.get(f"/v1/jobs/{r.json()['id']}").json()
        assert (job["owner"], job["priority"]) == ("anyone", 10)
        assert shared.get("/v1/health").json()["caller"] is None
    for token in ("nothing", "ana-own-token-012345678", ANA + "x"):
        with client(server, token) as other:
            assert other.get("/v1/health").status_code == 401
    assert httpx.get(server.url + "/v1/health").status_code == 401


def test_the_add_ons_runner_lets_the_token_name_the_artist(server):
    """The add-on and the batch send the login name as a default owner: not where the token names the artist."""
    body = job_body(steps=2)
    runner = JobRunner(Client(server.url, token=ANA), dict(body), default_owner="ana.lopez")
    state = runner.submit()
    assert state.phase in ("queued", "running"), state.error
    assert server.client.get(f"/v1/jobs/{state.job_id}").json()["owner"] == "ana"
    runner = JobRunner(Client(server.url, token=SHARED), dict(body), default_owner="ana.lopez")
    state = runner.submit()
    assert server.client.get(f"/v1/jobs/{state.job_id}").json()["owner"] == "ana.lopez"
    named = JobRunner(Client(server.url, token=ANA), {**body, "owner": "bob"}, default_owner="ana.lopez").submit()
    assert named.phase == "failed" and "'ana'" in named.error  # an explicit other name: the server's reason shown
