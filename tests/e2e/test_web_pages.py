"""The pages, in a real browser: Debian's chromium driven headless by Playwright against a real server on loopback.

/docs and /redoc render every operation from files the server ships (no CDN), and the queue page at / shows the
jobs live, plays finished videos, takes a token, and keeps polling through a server restart. Every request a
page makes is recorded: all of them go to the server itself.

Without chromium (or the playwright package) these tests skip, except in CI (CI=true), where they must run:
.ci/run installs Debian's chromium. SPARSECTRL_CHROMIUM names another Chromium binary.
SPARSECTRL_QUEUE_SCREENSHOT=PATH writes the restart test's screenshot there too (docs/queue-page.png was made so).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e import server_process
from tests.e2e.conftest import job_body
from tests.e2e.server_process import ServerProcess

pytestmark = pytest.mark.slow
TOKEN = "queue-page-token-for-tests"
LONG_JOB = dict(num_frames=32, width=128, height=128, steps=150)  # runs for a while on the tiny model


def chromium_path() -> str | None:
    names = (
        [os.environ["SPARSECTRL_CHROMIUM"]]
        if os.environ.get("SPARSECTRL_CHROMIUM")
        else ["chromium", "chromium-browser"]
    )
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = (
        "the playwright package is not installed (the dev extra)"
        if sync_playwright is None
        else "no chromium found (apt-get install chromium, or set SPARSECTRL_CHROMIUM)"
        if path is None
        else None
    )
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing}: CI must run the browser tests")
        pytest.skip(missing)
    with sync_playwright() as p:
        # Playwright's own browser download is never used: the system chromium, offline.
        chromium = p.chromium.launch(executable_path=path)
        yield chromium
        chromium.close()


class Recorder:
    """A browser context that records every request its pages make."""

    def __init__(self, browser, viewport=None):
        self.context = browser.new_context(viewport=viewport or {"width": 1280, "height": 720})
        self.requests = []
        self.failed = []
        self.context.on("request", lambda r: self.requests.append(r))
        self.context.on("requestfailed", lambda r: self.failed.append(r))
        self.page = self.context.new_page()
        self.console_errors = []
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)

    def blocked_by_csp(self) -> list[str]:
        return [m for m in self.console_errors if "Content Security Policy" in m]

    def outside(self, server_url: str) -> list[str]:
        return [r.url for r in self.requests if not r.url.startswith((server_url + "/", "data:", "blob:"))]

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory, tiny_root):
    folder = tmp_path_factory.mktemp("web_tiny")
    shutil.copytree(tiny_root, folder / "data" / "models" / "tiny")
    server = ServerProcess(["--model", "tiny"], folder / "data", folder / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_server(tmp_path_factory, tiny_root):
    folder = tmp_path_factory.mktemp("web_token")
    shutil.copytree(tiny_root, folder / "data" / "models" / "tiny")
    config = folder / "server.toml"
    config.write_text(f'[server]\ntoken = "{TOKEN}"\n')
    server = ServerProcess(
        ["--model", "tiny", "--config", str(config)], folder / "data", folder / "server.log", token=TOKEN
    )
    yield server
    server.stop()


def test_docs_and_redoc_render_every_operation_offline(browser, token_server):
    """On a token server too: the pages and their assets need no token (they hold no data)."""
    url = token_server.url
    paths = set(token_server.client.get("/openapi.json").json()["paths"])
    rec = Recorder(browser)
    try:
        page = rec.page
        page.goto(f"{url}/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        shown = {e.get_attribute("data-path") for e in page.query_selector_all(".opblock-summary-path")}
        assert shown == paths and "/v1/jobs/{job_id}/video" in shown
        assert page.title() == "SparseCtrl previs server - Swagger UI"

        page.goto(f"{url}/redoc")
        page.wait_for_selector("[data-section-id^='operation/']", timeout=30_000)
        sections = page.query_selector_all("[data-section-id^='operation/']")
        assert len(sections) == sum(
            len(methods) for methods in token_server.client.get("/openapi.json").json()["paths"].values()
        )
        assert page.get_by_text("/v1/jobs/{job_id}/frames/{n}.png").count() >= 1
        page.wait_for_load_state("networkidle")
    finally:
        rec.close()
    urls = [r.url for r in rec.requests]
    assert f"{url}/docs-assets/swagger/swagger-ui-bundle.js" in urls
    assert f"{url}/docs-assets/redoc/redoc.standalone.js" in urls
    assert f"{url}/redoc/logo-mini.svg" in urls  # Redoc's footer logo, from here and not its CDN
    assert rec.outside(url) == [] and rec.blocked_by_csp() == []
    assert rec.failed == []


def _row(page, job_id: str) -> str:
    return f"tr[data-job-id='{job_id}']"


def _steps_on_page(page, job_id: str) -> int:
    return int(page.text_content(f"{_row(page, job_id)} .steps").split("/")[0])


def _play(page, job_id: str) -> dict:
    page.click(f"{_row(page, job_id)} button.play")
    video = f"{_row(page, job_id)} video"
    page.wait_for_selector(video, timeout=30_000)
    page.wait_for_function(
        "(sel) => { const v = document.querySelector(sel); return v && (v.readyState >= 2 || v.error); }",
        arg=video,
        timeout=30_000,
    )
    return page.eval_on_selector(
        video,
        "v => ({readyState: v.readyState, duration: v.duration, error: v.error && v.error.code, src: v.src,"
        " width: v.videoWidth, height: v.videoHeight})",
    )


def test_queue_page_shows_progress_plays_a_video_and_survives_a_restart(
    browser, data_dir_with_tiny, tmp_path, monkeypatch
):
    port = server_process.free_port()
    monkeypatch.setattr(server_process, "free_port", lambda: port)  # the restarted server answers the same URL
    log = tmp_path / "server.log"
    server = ServerProcess(["--model", "tiny"], data_dir_with_tiny, log)
    url = server.url
    rec = Recorder(browser, viewport={"width": 1280, "height": 420})
    page = rec.page

    def submit(owner: str, prompt: str, **changes) -> str:
        return server.client.post("/v1/jobs", json=job_body(owner=owner, prompt=prompt, **changes)).json()["id"]

    try:
        done = submit("bob", "a fox running through snow", steps=2)
        assert server.wait_for(done)["status"] == "succeeded"
        running = submit("alice", "a knight in a misty forest", **LONG_JOB)
        server.wait_for(running, statuses=("running",))

        page.goto(url + "/")
        page.wait_for_selector(f"{_row(page, running)}[data-status='running']", timeout=30_000)
        assert page.text_content(f"{_row(page, done)} td.owner") == "bob"
        assert page.text_content(f"{_row(page, done)} .badge") == "succeeded"
        assert page.text_content(f"{_row(page, running)} td.owner") == "alice"
        assert page.get_attribute("#connection", "data-state") == "live"
        # The running job's step/total moves on the page while it runs.
        first = _steps_on_page(page, running)
        page.wait_for_function(
            "([sel, n]) => parseInt(document.querySelector(sel).textContent) > n",
            arg=[f"{_row(page, running)} .steps", first],
            timeout=60_000,
        )
        assert page.text_content(f"{_row(page, running)} .steps").endswith("/150")

        video = _play(page, done)
        assert video["error"] is None and video["readyState"] >= 2
        assert (video["width"], video["height"]) == (64, 64)
        assert abs(video["duration"] - 16 / 8) < 0.2  # 16 frames at the default 8 fps
        assert not video["src"].startswith("blob:")  # no token: the <video> streams the endpoint itself

        # The server stops (the running job is interrupted); the page says so and keeps trying.
        server.stop()
        page.wait_for_selector("#connection[data-state='down']", timeout=30_000)
        server = ServerProcess(["--model", "tiny"], data_dir_with_tiny, log)
        assert server.url == url
        page.wait_for_selector(f"{_row(page, running)}[data-status='failed']", timeout=30_000)
        assert page.get_attribute("#connection", "data-state") == "live"
        assert page.text_content(f"{_row(page, running)} td.error").startswith("interrupted: ")
        # The video loaded before the restart is still there; new jobs show up.
        assert page.eval_on_selector(f"{_row(page, done)} video", "v => v.error === null && v.readyState >= 2")
        after = submit("carol", "a ball rolling down stairs", **LONG_JOB)
        queued = submit("dave", "a car at night, rain", steps=2)
        page.wait_for_selector(f"{_row(page, after)}[data-status='running']", timeout=30_000)
        page.wait_for_selector(f"{_row(page, queued)}[data-status='queued']", timeout=30_000)
        page.wait_for_function(
            "(sel) => parseInt(document.querySelector(sel).textContent) >= 3",
            arg=f"{_row(page, after)} .steps",
            timeout=60_000,
        )
        shot = page.screenshot(path=str(tmp_path / "queue-page.png"), full_page=True)
        if os.environ.get("SPARSECTRL_QUEUE_SCREENSHOT"):
            Path(os.environ["SPARSECTRL_QUEUE_SCREENSHOT"]).write_bytes(shot)
        server.client.delete(f"/v1/jobs/{queued}")
        server.client.delete(f"/v1/jobs/{after}")
        page.wait_for_selector(f"{_row(page, after)}[data-status='cancelled']", timeout=60_000)
    finally:
        rec.close()
        server.stop()
    assert rec.outside(url) == [] and rec.blocked_by_csp() == []


def test_queue_page_asks_for_the_token_once_and_plays_videos_with_it(browser, token_server):
    url = token_server.url
    job = token_server.client.post("/v1/jobs", json=job_body(steps=2, owner="erin")).json()["id"]
    assert token_server.wait_for(job)["status"] == "succeeded"
    rec = Recorder(browser)
    page = rec.page
    try:
        page.goto(url + "/")
        page.wait_for_selector("#token-form:not([hidden])", timeout=30_000)
        assert page.get_attribute("#connection", "data-state") == "token"
        page.fill("#token-input", "wrong")
        page.click("#token-form button[type=submit]")
        page.wait_for_selector("#token-form:not([hidden])", timeout=30_000)
        assert "refused" in page.text_content("#token-reason")
        page.fill("#token-input", TOKEN)
        page.click("#token-form button[type=submit]")
        page.wait_for_selector(f"{_row(page, job)}[data-status='succeeded']", timeout=30_000)
        assert page.text_content(f"{_row(page, job)} td.owner") == "erin"

        video = _play(page, job)
        assert video["error"] is None and video["readyState"] >= 2 and video["duration"] > 0
        assert video["src"].startswith("blob:")  # fetched with the Authorization header, played from memory
        fetched = [r for r in rec.requests if r.url == f"{url}/v1/jobs/{job}/video"]
        assert fetched and all(r.all_headers().get("authorization") == f"Bearer {TOKEN}" for r in fetched)

        page.reload()  # entered once: kept for this tab
        page.wait_for_selector(f"{_row(page, job)}[data-status='succeeded']", timeout=30_000)
        assert page.is_hidden("#token-form")
        assert page.evaluate("sessionStorage.length") == 1 and page.evaluate("localStorage.length") == 0
        page.click("#forget-token a")  # and forgotten on request
        page.wait_for_selector("#token-form:not([hidden])", timeout=30_000)
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        rec.close()
    assert rec.outside(url) == [] and rec.blocked_by_csp() == []
    assert not any(TOKEN in r.url for r in rec.requests)  # never in a URL


def test_an_owner_cannot_inject_markup(browser, tiny_server):
    owner = "<img src=x onerror=\"document.title='pwned'\">"
    job = tiny_server.client.post("/v1/jobs", json=job_body(steps=1, owner=owner)).json()["id"]
    rec = Recorder(browser)
    page = rec.page
    try:
        page.goto(tiny_server.url + "/")
        page.wait_for_selector(_row(page, job), timeout=30_000)
        assert page.text_content(f"{_row(page, job)} td.owner") == owner
        assert page.query_selector(f"{_row(page, job)} img") is None
        time.sleep(0.5)
        assert page.title() != "pwned"
    finally:
        rec.close()
    assert rec.blocked_by_csp() == []


def test_queue_page_animates_a_running_jobs_live_preview_beside_its_progress(browser, token_server):
    """#29: the preview (fetched with the token) plays frame by frame on a canvas in the progress cell, a newer
    step replaces it as the job runs, and it goes when the job ends."""
    url = token_server.url
    job = token_server.client.post("/v1/jobs", json=job_body(owner="fay", **LONG_JOB)).json()["id"]
    rec = Recorder(browser)
    page = rec.page
    canvas = f"{_row(page, job)} td.progress canvas.preview"
    try:
        page.goto(url + "/")
        page.wait_for_selector("#token-form:not([hidden])", timeout=30_000)
        page.fill("#token-input", TOKEN)
        page.click("#token-form button[type=submit]")
        page.wait_for_selector(f"{canvas}[data-step]", timeout=60_000)
        assert page.get_attribute(canvas, "data-frames") == "32"
        first_step = int(page.get_attribute(canvas, "data-step"))
        frames_seen = set()
        for _ in range(12):  # animated: the frame shown moves on by itself, between polls too
            frames_seen.add(page.get_attribute(canvas, "data-frame"))
            page.wait_for_timeout(60)
        assert len(frames_seen) >= 2, frames_seen
        page.wait_for_function(
            "([sel, n]) => parseInt(document.querySelector(sel).dataset.step) > n",
            arg=[canvas, first_step],
            timeout=60_000,
        )
        size = page.eval_on_selector(canvas, "c => [c.width, c.height]")
        assert size == [64, 64]  # a 16x16 latent tile of a 128x128 clip, scaled up to the page's 64 px
        drawn = page.eval_on_selector(
            canvas, "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 < 3 && v)"
        )
        assert drawn  # pixels, not an empty canvas
        fetched = [r for r in rec.requests if r.url == f"{url}/v1/jobs/{job}/preview"]
        assert fetched and all(r.all_headers().get("authorization") == f"Bearer {TOKEN}" for r in fetched)
        token_server.client.delete(f"/v1/jobs/{job}")
        page.wait_for_selector(f"{_row(page, job)}[data-status='cancelled']", timeout=60_000)
        assert page.query_selector(canvas) is None
    finally:
        rec.close()
        token_server.client.delete(f"/v1/jobs/{job}")
    assert rec.outside(url) == [] and rec.blocked_by_csp() == []
