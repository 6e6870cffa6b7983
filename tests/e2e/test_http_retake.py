"""Retakes and pins over HTTP (#28), on a real uvicorn process: a take's span regenerated with another seed and
prompt, every delivered frame retimed from frames outside it the parent's; retakes of retakes; each refusal a 422
saying what is wrong; a pin on a line-art keyframe refused."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import finished, job_body, keyframe

pytestmark = pytest.mark.slow


def png_frame(server, job: dict, n: int) -> bytes:
    return server.client.get(f"/v1/jobs/{job['id']}/frames/{n}.png").content


def test_a_retake_regenerates_its_span_and_keeps_the_rest(configured_server):
    s = configured_server
    parent = finished(s, job_body(steps=3))
    child = finished(s, job_body(steps=3, seed=99, prompt="a cat", retake={"job": parent["id"], "frames": [6, 9]}))
    assert child["request"]["retake"] == {"job": parent["id"], "frames": [6, 9]}
    # Delivered without retiming: frame n is generated frame n, losslessly as PNG.
    for n in (0, 5, 10, 15):
        assert png_frame(s, child, n) == png_frame(s, parent, n)
    assert all(png_frame(s, child, n) != png_frame(s, parent, n) for n in (6, 9))
    # A retake of the retake keeps the retake's frames; a retimed one's delivered frames from outside its span too.
    again = finished(s, job_body(steps=3, seed=5, retake={"job": child["id"], "frames": [0, 2]}))
    assert png_frame(s, again, 8) == png_frame(s, child, 8) and png_frame(s, again, 1) != png_frame(s, child, 1)
    retimed = job_body(steps=3, output_frames=31, keyframes=[keyframe(0) | {"output_index": 0}, keyframe(15, 10)])
    first = finished(s, retimed)
    second = finished(s, retimed | {"seed": 8, "retake": {"job": first["id"], "frames": [0, 3]}})
    # Generated frame p shows at delivered 2p: delivered 10..30 blend generated 5..15, all outside 0..3.
    assert all(png_frame(s, second, n) == png_frame(s, first, n) for n in (10, 20, 30))
    assert png_frame(s, second, 2) != png_frame(s, first, 2)


def test_a_bad_retake_says_what_is_wrong(configured_server):
    s = configured_server
    parent = finished(s, job_body(steps=2))

    def refused(retake: dict, **changes) -> str:
        r = s.client.post("/v1/jobs", json=job_body(steps=2, retake=retake, **changes))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_retake", r.text
        return r.json()["error"]["message"]

    assert "no such job" in refused({"job": "0" * 32, "frames": [0, 3]})
    assert "no such job" in refused({"job": "../../etc", "frames": [0, 3]})
    assert "forwards" in refused({"job": parent["id"], "frames": [9, 3]})
    assert "0..15" in refused({"job": parent["id"], "frames": [3, 16]})
    assert "generated at 64x64 with 16 frames" in refused({"job": parent["id"], "frames": [0, 3]}, width=128)
    fewer = {"num_frames": 12, "keyframes": [keyframe(0), keyframe(11)]}
    assert "with 16 frames" in refused({"job": parent["id"], "frames": [0, 3]}, **fewer)
    queued = s.client.post("/v1/jobs", json=job_body(steps=40)).json()["id"]
    s.client.delete(f"/v1/jobs/{queued}")
    assert "only a succeeded job" in refused({"job": queued, "frames": [0, 3]})


def test_a_pin_needs_an_rgb_keyframe(configured_server):
    r = configured_server.client.post("/v1/jobs", json=job_body(keyframes=[keyframe(0) | {"pin": True}]))
    assert r.status_code == 422 and "needs an RGB keyframe" in r.json()["error"]["message"]
