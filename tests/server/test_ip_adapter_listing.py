"""The IP-Adapter's rows in `python -m server models` and `download --list` (#30), and the adapter whose image
encoder cannot be found: the loader's message and the listing's row say the same."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from server.config import load_config
from server.engine.models import ModelLoadError, load_ip_adapter
from server.weights.inventory import inventory
from tests.server.test_cli_weights import run


@pytest.fixture(scope="module")
def h94(tmp_path_factory, tiny_root):
    from server.engine.tiny import build_tiny_ip_adapter

    return build_tiny_ip_adapter(tmp_path_factory.mktemp("ip") / "IP-Adapter", tiny_root / "base" / "unet")


def test_an_adapter_without_a_findable_encoder_says_where_it_looked(h94, tmp_path):
    alone = tmp_path / "alone" / "ip-adapter_sd15.safetensors"
    alone.parent.mkdir()
    shutil.copy(h94 / "models" / "ip-adapter_sd15.safetensors", alone)
    overrides = {"model": {"ip_adapter": {"adapter": str(alone)}}, "server": {"data_dir": str(tmp_path)}}
    section = load_config(overrides=overrides).model
    with pytest.raises(ModelLoadError, match="IP-Adapter image encoder: none beside") as e:
        load_ip_adapter(section.ip_adapter, section, torch.float32)
    assert str(alone) in str(e.value) and "[model.ip_adapter] image_encoder" in str(e.value)
    entries = {e.role: e for e in inventory(section)}
    assert entries["ip_adapter"].loadable and entries["image_encoder"].found is False
    assert "none beside the adapter" in entries["image_encoder"].detail


@pytest.mark.slow
def test_models_command_lists_the_adapter_and_its_encoder(h94, tiny_root, tmp_path):
    plus = h94 / "models" / "ip-adapter-plus_sd15.safetensors"
    (tmp_path / "server.toml").write_text(
        f'[model]\nbase = "{tiny_root / "base"}"\n[model.ip_adapter]\nadapter = "{plus}"\n'
        f'[server]\ndata_dir = "{tmp_path / "data"}"\n'
    )
    out = run("models", "--config", str(tmp_path / "server.toml"), "--json", "--deep")
    entries = {e["role"]: e for e in json.loads(out.stdout)}
    adapter, encoder = entries["ip_adapter"], entries["image_encoder"]
    assert adapter["found"] and adapter["loadable"] and adapter["path"] == str(plus), adapter
    assert adapter["detail"] == "holds: ip_adapter (plus)" and adapter["format"] == ".safetensors"
    assert adapter["size_bytes"] == plus.stat().st_size
    assert encoder["loadable"] and encoder["path"] == str(h94 / "models" / "image_encoder"), encoder
    table = run("models", "--config", str(tmp_path / "server.toml"))
    assert "ip_adapter" in table.stdout and "image_encoder" in table.stdout, table.stdout


def test_download_list_offers_the_three_adapters_not_by_default():
    listing = run("download", "--list")
    assert listing.returncode == 0, listing.stdout
    rows = {line.split()[0].lstrip("*"): line for line in listing.stdout.splitlines() if "h94/IP-Adapter" in line}
    assert set(rows) == {"ip-adapter", "ip-adapter-plus", "ip-adapter-plus-face"}, listing.stdout
    assert not any(line.lstrip().startswith("*") for line in rows.values())  # fetched on request only


def test_the_pasted_lines_name_the_adapter_and_its_encoder():
    import tomllib

    from server.weights.download import DOWNLOADS, config_lines

    pasted = tomllib.loads(config_lines([DOWNLOADS["ip-adapter-plus-face"]]))["model"]["ip_adapter"]
    assert pasted == {
        "adapter": "h94/IP-Adapter/models/ip-adapter-plus-face_sd15.safetensors",
        "image_encoder": "h94/IP-Adapter/models/image_encoder",
    }
    refs = load_config(overrides={"model": {"ip_adapter": pasted}}).model.ip_adapter
    assert refs.image_encoder.ref == "h94/IP-Adapter/models/image_encoder"


@pytest.mark.slow
def test_load_model_takes_a_comfyui_root_and_names_a_wrong_file(h94, tiny_root, tiny_config, tmp_path):
    """Through load_model, as the server starts: ComfyUI's models/ipadapter + models/clip_vision single file (found
    through [model.search] comfyui), listed as ModelInfo.ip_adapter; a ControlNet's weights named as no IP-Adapter."""
    from server.engine.models import load_model
    from server.jobs.model_info import ModelInfo

    comfy = tmp_path / "ComfyUI"
    for sub in ("ipadapter", "clip_vision"):
        (comfy / "models" / sub).mkdir(parents=True)
    face = comfy / "models" / "ipadapter" / "ip-adapter-plus-face_sd15.safetensors"
    shutil.copy(h94 / "models" / "ip-adapter-plus_sd15.safetensors", face)
    clip = comfy / "models" / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
    shutil.copy(h94 / "models" / "image_encoder" / "model.safetensors", clip)

    def model(adapter: str):
        overrides = {
            "model": {"base": "tiny", "ip_adapter": {"adapter": adapter}, "search": {"comfyui": str(comfy)}},
            "server": {"data_dir": str(tiny_config.data_dir)},
        }
        config = load_config(overrides=overrides)
        return load_model(config.model, config.data_dir)

    info = ModelInfo.of(model(face.name)).ip_adapter
    assert info == {"name": "ip-adapter-plus-face_sd15", "kind": "plus-face", "image_encoder": str(clip)}
    from server.engine.tiny import build_tiny_controlnet

    controlnet = build_tiny_controlnet(tmp_path / "controlnet", tiny_root / "base" / "unet")
    wrong = next(Path(controlnet).rglob("*.safetensors"))
    with pytest.raises(ModelLoadError, match="not an IP-Adapter") as e:
        model(str(wrong))
    assert str(wrong) in str(e.value)
