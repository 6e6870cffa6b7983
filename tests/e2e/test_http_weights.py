"""A server started on the files artists download (original layouts, found by name in a ComfyUI install, a LoRA),
seen through GET /v1/models, /v1/health, a job that turns the LoRA on and jobs steered by lllyasviel's depth
ControlNet on every frame."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import save_file

from server.video.encode import read_video
from tests.e2e.conftest import job_body
from tests.e2e.server_process import ServerProcess
from tests.original_layout import kohya_lora_state_dict, write_original_files
from tests.server.test_weights_formats import comfyui_tree

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def comfy_server(tmp_path_factory, tiny_root):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = tmp_path_factory.mktemp("comfy-server")
    originals = write_original_files(tiny_root, folder / "downloads")
    comfy = comfyui_tree(folder / "ComfyUI", originals)
    lora = kohya_lora_state_dict(
        UNet2DConditionModel.from_pretrained(tiny_root / "base" / "unet"),
        CLIPTextModel.from_pretrained(tiny_root / "base" / "text_encoder"),
    )
    save_file(lora, comfy / "models" / "loras" / "inkStyle.safetensors")
    configs = originals["configs"]
    (folder / "server.toml").write_text(
        f'[model]\nbase = {{ path = "tinyVision_v1.safetensors", config = "{configs / "base"}" }}\n'
        f'motion_adapter = {{ path = "v3_sd15_mm.ckpt", config = "{configs / "motion_adapter"}" }}\n'
        'domain_adapter = { path = "v3_sd15_adapter.ckpt", scale = 1.0 }\n'
        f'[model.encoders]\nrgb = {{ path = "v3_sd15_sparsectrl_rgb.ckpt", config = "{configs / "rgb"}" }}\n'
        "[model.controlnets]\n"
        f'depth = {{ path = "control_v11f1p_sd15_depth.pth", config = "{configs / "controlnet"}" }}\n'
        '[model.loras]\nink = { path = "inkStyle.safetensors", scale = 0.6 }\n'
        f'[model.search]\ncomfyui = "{comfy}"\n'
        "[generation]\nwidth = 64\nheight = 64\nsteps = 2\n"
    )
    server = ServerProcess(["--config", str(folder / "server.toml")], folder / "data", folder / "server.log")
    yield server
    server.stop()


def test_models_lists_every_configured_weight(comfy_server):
    c = comfy_server.client
    models = c.get("/v1/models").json()
    assert models["model"] == {"name": "tinyVision_v1", "tiny": False}
    assert models["modalities"] == ["rgb"] and models["loras"] == {"ink": 0.6}
    assert models["temporal_norm"] == "per_frame"
    by_role = {(w["role"], w["name"]): w for w in models["weights"]}
    assert set(by_role) == {
        ("base", "base"),
        ("motion_adapter", "motion_adapter"),
        ("domain_adapter", "domain_adapter"),
        ("encoder", "rgb"),
        ("controlnet", "depth"),
        ("lora", "ink"),
    }
    depth = by_role[("controlnet", "depth")]  # lllyasviel's .pth in ComfyUI's models/controlnet
    assert (
        depth["source"] == "search"
        and depth["format"] == ".pth"
        and depth["path"].endswith("models/controlnet/control_v11f1p_sd15_depth.pth")
    )
    assert models["controlnets"] == ["depth"]
    base = by_role[("base", "base")]
    assert base["found"] and base["source"] == "search" and base["format"] == ".safetensors"
    assert base["loadable"] is True and base["size_bytes"] > 0 and base["path"].endswith("tinyVision_v1.safetensors")
    assert by_role[("encoder", "rgb")]["format"] == ".ckpt"
    health = c.get("/v1/health").json()
    assert health["loras"] == ["ink"] and health["modalities"] == ["rgb"] and health["controlnets"] == ["depth"]
    assert "/v1/models" in c.get("/openapi.json").json()["paths"]


def test_a_job_turns_the_lora_on_by_name_and_unknown_names_are_422(comfy_server):
    c = comfy_server.client
    body = job_body(modality="rgb", num_frames=8, keyframes=job_body()["keyframes"][:1], loras=[{"name": "ink"}])
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = comfy_server.wait_for(r.json()["id"])
    assert job["status"] == "succeeded" and job["request"]["loras"] == [["ink", 0.6]]
    for loras in ([{"name": "/etc/passwd"}], [{"name": "ink", "scale": 99}], [{"name": "ink", "path": "x"}]):
        r = c.post("/v1/jobs", json=body | {"loras": loras})
        assert r.status_code == 422 and {"code", "message"} <= set(r.json()["error"]), r.text
    assert "unknown_lora" in c.post("/v1/jobs", json=body | {"loras": [{"name": "nope"}]}).json()["error"]["code"]


def depth_png(i: int, width: int = 96, height: int = 48) -> str:
    """A grey depth map of another size than the clip's (fitted as keyframes are): a near box moving right."""
    depth = np.full((height, width), 40, np.uint8)
    depth[10:40, 4 + 6 * i : 30 + 6 * i] = 230
    buf = io.BytesIO()
    Image.fromarray(depth).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_depth_on_every_frame_from_lllyasviels_pth_alone_and_beside_an_rgb_keyframe(comfy_server, tmp_path):
    c = comfy_server.client
    depth = {"name": "depth", "strength": 0.8, "frames": [{"index": i, "image": depth_png(i)} for i in range(8)]}
    alone = {"prompt": "a box", "num_frames": 8, "width": 64, "height": 64, "seed": 3, "controlnets": [depth]}
    mixed = job_body(modality="rgb", num_frames=8, seed=3, keyframes=job_body()["keyframes"][:1], controlnets=[depth])
    jobs = {}
    for name, body in (("alone", alone), ("mixed", mixed)):
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        jobs[name] = comfy_server.wait_for(r.json()["id"])
        assert jobs[name]["status"] == "succeeded", jobs[name]
        (group,) = jobs[name]["request"]["controlnets"]
        assert group == {
            "name": "depth",
            "strength": 0.8,
            "frames": list(range(8)),
            "guidance_start": 0.0,
            "guidance_end": 1.0,
        }
    assert jobs["alone"]["request"]["modality"] == "" and jobs["alone"]["request"]["keyframes"] == []
    clips = []
    for job in jobs.values():
        (tmp_path / "clip.mp4").write_bytes(c.get(job["video_url"]).content)
        clips.append(read_video(tmp_path / "clip.mp4")[0])
    assert clips[0].shape == clips[1].shape == (8, 64, 64, 3) and not np.array_equal(*clips)


DENSE_422 = [
    ("a ControlNet the server lacks", [{"name": "normal", "frames": [{"index": 0}]}], "unknown_controlnet", "depth"),
    ("a frame past the clip", [{"name": "depth", "frames": [{"index": 0}, {"index": 8}]}], "invalid_request", "0..7"),
    ("an index twice", [{"name": "depth", "frames": [{"index": 2}, {"index": 2}]}], "invalid_request", "index 2"),
]


@pytest.mark.parametrize("groups, code, says", [g[1:] for g in DENSE_422], ids=[g[0] for g in DENSE_422])
def test_dense_frames_that_do_not_fit_are_422_saying_which(comfy_server, groups, code, says):
    for group in groups:
        group["frames"] = [f | {"image": depth_png(0)} for f in group["frames"]]
    body = {"prompt": "a box", "num_frames": 8, "controlnets": groups}
    r = comfy_server.client.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == code and says in error["message"]
