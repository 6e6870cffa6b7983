"""The IP-Adapter and its image encoder loaded from the files users have (#30): h94's folder (.safetensors, .bin),
ComfyUI's models/ipadapter + models/clip_vision single file, the HF cache; wrong files; listing and download."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from server.config import ConfigError, load_config
from server.engine.models import ModelLoadError, load_ip_adapter
from server.weights.download import DEFAULT_SET, DOWNLOADS, config_lines, describe
from server.weights.inventory import inventory
from tests.server.test_weights_formats import fake_hf_cache

CLIP_FILE = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


@pytest.fixture(scope="module")
def h94(tmp_path_factory, tiny_root) -> Path:
    """The tiny IP-Adapter in h94's layout, plus the plain adapter as a nested .bin (h94's other form)."""
    from server.engine.tiny import build_tiny_ip_adapter
    from server.weights.ip_adapter import read_ip_adapter

    folder = build_tiny_ip_adapter(tmp_path_factory.mktemp("ip") / "IP-Adapter", tiny_root / "base" / "unet")
    models = folder / "models"
    torch.save(read_ip_adapter(models / "ip-adapter_sd15.safetensors"), models / "ip-adapter_sd15.bin")
    return folder


def section(tmp_path: Path, ip_adapter: dict, **model):
    overrides = {"model": {"ip_adapter": ip_adapter, **model}, "server": {"data_dir": str(tmp_path)}}
    return load_config(overrides=overrides).model


def loaded(tmp_path: Path, ip_adapter: dict, **model):
    cfg = section(tmp_path, ip_adapter, **model)
    return load_ip_adapter(cfg.ip_adapter, cfg, torch.float32)


def assert_same_tensors(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_h94_folder_safetensors_and_bin_read_the_same(h94, tmp_path):
    models = h94 / "models"
    from_st = loaded(tmp_path, {"adapter": str(models / "ip-adapter_sd15.safetensors")})
    from_bin = loaded(tmp_path, {"adapter": str(models / "ip-adapter_sd15.bin")})
    assert (from_st.kind, from_st.name, from_bin.kind) == ("plain", "ip-adapter_sd15", "plain")
    assert from_st.image_encoder_path == models / "image_encoder"  # found beside the adapter, h94's layout
    flat = load_file(models / "ip-adapter_sd15.safetensors")
    for part in ("image_proj", "ip_adapter"):
        want = {k.partition(".")[2]: t for k, t in flat.items() if k.startswith(part + ".")}
        assert_same_tensors(from_st.state_dict[part], want)
        assert_same_tensors(from_bin.state_dict[part], want)
    assert not from_st.image_encoder.training and from_st.feature_extractor.crop_size["height"] == 224


def test_comfyui_ipadapter_and_clip_vision_single_file(h94, tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "ipadapter").mkdir(parents=True)
    (comfy / "models" / "clip_vision").mkdir(parents=True)
    plus = h94 / "models" / "ip-adapter-plus_sd15.safetensors"
    shutil.copy(plus, comfy / "models" / "ipadapter" / "ip-adapter-plus_sd15.safetensors")
    shutil.copy(plus, comfy / "models" / "ipadapter" / "ip-adapter-plus-face_sd15.safetensors")
    encoder_file = h94 / "models" / "image_encoder" / "model.safetensors"
    shutil.copy(encoder_file, comfy / "models" / "clip_vision" / CLIP_FILE)
    search = {"comfyui": str(comfy)}

    found = loaded(tmp_path, {"adapter": "ip-adapter-plus_sd15.safetensors"}, search=search)  # encoder: searched
    named = loaded(
        tmp_path, {"adapter": "ip-adapter-plus-face_sd15.safetensors", "image_encoder": CLIP_FILE}, search=search
    )
    assert (found.kind, named.kind) == ("plus", "plus-face")
    assert found.image_encoder_path == comfy / "models" / "clip_vision" / CLIP_FILE
    folder = loaded(tmp_path, {"adapter": str(plus)})  # the same encoder from h94's folder (config.json beside it)
    assert found.image_encoder.config.num_attention_heads == folder.image_encoder.config.num_attention_heads
    assert_same_tensors(found.image_encoder.state_dict(), folder.image_encoder.state_dict())
    pixels = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        a, b = (
            found.image_encoder(pixels, output_hidden_states=True),
            folder.image_encoder(pixels, output_hidden_states=True),
        )
    assert torch.equal(a.image_embeds, b.image_embeds) and torch.equal(a.hidden_states[-2], b.hidden_states[-2])


def test_hf_cache_repo_ids(h94, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    fake_hf_cache(cache, "h94/IP-Adapter", {"models": h94 / "models"})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = loaded(
        tmp_path,
        {
            "adapter": "h94/IP-Adapter/models/ip-adapter-plus_sd15.safetensors",
            "image_encoder": "h94/IP-Adapter/models/image_encoder",
        },
    )
    assert got.kind == "plus" and "models--h94--IP-Adapter" in str(got.adapter_path)
    assert "snapshots" in str(got.image_encoder_path)


@pytest.mark.parametrize("adapter", ["ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"])
def test_the_loaded_state_dict_steers_a_unet_through_diffusers(h94, tiny_root, tmp_path, adapter):
    """diffusers' own IP-Adapter loading takes the dict as it is; the UNet's output moves with the image."""
    from diffusers import UNet2DConditionModel

    weights = loaded(tmp_path, {"adapter": str(h94 / "models" / adapter)})
    unet = UNet2DConditionModel.from_pretrained(tiny_root / "base" / "unet")
    unet._load_ip_adapter_weights([weights.state_dict])
    with torch.no_grad():
        out = weights.image_encoder(torch.rand(2, 3, 224, 224), output_hidden_states=True)
    embeds = out.image_embeds[:, None] if weights.kind == "plain" else out.hidden_states[-2][:, None]
    size = unet.config.sample_size
    latents = torch.randn(1, unet.config.in_channels, size, size)
    text = torch.randn(1, 4, unet.config.cross_attention_dim)
    with torch.no_grad():
        a, b = (unet(latents, 10, text, added_cond_kwargs={"image_embeds": [e[None]]}).sample for e in embeds)
    assert a.shape == latents.shape and not torch.equal(a, b)


def test_wrong_files_name_the_file_and_what_it_holds(h94, tiny_root, tmp_path):
    not_an_adapter = tiny_root / "motion_adapter" / "diffusion_pytorch_model.safetensors"
    with pytest.raises(ModelLoadError, match="not an IP-Adapter") as e:
        loaded(tmp_path, {"adapter": str(not_an_adapter)})
    assert str(not_an_adapter) in str(e.value)

    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    other = tmp_path / "other_encoder"
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        projection_dim=16,
        num_hidden_layers=1,
        num_attention_heads=16,
        image_size=224,
        patch_size=32,
    )
    CLIPVisionModelWithProjection(config).save_pretrained(other)
    adapter = h94 / "models" / "ip-adapter_sd15.safetensors"
    with pytest.raises(ModelLoadError, match="projected embedding of 32 values.*gives 16"):
        loaded(tmp_path, {"adapter": str(adapter), "image_encoder": str(other)})
    with pytest.raises(ModelLoadError, match="not a CLIP vision encoder"):
        loaded(tmp_path, {"adapter": str(adapter), "image_encoder": str(not_an_adapter)})


def test_config_refuses_unknown_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key .model.ip_adapter.scale."):
        section(tmp_path, {"adapter": "x.safetensors", "scale": 1})
    with pytest.raises(ConfigError, match="no adapter"):
        section(tmp_path, {"image_encoder": "models/image_encoder"})


def test_inventory_lists_the_adapter_and_its_encoder(h94, tmp_path, tiny_root):
    cfg = section(tmp_path, {"adapter": str(h94 / "models" / "ip-adapter-plus_sd15.safetensors")})
    entries = {e.role: e for e in inventory(cfg)}
    adapter, encoder = entries["ip_adapter"], entries["image_encoder"]
    assert adapter.loadable and adapter.detail == "holds: ip_adapter (plus)"
    assert encoder.loadable and encoder.path == str(h94 / "models" / "image_encoder")
    wrong = tiny_root / "motion_adapter" / "diffusion_pytorch_model.safetensors"
    cfg = section(tmp_path, {"adapter": str(wrong), "image_encoder": str(h94 / "models" / "image_encoder")})
    entries = {e.role: e for e in inventory(cfg)}
    assert entries["ip_adapter"].loadable is False and entries["image_encoder"].loadable


def test_download_offers_the_adapters_on_request_only():
    for name in ("ip-adapter", "ip-adapter-plus", "ip-adapter-plus-face"):
        d = DOWNLOADS[name]
        assert (
            d.repo_id == "h94/IP-Adapter" and name not in DEFAULT_SET and "models/image_encoder/config.json" in d.files
        )
        assert d.table == "model.ip_adapter" and d.config.startswith("adapter = ") and name in describe()
    pasted = tomllib.loads(config_lines([DOWNLOADS["sd15"], DOWNLOADS["ip-adapter-plus"]]))
    assert pasted["model"]["ip_adapter"]["adapter"] == "h94/IP-Adapter/models/ip-adapter-plus_sd15.safetensors"
    assert load_config(overrides=pasted).model.ip_adapter.adapter.ref.endswith("ip-adapter-plus_sd15.safetensors")


@pytest.mark.slow
def test_the_contract_call_installs_it_into_a_sparsectrl_pipeline(h94, tiny_root, tmp_path):
    """pipe.load_ip_adapter(state_dict, subfolder=None, weight_name=None, image_encoder_folder=None), as the engine
    calls it, on diffusers' AnimateDiffSparseControlNetPipeline; a motion UNet forward reads the image embeddings."""
    from diffusers import AnimateDiffSparseControlNetPipeline, MotionAdapter, SparseControlNetModel

    weights = loaded(tmp_path, {"adapter": str(h94 / "models" / "ip-adapter-plus_sd15.safetensors")})
    pipe = AnimateDiffSparseControlNetPipeline.from_pretrained(
        tiny_root / "base",
        motion_adapter=MotionAdapter.from_pretrained(tiny_root / "motion_adapter"),
        controlnet=SparseControlNetModel.from_pretrained(tiny_root / "encoders" / "rgb"),
    )
    pipe.load_ip_adapter(weights.state_dict, subfolder=None, weight_name=None, image_encoder_folder=None)
    pipe.register_modules(image_encoder=weights.image_encoder, feature_extractor=weights.feature_extractor)
    images = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (0, 255)]
    embeds = [pipe.prepare_ip_adapter_image_embeds([[im]], None, "cpu", 1, False) for im in images]
    unet, frames = pipe.unet, 2
    size = unet.config.sample_size
    latents = torch.randn(1, unet.config.in_channels, frames, size, size)
    text = torch.randn(frames, 4, unet.config.cross_attention_dim)  # per frame, as the pipelines pass it
    with torch.no_grad():
        a, b = (unet(latents, 10, text, added_cond_kwargs={"image_embeds": e}).sample for e in embeds)
    assert a.shape == latents.shape and not torch.equal(a, b)


class Payload:
    """Not a tensor: a pickle holding it is refused unread."""


def test_a_bin_with_python_objects_is_refused(h94, tmp_path):
    from server.weights.ip_adapter import read_ip_adapter

    nested = read_ip_adapter(h94 / "models" / "ip-adapter_sd15.safetensors")
    torch.save({**nested, "extra": Payload()}, tmp_path / "ip-adapter_sd15.bin")
    with pytest.raises(ModelLoadError, match="pickled Python objects"):
        loaded(
            tmp_path,
            {"adapter": str(tmp_path / "ip-adapter_sd15.bin"), "image_encoder": str(h94 / "models" / "image_encoder")},
        )
