"""#32 item 1: a request's memory does not grow with its images' size, measured on a real server process.

Eight 4096x4096 1-bit PNGs (22 kB of body, each under max_image_pixels) once grew the server by 612 MB: every image
was decoded in full and kept until the request ended. Now each is decoded alone, fitted to the generation size at
once and kept as that small PNG. The process's peak resident memory (VmHWM, reset through /proc/PID/clear_refs) is
read around the request, after a warm-up job of the same shape with small images.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import pytest

from tests.e2e.conftest import job_body
from tests.e2e.server_process import ServerProcess

pytestmark = pytest.mark.slow

MAX_GROWTH_MB = 250


def one_bit_png(size: int, shift: int = 0) -> str:
    """A line drawing as a 1-bit PNG: a few kB for 4096x4096, 16 MB as PIL holds it, 48 MB as RGB."""
    from PIL import Image, ImageDraw

    img = Image.new("1", (size, size))
    ImageDraw.Draw(img).rectangle((size // 8 + shift, size // 8, size // 2 + shift, size - size // 8), outline=1)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def body(size: int) -> dict:
    frames = [{"index": i * 2, "image": one_bit_png(size, shift=i)} for i in range(8)]
    return job_body(keyframes=frames, steps=2)


def memory_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_growth_mb(server: ServerProcess, bodies: list[dict]) -> float:
    """The server's peak resident memory while `bodies` are submitted at once and run, above where it was."""
    pid = server.proc.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = memory_kb(pid, "VmRSS")
    ids: list[str] = []

    def submit(b: dict) -> None:
        r = server.client.post("/v1/jobs", json=b)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])

    threads = [threading.Thread(target=submit, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for job_id in ids:
        assert server.wait_for(job_id)["status"] == "succeeded"
    return (memory_kb(pid, "VmHWM") - before) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    server = ServerProcess(["--model", "tiny"], folder / "data", folder / "server.log")
    yield server
    server.stop()


def test_a_request_of_large_images_grows_the_server_by_at_most_250_mb(server):
    peak_growth_mb(server, [body(64), body(64)])  # warm-up: the same jobs with small images
    growth = peak_growth_mb(server, [body(4096)])
    print(f"peak growth, one request of eight 4096x4096 1-bit PNGs: {growth:.0f} MB")
    assert growth <= MAX_GROWTH_MB, growth


def test_four_such_requests_at_once_stay_within_the_bound_of_one(server):
    peak_growth_mb(server, [body(64)] * 4)
    growth = peak_growth_mb(server, [body(4096)] * 4)
    print(f"peak growth, four such requests at once: {growth:.0f} MB")
    assert growth <= MAX_GROWTH_MB, growth
