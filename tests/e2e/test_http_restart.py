"""Results survive a restart; a job running when the process was killed is reported interrupted."""

from __future__ import annotations

import time

import pytest

from sparsectrl_blender.core.client import Client
from sparsectrl_blender.core.job import JobRunner
from tests.e2e.conftest import job_body
from tests.e2e.server_process import ServerProcess

pytestmark = pytest.mark.slow


def test_kill_minus_nine_then_restart_keeps_results(data_dir_with_tiny, tmp_path):
    log = tmp_path / "server.log"
    server = ServerProcess(["--model", "tiny"], data_dir_with_tiny, log)
    health = server.client.get("/v1/health").json()
    assert health["model"] == {"name": "tiny-random", "tiny": True}
    assert "RANDOM weights" in server.log()

    done = server.client.post("/v1/jobs", json=job_body(width=None, height=None, steps=None)).json()["id"]
    finished = server.wait_for(done)
    assert finished["status"] == "succeeded"
    assert finished["request"]["width"] == 64  # the tiny model's defaults from defaults.toml
    video_before = server.client.get(f"/v1/jobs/{done}/video").content

    running = server.client.post("/v1/jobs", json=job_body(num_frames=32, width=128, height=128, steps=150)).json()
    server.wait_for(running["id"], statuses=("running",))
    waiting = server.client.post("/v1/jobs", json=job_body(steps=2)).json()["id"]
    time.sleep(0.3)
    server.kill9()

    restarted = ServerProcess(["--model", "tiny"], data_dir_with_tiny, log)
    try:
        c = restarted.client
        interrupted = c.get(f"/v1/jobs/{running['id']}").json()
        assert interrupted["status"] == "failed" and interrupted["error"]["code"] == "interrupted"
        # The add-on and the batch say "interrupted", not "cancelled": nobody cancelled it (#31 item 2).
        runner = JobRunner(Client(restarted.url), {})
        runner.state.job_id, runner.state.phase = running["id"], "running"
        assert runner.poll() and runner.state.phase == "failed"
        assert runner.state.error == (
            f"interrupted: the server stopped while job {running['id']} was running (it was not cancelled); "
            "generate again to resubmit"
        )
        assert c.get(f"/v1/jobs/{done}/video").content == video_before
        assert c.get(f"/v1/jobs/{done}").json()["status"] == "succeeded"
        # A job that was still queued is not lost: it runs after the restart.
        assert restarted.wait_for(waiting)["status"] == "succeeded"
    finally:
        restarted.stop()
