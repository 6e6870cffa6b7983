"""The clip forming on the previs scene's Sequencer while a job runs (#29 item 4), with a real tiny server.

One test runs against the server's own preview endpoint (GET /v1/jobs/{id}/preview, docs/api.md). The other puts
a small proxy in front of the real server that answers that endpoint as the contract says (`preview_step` in the
job, the frames side by side at latent size with X-Preview-Step and X-Preview-Frames) with each generated frame a
flat colour of its own, so the test can tell which frame plays where, and that holds the job's end until one
preview was fetched (a tiny job may end between two polls). Everything else is the real server's answer."""

from __future__ import annotations

import json
import re
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from sparsectrl_blender.core.png import encode_png  # noqa: E402
from tests.e2e.test_addon import all_strips, preview_strips, save_shot, tiny_server  # noqa: E402, F401

pytestmark = pytest.mark.slow


def tile_colour(index: int) -> tuple[int, int, int]:
    return (20 * index + 10, 250 - 20 * index, 128)


class PreviewProxy:
    """Forwards every request to the real server; adds the preview the contract describes (see the module)."""

    def __init__(self, upstream: str):
        self.upstream, self.bodies, self.previews_served = upstream, {}, {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.handle(self, "GET")

            def do_POST(self):
                proxy.handle(self, "POST")

            def do_DELETE(self):
                proxy.handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _forward(self, method: str, path: str, body: bytes | None):
        req = urllib.request.Request(self.upstream + path, data=body, method=method)
        if body:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0)) or None
        if method == "GET" and (m := re.fullmatch(r"/v1/jobs/([^/]+)/preview", h.path)):
            return self._preview(h, m.group(1))
        status, kind, payload = self._forward(method, h.path, body)
        if method == "POST" and h.path == "/v1/jobs" and status < 300:
            self.bodies[json.loads(payload)["id"]] = json.loads(body)
        if method == "GET" and (m := re.fullmatch(r"/v1/jobs/([^/]+)", h.path)) and m.group(1) in self.bodies:
            job = json.loads(payload)
            job["preview_step"] = job["progress"]["step"] or None
            if job["status"] == "succeeded" and not self.previews_served.get(m.group(1)):
                job["status"], job["preview_step"] = "running", job["progress"]["total"]  # one preview seen first
            payload = json.dumps(job).encode()
        self._answer(h, status, kind, payload)

    def _preview(self, h, job_id: str) -> None:
        body = self.bodies.get(job_id)
        if body is None:
            return self._answer(h, 404, "application/json", b'{"error": {"code": "not_found", "message": "no"}}')
        n, w, h8 = body["num_frames"], body["width"] // 8, body["height"] // 8
        tiles = [np.full((h8, w, 3), tile_colour(i), np.uint8) for i in range(n)]
        self.previews_served[job_id] = self.previews_served.get(job_id, 0) + 1
        headers = {"X-Preview-Step": "1", "X-Preview-Frames": str(n)}
        self._answer(h, 200, "image/png", encode_png(np.concatenate(tiles, axis=1)), headers)

    @staticmethod
    def _answer(h, status: int, kind: str, payload: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", kind)
        h.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(payload)


@pytest.fixture(scope="module")
def proxy(tiny_server):  # noqa: F811
    p = PreviewProxy(tiny_server.url)
    yield p
    p.server.shutdown()


@pytest.fixture
def addon():
    import sparsectrl_blender

    sparsectrl_blender.register()
    yield sys.modules["sparsectrl_blender.blender.operators"], sys.modules["sparsectrl_blender.blender.live_preview"]
    sparsectrl_blender.unregister()


def _until_forming(ops, live) -> None:
    for _ in range(2000):
        if ops._poll_run() is None:
            raise AssertionError(f"the job ended before a preview was shown: {ops.STATUS.message}")
        if live.LIVE.step:
            return
        threading.Event().wait(0.02)
    raise AssertionError("no preview shown")


def _shot(proxy, tmp_path: Path):
    save_shot(tmp_path / "shot.blend", start=1, end=24, markers=(1, 12, 24), resolution=(64, 64))
    props = bpy.context.scene.sparsectrl
    props.server_url, props.prompt, props.size, props.steps = proxy.url, "boxes", 64, 2
    props.frames_mode, props.num_frames = "FIXED", 8
    return bpy.context.scene


def test_the_clip_forms_where_the_final_strip_goes_is_never_saved_and_is_replaced(proxy, tmp_path, addon):
    ops, live = addon
    shot = _shot(proxy, tmp_path)
    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    _until_forming(ops, live)
    previs = bpy.data.scenes["Scene previs"]
    (forming,) = live.forming_strips()
    assert forming.id_data == previs and forming.type == "IMAGE" and forming.channel >= 2
    assert (forming.frame_final_start, forming.frame_final_duration) == (1, 24)  # the shot's span, frame for frame
    # Each shot frame shows the generated frame the final shows there: keyframes 1, 12, 24 -> frames 0, 4, 7.
    expected = live.shown_frames(8, 1, 24, {1: 0, 12: 4, 24: 7})
    assert expected[0] == 0 and expected[11] == 4 and expected[23] == 7
    shown = [int(re.search(r"_f(\d+)\.png", e.filename).group(1)) for e in forming.elements]
    assert shown == expected
    folder = Path(bpy.path.abspath(forming.directory))
    for frame in (0, 11, 23):  # the tile files are the preview's frames, cut out of the side-by-side PNG
        (tile,) = live.decode_tiles((folder / forming.elements[frame].filename).read_bytes(), 1, tmp_path)
        assert tile.shape == (8, 8, 3) and tuple(tile[0, 0]) == tile_colour(expected[frame])
    assert ops.STATUS.run is not None and live.LIVE.panel_image() is not None  # the panel's middle frame

    # Saved meanwhile: nothing of it in the file (no reference to the temporary tiles), and it is back after.
    saved = tmp_path / "saved.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(saved), compress=False, copy=True)
    data = saved.read_bytes()
    assert str(folder).encode() not in data and b"SparseCtrl forming" not in data and b"sparsectrl_live" not in data
    assert len(live.forming_strips()) == 1

    ops.run_timers(120)
    assert ops.STATUS.run is None and not ops.STATUS.message_is_error, ops.STATUS.message
    assert live.forming_strips() == [] and not folder.exists() and live.LIVE.panel_image() is None
    (final,) = preview_strips(previs)
    assert (final.frame_final_start, final.frame_final_duration) == (1, 24)
    assert shot.sequence_editor is None or not all_strips(shot)  # the shot's own Sequencer untouched


def test_the_real_servers_preview_forms_and_a_cancel_removes_it(tiny_server, tmp_path, addon):  # noqa: F811
    """Against the server's own preview endpoint (branch `previews`, merged): the clip forms from its PNG, and a
    Cancel removes it, tiles and all."""
    ops, live = addon
    _shot(tiny_server, tmp_path)
    bpy.context.scene.sparsectrl.steps = 30  # long enough to see it and cancel while it runs
    assert bpy.ops.sparsectrl.generate() == {"FINISHED"}
    _until_forming(ops, live)
    job = ops.STATUS.run.runner.state
    assert 1 <= live.LIVE.step <= 30 and live.LIVE.total == 30
    (forming,) = live.forming_strips()
    assert (forming.frame_final_start, forming.frame_final_duration) == (1, 24) and len(forming.elements) == 24
    folder = live.LIVE.folder
    (tile,) = live.decode_tiles((folder / forming.elements[0].filename).read_bytes(), 1, tmp_path)
    assert tile.shape == (8, 8, 3)  # a generated frame at latent size: 64 / 8
    assert bpy.ops.sparsectrl.cancel() == {"FINISHED"}
    ops.run_timers(120)
    assert ops.STATUS.run is None and job.phase == "cancelled"
    assert live.forming_strips() == [] and not folder.exists() and live.LIVE.panel_image() is None
    assert preview_strips(bpy.data.scenes["Scene previs"]) == []
