"""The HTTP contract of docs/api.md, over a real uvicorn process on a loopback port."""

from __future__ import annotations

import base64
import socket
import statistics
import time

import numpy as np
import pytest

from server.video.encode import read_video
from tests.conftest import png_bytes
from tests.e2e.conftest import job_body, keyframe

pytestmark = pytest.mark.slow


def test_health_reports_device_model_and_modalities(configured_server):
    health = configured_server.client.get("/v1/health").json()
    (worker,) = health.pop("workers")
    assert worker == {
        "name": "local", "node": socket.gethostname(), "state": "idle", "job": None, "model": "sd15-test",
        "device": "cpu", "error": None,
    }  # fmt: skip
    assert health == {
        "status": "ok",
        "starting": None,
        "api_version": 1,
        "device": "cpu",
        "dtype": "float32",
        "model": {"name": "sd15-test", "tiny": False},
        "modalities": ["lineart", "rgb"],
        "loras": [],
        "controlnets": [],
        "draft_motion_module": False,
        "queue_length": 0,
        "running_job": None,
        "backend": "local",
    }


def test_openapi_schema_and_docs_are_served(configured_server):
    schema = configured_server.client.get("/openapi.json").json()
    assert {"/v1/health", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/video"} <= set(schema["paths"])
    for page in ("/docs", "/redoc", "/"):
        r = configured_server.client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    docs = configured_server.client.get("/docs").text
    assert "cdn" not in docs.lower() and "/docs-assets/swagger/swagger-ui-bundle.js" in docs  # offline (issue 19)


def test_submit_progress_then_video_and_frames(configured_server, tmp_path):
    c = configured_server.client
    r = c.post("/v1/jobs", json=job_body(steps=8, fps=12))
    assert r.status_code == 202
    accepted = r.json()
    assert accepted["status"] == "queued" and r.headers["location"] == f"/v1/jobs/{accepted['id']}"

    seen_steps = []
    while (job := c.get(f"/v1/jobs/{accepted['id']}").json())["status"] in ("queued", "running"):
        seen_steps.append(job["progress"]["step"])
        time.sleep(0.02)
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"step": 8, "total": 8}
    assert seen_steps == sorted(seen_steps) and len(set(seen_steps)) >= 2  # progress rose while running
    assert job["seed"] == 7 and [k["index"] for k in job["request"]["keyframes"]] == [0, 15]
    assert "image" not in str(job["request"]) and job["error"] is None

    video = c.get(job["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    (tmp_path / "clip.mp4").write_bytes(video.content)
    frames, fps = read_video(tmp_path / "clip.mp4")
    assert frames.shape == (16, 64, 64, 3) and fps == 12

    png = c.get(f"/v1/jobs/{accepted['id']}/frames/15.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    from io import BytesIO

    from PIL import Image

    last = np.asarray(Image.open(BytesIO(png.content)))
    assert last.shape == (64, 64, 3)
    # The PNG is the lossless frame 15: of all video frames (lossy 4:2:0), frame 15 is the closest to it.
    distances = [np.abs(last.astype(int) - f).mean() for f in frames]
    assert int(np.argmin(distances)) == 15, distances
    assert c.get(f"/v1/jobs/{accepted['id']}/frames/16.png").status_code == 404


def test_live_previews_at_rising_steps_then_the_last_one_stays(configured_server):
    """#29: GET .../preview while the job runs, frames side by side at latent size; 404 before the first step."""
    from io import BytesIO

    from PIL import Image

    c = configured_server.client
    running = c.post("/v1/jobs", json=job_body(steps=12)).json()["id"]
    waiting = c.post("/v1/jobs", json=job_body(steps=1)).json()["id"]
    before = c.get(f"/v1/jobs/{waiting}/preview")  # queued behind the first: no step yet
    assert before.status_code == 404 and before.json()["error"]["code"] == "not_found"
    assert c.get(f"/v1/jobs/{waiting}").json()["preview_step"] is None
    seen = []
    while (job := c.get(f"/v1/jobs/{running}").json())["status"] in ("queued", "running"):
        r = c.get(f"/v1/jobs/{running}/preview")
        if r.status_code == 200:
            assert r.headers["content-type"] == "image/png" and r.headers["x-preview-frames"] == "16"
            assert Image.open(BytesIO(r.content)).size == (16 * 64 // 8, 64 // 8)  # 16 tiles of 8x8
            seen.append(int(r.headers["x-preview-step"]))
        else:
            assert r.status_code == 404 and not seen
        time.sleep(0.02)
    assert job["status"] == "succeeded" and job["preview_step"] == 12
    assert seen == sorted(seen) and len(set(seen)) >= 2 and 1 <= seen[0] and seen[-1] <= 12
    after = c.get(f"/v1/jobs/{running}/preview")  # the last one stays, served from the job's folder
    assert after.status_code == 200 and after.headers["x-preview-step"] == "12"
    assert (configured_server.data_dir / "jobs" / running / "preview.png").read_bytes() == after.content
    listed = {j["id"]: j for j in c.get("/v1/jobs").json()["jobs"]}
    assert listed[running]["preview_step"] == 12


def test_owner_is_optional_kept_and_listed(configured_server):
    c = configured_server.client
    schema = c.get("/openapi.json").json()["components"]["schemas"]
    assert "owner" in schema["JobCreate"]["properties"] and "owner" in schema["JobOut"]["properties"]
    named = c.post("/v1/jobs", json=job_body(steps=1, owner="Zoë (layout)")).json()["id"]
    anonymous = c.post("/v1/jobs", json=job_body(steps=1)).json()["id"]
    assert configured_server.wait_for(anonymous)["owner"] is None
    assert c.get(f"/v1/jobs/{named}").json()["owner"] == "Zoë (layout)"
    listed = {j["id"]: j["owner"] for j in c.get("/v1/jobs").json()["jobs"]}
    assert listed[named] == "Zoë (layout)" and listed[anonymous] is None
    assert "owner" not in c.get(f"/v1/jobs/{named}").json()["request"]  # a job's attribute, not a generation input


def test_a_64_frame_job_in_context_windows_retimed_to_96(configured_server, tmp_path):
    c = configured_server.client
    body = job_body(
        num_frames=64,
        steps=2,
        output_frames=96,
        keyframes=[
            dict(keyframe(0), output_index=0),
            dict(keyframe(40, 5), output_index=60),
            dict(keyframe(63, 9), output_index=95),
        ],
    )
    job = configured_server.wait_for(c.post("/v1/jobs", json=body).json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    assert job["request"]["num_frames"] == 64 and job["request"]["output_frames"] == 96
    (tmp_path / "long.mp4").write_bytes(c.get(job["video_url"]).content)
    frames, _ = read_video(tmp_path / "long.mp4")
    assert frames.shape == (96, 64, 64, 3)
    assert c.get(f"/v1/jobs/{job['id']}/frames/95.png").status_code == 200
    assert c.get(f"/v1/jobs/{job['id']}/frames/96.png").status_code == 404
    backwards = job_body(
        num_frames=64,
        output_frames=96,
        keyframes=[dict(keyframe(0), output_index=50), dict(keyframe(40), output_index=10)],
    )
    r = c.post("/v1/jobs", json=backwards)
    assert r.status_code == 422 and "cannot run backwards" in r.json()["error"]["message"]


def test_an_rgb_look_beside_line_art_keyframes_runs_and_is_kept(configured_server):
    """Keyframes of two modalities in one job (#16 item 2): each stored under its path, echoed with its group."""
    c = configured_server.client
    look = {**keyframe(0, 4), "modality": "rgb", "strength": 0.7}
    body = job_body(
        steps=2,
        keyframes=[keyframe(0), keyframe(8, 5), keyframe(15, 10), look],
        keyframe_groups=[{"modality": "rgb", "strength": 0.8, "guidance_end": 0.5}],
    )
    job = configured_server.wait_for(c.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job
    echoed = job["request"]
    assert [(k["index"], k.get("modality", "")) for k in echoed["keyframes"]] == [
        (0, ""),
        (0, "rgb"),
        (8, ""),
        (15, ""),
    ]
    assert echoed["keyframe_groups"] == [
        {"modality": "rgb", "strength": 0.8, "guidance_start": 0.0, "guidance_end": 0.5}
    ]
    folder = configured_server.data_dir / "jobs" / job["id"] / "keyframes"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == [
        "0000.png",
        "0008.png",
        "0015.png",
        "rgb/0000.png",
    ]
    r = c.post("/v1/jobs", json=job_body(keyframes=[keyframe(0), {**keyframe(3), "modality": "depth"}]))
    assert r.status_code == 422 and r.json()["error"]["code"] == "modality_unavailable"
    assert "'depth'" in r.json()["error"]["message"] and "lineart, rgb" in r.json()["error"]["message"]


def test_colour_lock_brings_the_delivered_keyframe_frames_to_the_rgb_look(configured_server):
    """color_lock with an RGB look at 0 and 15 beside line art, retimed to 24 (#28 item 3): the delivered frames
    at the looks' output frames lie within 3 ΔE (mean Lab) of the looks; without RGB keyframes, a 422."""
    from io import BytesIO

    from PIL import Image

    from server.engine.conditions import fit_to_size
    from server.video.color_lock import to_lab

    c = configured_server.client
    looks = [Image.new("RGB", (96, 64), (200, 90, 40)), Image.new("RGB", (96, 64), (40, 120, 210))]
    looks[1].paste((240, 230, 200), (30, 10, 70, 50))
    rgb = [
        {"index": i, "output_index": o, "modality": "rgb", "image": base64.b64encode(png_bytes(img)).decode()}
        for i, o, img in ((0, 0, looks[0]), (15, 23, looks[1]))
    ]
    body = job_body(steps=2, output_frames=24, keyframes=[keyframe(0), keyframe(15, 10), *rgb], color_lock=True)
    job = configured_server.wait_for(c.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job
    assert job["request"]["color_lock"] is True
    for n, img in ((0, looks[0]), (23, looks[1])):
        frame = np.asarray(Image.open(BytesIO(c.get(f"/v1/jobs/{job['id']}/frames/{n}.png").content)))
        target = to_lab(np.asarray(fit_to_size(img, 64, 64))).mean(axis=(0, 1))
        assert np.linalg.norm(to_lab(frame).mean(axis=(0, 1)) - target) < 3.0
    r = c.post("/v1/jobs", json=job_body(color_lock=True))
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["message"].startswith("color_lock:")


def test_a_draft_is_delivered_at_the_size_asked(configured_server, tmp_path):
    c = configured_server.client
    job = c.post("/v1/jobs", json=job_body(width=128, height=96, steps=20, quality="draft")).json()["id"]
    job = configured_server.wait_for(job)
    assert job["status"] == "succeeded" and job["progress"]["total"] == 8  # [draft] steps
    assert (job["request"]["quality"], job["request"]["width"], job["request"]["output_width"]) == ("draft", 64, 128)
    (tmp_path / "draft.mp4").write_bytes(c.get(job["video_url"]).content)
    frames, _ = read_video(tmp_path / "draft.mp4")
    assert frames.shape == (16, 96, 128, 3)


def test_same_request_and_seed_give_identical_frames_over_http(configured_server):
    c = configured_server.client
    ids = [c.post("/v1/jobs", json=job_body(modality="rgb", seed=123)).json()["id"] for _ in range(2)]
    for job_id in ids:
        assert configured_server.wait_for(job_id)["status"] == "succeeded"
    a, b = (c.get(f"/v1/jobs/{i}/frames/{n}.png").content for i in ids for n in (9,))
    assert a == b


def test_jobs_run_one_at_a_time_in_submission_order(configured_server):
    c = configured_server.client
    ids = [c.post("/v1/jobs", json=job_body(steps=2, seed=i)).json()["id"] for i in range(4)]
    jobs = [configured_server.wait_for(i) for i in ids]
    assert all(j["status"] == "succeeded" for j in jobs)
    for earlier, later in zip(jobs, jobs[1:], strict=False):
        assert earlier["finished_at"] <= later["started_at"]


def test_cancel_a_running_job_within_a_step_while_health_stays_fast(configured_server):
    c = configured_server.client
    long_job = c.post("/v1/jobs", json=job_body(num_frames=32, width=128, height=128, steps=150)).json()["id"]
    queued_job = c.post("/v1/jobs", json=job_body()).json()["id"]
    configured_server.wait_for(long_job, statuses=("running",))
    while c.get(f"/v1/jobs/{long_job}").json()["progress"]["step"] < 1:
        time.sleep(0.02)

    latencies = []
    for _ in range(10):
        started = time.perf_counter()
        health = c.get("/v1/health")
        latencies.append(time.perf_counter() - started)
        assert health.json()["running_job"] == long_job
    print(
        f"/v1/health during generation: median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} calls"
    )
    assert statistics.median(latencies) < 0.1

    r = c.delete(f"/v1/jobs/{queued_job}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"

    r = c.delete(f"/v1/jobs/{long_job}")
    assert r.status_code == 202 and r.json()["cancel_requested"]
    step_at_cancel = r.json()["progress"]["step"]
    job = configured_server.wait_for(long_job, timeout=30)
    assert job["status"] == "cancelled"
    assert job["progress"]["step"] <= step_at_cancel + 2 < 150
    assert c.delete(f"/v1/jobs/{long_job}").status_code == 409
    assert c.get(f"/v1/jobs/{long_job}/video").status_code == 409

    # The worker lives on.
    after = c.post("/v1/jobs", json=job_body(steps=2)).json()["id"]
    assert configured_server.wait_for(after)["status"] == "succeeded"


BAD_REQUESTS = [
    # (name, method, path, json body or raw bytes, status, error code)
    ("missing prompt", "POST", "/v1/jobs", {"modality": "lineart", "keyframes": [keyframe(0)]}, 422, "invalid_request"),
    ("missing modality", "POST", "/v1/jobs", {"prompt": "x", "keyframes": [keyframe(0)]}, 422, "invalid_request"),
    ("unknown modality", "POST", "/v1/jobs", job_body(modality="normal"), 422, "invalid_request"),
    ("modality without encoder", "POST", "/v1/jobs", job_body(modality="depth"), 422, "modality_unavailable"),
    ("missing keyframes", "POST", "/v1/jobs", {"prompt": "x", "modality": "lineart"}, 422, "invalid_request"),
    ("empty keyframes", "POST", "/v1/jobs", job_body(keyframes=[]), 422, "invalid_request"),
    (
        "keyframe past the end",
        "POST",
        "/v1/jobs",
        job_body(num_frames=8, keyframes=[keyframe(8)]),
        422,
        "invalid_request",
    ),
    ("negative keyframe index", "POST", "/v1/jobs", job_body(keyframes=[keyframe(-1)]), 422, "invalid_request"),
    ("duplicate indices", "POST", "/v1/jobs", job_body(keyframes=[keyframe(3), keyframe(3)]), 422, "invalid_request"),
    (
        "more keyframes than frames",
        "POST",
        "/v1/jobs",
        job_body(num_frames=2, keyframes=[keyframe(0), keyframe(1), keyframe(1)]),
        422,
        "invalid_request",
    ),
    ("width not a multiple of 8", "POST", "/v1/jobs", job_body(width=100), 422, "invalid_request"),
    ("width over the limit", "POST", "/v1/jobs", job_body(width=4096), 422, "invalid_request"),
    ("too many frames", "POST", "/v1/jobs", job_body(num_frames=1000), 422, "invalid_request"),
    ("zero steps", "POST", "/v1/jobs", job_body(steps=0), 422, "invalid_request"),
    ("too many steps", "POST", "/v1/jobs", job_body(steps=10_000), 422, "invalid_request"),
    ("unknown scheduler", "POST", "/v1/jobs", job_body(scheduler="heun"), 422, "invalid_request"),
    ("negative seed", "POST", "/v1/jobs", job_body(seed=-1), 422, "invalid_request"),
    ("string for a number", "POST", "/v1/jobs", job_body(num_frames="16"), 422, "invalid_request"),
    ("number for the prompt", "POST", "/v1/jobs", job_body(prompt=5), 422, "invalid_request"),
    ("unknown field", "POST", "/v1/jobs", job_body(stpes=10), 422, "invalid_request"),
    ("prompt too long", "POST", "/v1/jobs", job_body(prompt="x" * 5000), 422, "invalid_request"),
    ("owner too long", "POST", "/v1/jobs", job_body(owner="x" * 65), 422, "invalid_request"),
    ("owner empty", "POST", "/v1/jobs", job_body(owner=""), 422, "invalid_request"),
    ("owner with a newline", "POST", "/v1/jobs", job_body(owner="ann\nbob"), 422, "invalid_request"),
    ("owner not a string", "POST", "/v1/jobs", job_body(owner=7), 422, "invalid_request"),
    ("image not base64", "POST", "/v1/jobs", job_body(keyframes=[{"index": 0, "image": "%%%"}]), 422, "invalid_image"),
    (
        "image not an image",
        "POST",
        "/v1/jobs",
        job_body(keyframes=[{"index": 0, "image": "aGVsbG8="}]),
        422,
        "invalid_image",
    ),
    ("malformed JSON", "POST", "/v1/jobs", b'{"prompt": ', 422, "invalid_request"),
    ("JSON list", "POST", "/v1/jobs", b"[1, 2]", 422, "invalid_request"),
    ("body over max_body_mb", "POST", "/v1/jobs", b"{" + b" " * (2 * 2**20) + b"}", 413, "payload_too_large"),
    ("unknown job", "GET", "/v1/jobs/0123456789abcdef0123456789abcdef", None, 404, "not_found"),
    ("not a job id", "GET", "/v1/jobs/nope", None, 404, "not_found"),
    ("traversal in job id", "GET", "/v1/jobs/..%2F..%2Fjobs.sqlite3/video", None, 404, "not_found"),
    ("traversal in path", "GET", "/v1/jobs/../../etc/passwd", None, 404, "not_found"),
    ("preview of unknown job", "GET", "/v1/jobs/0123456789abcdef0123456789abcdef/preview", None, 404, "not_found"),
    ("preview of not a job id", "GET", "/v1/jobs/nope/preview", None, 404, "not_found"),
    ("cancel unknown job", "DELETE", "/v1/jobs/0123456789abcdef0123456789abcdef", None, 404, "not_found"),
    ("unknown route", "GET", "/v2/health", None, 404, "not_found"),
    ("wrong method", "PUT", "/v1/jobs", None, 405, "method_not_allowed"),
]


@pytest.mark.parametrize("name, method, path, body, status, code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_json_error(configured_server, name, method, path, body, status, code):
    c = configured_server.client
    if isinstance(body, bytes):
        r = c.request(method, path, content=body, headers={"content-type": "application/json"})
    else:
        r = c.request(method, path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code and error["message"]
    assert c.get("/v1/health").status_code == 200  # and the server keeps serving
