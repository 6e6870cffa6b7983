"""Request building and the urllib client (pure Python; the client against a closed port)."""

from __future__ import annotations

import base64
import dataclasses
import socket

import pytest

from sparsectrl_blender.core.client import Client, ServerError
from sparsectrl_blender.core.png import encode_png
from sparsectrl_blender.core.request import (
    GenerationSettings,
    further_modalities,
    generation_size,
    images_modality,
    job_body,
    keyframe_entries,
    keyframe_modality,
    look_group,
    parse_keyframe_images,
    parse_keyframe_strengths,
    parse_window,
    rgb_look,
    unavailable,
)


def test_generation_size_keeps_the_scene_aspect_in_multiples_of_8():
    assert generation_size(1920, 1080, 512) == (512, 288)
    assert generation_size(1080, 1920, 512) == (288, 512)
    assert generation_size(2048, 858, 512) == (512, 216)  # 2.39:1
    w, h = generation_size(1000, 1000, 300)
    assert w == h == 304 and w % 8 == 0


def test_job_body_matches_the_api_contract():
    png = encode_png(__import__("numpy").zeros((8, 8, 3), "uint8"))
    body = job_body(GenerationSettings(prompt="a fox", seed=5), 16, 512, 288, 24, 48, [(15, 47, png), (0, 0, png)])
    assert [(k["index"], k["output_index"]) for k in body["keyframes"]] == [(0, 0), (15, 47)]
    assert base64.b64decode(body["keyframes"][0]["image"]) == png
    assert {k: body[k] for k in ("prompt", "modality", "num_frames", "width", "height", "seed", "fps")} == {
        "prompt": "a fox",
        "modality": "lineart",
        "num_frames": 16,
        "width": 512,
        "height": 288,
        "seed": 5,
        "fps": 24,
    }
    assert body["output_frames"] == 48 and body["quality"] == "final" and body["loras"] is None
    with pytest.raises(ValueError, match="write a prompt"):
        job_body(GenerationSettings(prompt="  "), 16, 64, 64, 8, 16, [(0, 0, png)])


def test_depth_every_frame_with_or_without_keyframes():
    """Keyframes: None sends no modality (the server needs one only with keyframes) and needs depth every frame;
    what the server lacks is one sentence, said before anything is rendered."""
    alone = GenerationSettings(prompt="a fox", keyframe_source="NONE", depth_every_frame=True, depth_strength=0.6)
    body = job_body(alone, 16, 64, 64, 24, 48, [])
    assert body["modality"] is None and body["keyframes"] == [] and "controlnets" not in body
    with pytest.raises(ValueError, match="nothing steers the preview"):
        job_body(GenerationSettings(prompt="a fox", keyframe_source="NONE"), 16, 64, 64, 24, 48, [])
    assert job_body(GenerationSettings(prompt="a fox", depth_every_frame=True), 16, 64, 64, 24, 48, [])["modality"] == (
        "lineart"
    )

    health = {"modalities": ["lineart", "rgb"], "controlnets": ["depth"]}
    assert unavailable(alone, health) is None
    depth_keyframes_off = GenerationSettings(modality="depth", keyframe_source="NONE", depth_every_frame=True)
    assert unavailable(depth_keyframes_off, health) is None
    assert "no depth encoder" in unavailable(GenerationSettings(modality="depth"), health)
    old_server = {"modalities": ["lineart", "rgb"]}  # from before per-frame ControlNets: lists none
    assert unavailable(alone, old_server) == (
        "Depth every frame unavailable: the server has no 'depth' ControlNet (it has: none); add one under "
        "[model.controlnets] (docs/weights.md)"
    )


def test_keyframe_strengths_and_guidance_windows_in_the_body():
    """Strength per keyframe and the guidance windows (#16 item 3): said before rendering when malformed, sent
    only when set (a server from before them takes the body as it did)."""
    assert parse_keyframe_strengths(" 1001:0.5, 1040 : 1.2 ;") == {1001: 0.5, 1040: 1.2}
    assert parse_keyframe_strengths("") == {}
    for bad, says in (("1001=0.5", "write FRAME:STRENGTH"), ("1001:9", "0 to 4"), ("1:1, 1:2", "frame 1 twice")):
        with pytest.raises(ValueError, match=says):
            parse_keyframe_strengths(bad)
    assert parse_window("0:0.3", "keyframe") == (0.0, 0.3)
    for bad in ("0.3", "a:b", "0.5:0.5", "0:1.5"):
        with pytest.raises(ValueError, match="keyframe guidance"):
            parse_window(bad, "keyframe")

    png = encode_png(__import__("numpy").zeros((8, 8, 3), "uint8"))
    plain = job_body(GenerationSettings(prompt="a fox"), 16, 64, 64, 24, 48, [(0, 0, png)])
    assert "keyframe_guidance_end" not in plain and "strength" not in plain["keyframes"][0]
    windowed = GenerationSettings(prompt="a fox", keyframe_guidance_end=0.30000001192092896)  # a panel float
    body = job_body(windowed, 16, 64, 64, 24, 48, [])
    assert (body["keyframe_guidance_start"], body["keyframe_guidance_end"]) == (0.0, 0.3)
    with pytest.raises(ValueError, match="keyframe guidance: start 0.5 and end 0.2"):
        job_body(
            GenerationSettings(prompt="a fox", keyframe_guidance_start=0.5, keyframe_guidance_end=0.2),
            16,
            64,
            64,
            24,
            48,
            [],
        )
    with pytest.raises(ValueError, match="keyframe strength '1001=2'"):
        job_body(GenerationSettings(prompt="a fox", keyframe_strengths="1001=2"), 16, 64, 64, 24, 48, [])
    alone = GenerationSettings(prompt="a fox", keyframe_source="NONE", depth_every_frame=True, keyframe_strengths="x")
    assert "keyframe_guidance_end" not in job_body(alone, 16, 64, 64, 24, 48, [])  # keyframe settings unused
    with pytest.raises(ValueError, match="depth guidance"):
        job_body(dataclasses.replace(alone, depth_guidance_start=1.0), 16, 64, 64, 24, 48, [])


def test_keyframe_images_are_frames_with_paths():
    assert parse_keyframe_images("1001: //boards/010.png,\n 1040:C:\\art\\key.jpg") == {
        1001: "//boards/010.png",
        1040: "C:\\art\\key.jpg",  # a Windows path keeps its drive's colon
    }
    for bad, says in (("//a.png", "write FRAME: PATH"), ("10:", "write FRAME: PATH"), ("1:a, 1:b", "frame 1 twice")):
        with pytest.raises(ValueError, match=says):
            parse_keyframe_images(bad)
    # Images alone are keyframes: the modality goes with them.
    only = GenerationSettings(prompt="a fox", keyframe_source="NONE", keyframe_images="1: a.png", modality="rgb")
    assert job_body(only, 16, 64, 64, 24, 48, [])["modality"] == "rgb"


def test_image_files_as_the_look_beside_rendered_keyframes():
    """#16 item 2: images of another kind than the Condition's are their own group (an RGB look beside line
    art), sent with their modality and the look's strength; by default (As: Condition) they replace the
    renders, as before."""
    import numpy as np

    from sparsectrl_blender.core.job import PreparedJob

    default = GenerationSettings(prompt="a fox", keyframe_images="1: look.png")
    assert (keyframe_modality(default), images_modality(default)) == ("lineart", None)  # in place of renders
    beside = dataclasses.replace(default, keyframe_images_as="rgb", look_strength=0.7)
    assert (keyframe_modality(beside), images_modality(beside)) == ("lineart", "rgb")
    assert images_modality(dataclasses.replace(beside, keyframe_images_as="lineart")) is None  # the same kind
    alone = dataclasses.replace(beside, keyframe_source="NONE")  # images alone: their kind is the request's
    assert (keyframe_modality(alone), images_modality(alone)) == ("rgb", None)
    assert keyframe_modality(dataclasses.replace(default, keyframe_source="NONE")) == "lineart"
    assert images_modality(dataclasses.replace(beside, keyframe_images=" ")) is None
    png = encode_png(np.zeros((8, 8, 3), "uint8"))
    (entry,) = keyframe_entries([(3, 10, png)], {3: 0.5}, "rgb")
    assert (entry["index"], entry["output_index"], entry["strength"], entry["modality"]) == (3, 10, 0.5, "rgb")
    # The look's group goes with its keyframes only: a file outside the shot sends neither (the server would
    # refuse a group without keyframes).
    image = np.zeros((8, 8, 3), "uint8")
    body = job_body(beside, 16, 64, 64, 24, 48, [])
    assert "keyframe_groups" not in body
    job = PreparedJob(dict(body), 1001, 1048, {1001: 0, 1030: 9}, {1001: image, 1030: image}, [], [0.1, 0.1])
    job.further, job.look_group = {"rgb": {1030: image}}, look_group(dataclasses.replace(beside, look_guidance_end=0.6))
    job.encode()
    sent = [(k["index"], k.get("modality", "")) for k in job.body["keyframes"]]
    assert sent == [(0, ""), (9, ""), (9, "rgb")]
    group = {"modality": "rgb", "strength": 0.7, "guidance_start": 0.0, "guidance_end": 0.6}
    assert job.body["keyframe_groups"] == [group]
    nothing = PreparedJob(dict(body), 1001, 1048, {1001: 0}, {1001: image}, [], [0.1], look_group=look_group(beside))
    nothing.encode()
    assert "keyframe_groups" not in nothing.body
    health = {"modalities": ["lineart"], "controlnets": []}
    assert unavailable(beside, health) == (
        "RGB keyframe images unavailable: the server has no rgb encoder (it has: lineart)"
    )
    assert unavailable(default, health) is None
    # The look from a render (RGB look): the RGB encoder beside the line art.
    look = GenerationSettings(prompt="a fox", rgb_look="FIRST", look_strength=0.6)
    assert rgb_look(look) and further_modalities(look) == ["rgb"]
    assert unavailable(look, health) == "RGB look unavailable: the server has no rgb encoder (it has: lineart)"
    both = dataclasses.replace(look, keyframe_images="1: a.png", keyframe_images_as="depth")
    assert further_modalities(both) == ["rgb", "depth"]
    with pytest.raises(ValueError, match="look guidance"):
        job_body(dataclasses.replace(look, look_guidance_start=0.5, look_guidance_end=0.5), 16, 64, 64, 24, 48, [])
    for off in (dict(modality="rgb"), dict(keyframe_source="NONE"), dict(rgb_look="NONE")):
        assert not rgb_look(dataclasses.replace(look, **off))  # RGB keyframes already, none, or off


def test_loras_field_turns_into_the_api_list():
    png = encode_png(__import__("numpy").zeros((8, 8, 3), "uint8"))
    settings = GenerationSettings(prompt="a fox", loras=" ink:0.7, toon ;")
    body = job_body(settings, 16, 64, 64, 8, 16, [(0, 0, png)])
    assert body["loras"] == [{"name": "ink", "scale": 0.7}, {"name": "toon", "scale": None}]
    for bad in ("ink:strong", ":0.5"):
        with pytest.raises(ValueError, match="LoRA"):
            job_body(GenerationSettings(prompt="a fox", loras=bad), 16, 64, 64, 8, 16, [(0, 0, png)])


def test_png_encoder_round_trips():
    import io

    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(pixels)))), pixels)


def test_unreachable_server_is_one_clear_sentence():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerError) as e:
        Client(f"127.0.0.1:{port}").health()
    assert e.value.code == "unreachable"
    assert f"cannot reach the server at http://127.0.0.1:{port}" in str(e.value) and "Is it running?" in str(e.value)


class _Server:
    """A client stand-in that records what was submitted and finishes the job at once."""

    def __init__(self):
        self.submitted, self.bodies = [], []

    def submit(self, body):
        self.submitted.append([dict(k) for k in body["keyframes"]])
        self.bodies.append(dict(body))
        return {"id": "job-1", "status": "queued"}

    def job(self, job_id):
        return {"status": "succeeded", "progress": {"step": 2, "total": 2}}

    def video(self, job_id):
        return b"mp4"


def test_the_passes_are_encoded_in_the_job_thread_before_the_submit():
    """The panel's Generate hands the passes over as images; the runner (in its thread) makes the PNGs and the
    body's keyframes first, each keyframe at its generated index and its frame in the shot."""
    import threading

    import numpy as np
    from PIL import Image

    from sparsectrl_blender.core.job import JobRunner, PreparedJob

    images = {130: np.full((8, 16, 3), 200, np.uint8), 101: np.zeros((8, 16, 3), np.uint8)}
    images[101][2:4, 3:9] = 255
    body = job_body(GenerationSettings(prompt="a fox"), 16, 16, 8, 30, 60, [])
    assert body["keyframes"] == []
    prepared = PreparedJob(body, 101, 160, {101: 0, 130: 8}, images, [], [0.1, 0.1])
    prepared.strengths = {130: 0.5}  # by timeline frame: sent at the keyframe's generated index
    server = _Server()
    runner = JobRunner(server, prepared.body, poll_seconds=0, prepare=prepared.encode)
    thread = threading.Thread(target=runner.run)
    thread.start()
    thread.join(10)
    assert runner.state.phase == "done" and runner.state.video == b"mp4"
    (sent,) = server.submitted
    assert [(k["index"], k["output_index"]) for k in sent] == [(0, 0), (8, 29)]
    assert [k.get("strength") for k in sent] == [None, 0.5]
    for entry, frame in zip(sent, (101, 130), strict=True):
        png = base64.b64decode(entry["image"])
        assert png == prepared.passes[frame]
        np.testing.assert_array_equal(np.asarray(Image.open(__import__("io").BytesIO(png))), images[frame])
    assert "controlnets" not in server.bodies[0]
    passes = prepared.passes
    prepared.encode()  # once only: the batch encodes first, its runner then finds the body done
    assert prepared.passes is passes and prepared.encode_seconds > 0


def test_depth_every_frame_is_one_controlnet_group_with_a_frame_per_generated_index():
    """Each generated frame gets the depth rendered at its timeline frame; a timeline frame two generated frames
    share (more generated frames than the shot has) is encoded once and sent for both."""
    import numpy as np
    from PIL import Image

    from sparsectrl_blender.core.job import JobRunner, PreparedJob

    settings = GenerationSettings(prompt="a fox", keyframe_source="NONE", depth_every_frame=True)
    body = job_body(settings, 6, 16, 8, 24, 4, [])
    prepared = PreparedJob(body, 1, 4, {}, {}, [], [0.1] * 4)
    prepared.dense_guidance = (0.0, 0.8)
    prepared.dense_frames = [1, 1, 2, 3, 3, 4]
    prepared.dense_images = {f: np.full((8, 16, 3), 40 * f, np.uint8) for f in (1, 2, 3, 4)}
    prepared.dense_strength = 0.7
    server = _Server()
    runner = JobRunner(server, prepared.body, poll_seconds=0, prepare=prepared.encode)
    assert runner.run().phase == "done"
    (group,) = server.bodies[0]["controlnets"]
    assert group["name"] == "depth" and group["strength"] == 0.7 and server.bodies[0]["keyframes"] == []
    assert (group["guidance_start"], group["guidance_end"]) == (0.0, 0.8)
    assert [f["index"] for f in group["frames"]] == list(range(6))
    for entry, frame in zip(group["frames"], prepared.dense_frames, strict=True):
        png = base64.b64decode(entry["image"])
        assert png == prepared.dense_passes[frame]
        np.testing.assert_array_equal(np.asarray(Image.open(__import__("io").BytesIO(png))), 40 * frame)
    assert sorted(prepared.dense_passes) == [1, 2, 3, 4]


def test_the_owner_sent_is_printable_and_within_the_servers_limit():
    from sparsectrl_blender.core.request import OWNER_MAX_CHARS, owner_name

    assert owner_name("  Zoë (lighting)\n") == "Zoë (lighting)"
    assert owner_name("a\x1b[31mb") == "a[31mb" and owner_name("\t\n") is None
    assert len(owner_name("x" * 200)) == OWNER_MAX_CHARS


def test_another_api_version_or_a_starting_server_is_said_before_anything_is_rendered():
    """The add-on compares the server's api_version (GET /v1/health) with its own; a cluster whose workers are
    still loading the model says so. A server from before api_version speaks version 1."""
    from sparsectrl_blender.core.client import API_VERSION, server_problem

    settings = GenerationSettings(prompt="a fox")
    ready = {"status": "ok", "api_version": API_VERSION, "modalities": ["lineart"]}
    assert server_problem(ready) is None and unavailable(settings, ready) is None
    assert server_problem({"modalities": ["lineart"]}) is None  # before api_version: 1
    newer = server_problem({**ready, "api_version": API_VERSION + 1})
    assert newer.startswith(f"the server speaks API version {API_VERSION + 1}, this add-on version {API_VERSION}")
    assert "update the add-on" in newer and "Get Extensions" in newer
    assert "update the server" in server_problem({**ready, "api_version": 0})
    assert unavailable(settings, {**ready, "api_version": API_VERSION + 1}).startswith("The server speaks API")
    starting = {**ready, "status": "starting", "starting": "the cluster's workers are starting (1 worker(s) loading)"}
    assert unavailable(settings, {**starting, "modalities": []}) == (
        "The server is starting: the cluster's workers are starting (1 worker(s) loading)"
    )
