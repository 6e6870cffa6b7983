"""User LoRAs: configured by name, loaded once as adapters, turned on per request at a scale."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from server.config import load_config
from server.engine.engine import Engine
from server.engine.models import ModelLoadError, load_model
from server.request.resolve import RequestError, resolve_request
from tests.original_layout import kohya_lora_state_dict
from tests.server.test_engine import bare_diffusers_frames, make_request


@pytest.fixture(scope="module")
def lora_file(tiny_root, tmp_path_factory):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(tiny_root / "base" / "unet")
    text_encoder = CLIPTextModel.from_pretrained(tiny_root / "base" / "text_encoder")
    path = tmp_path_factory.mktemp("loras") / "toonStyle_v2.safetensors"
    save_file(kohya_lora_state_dict(unet, text_encoder), path)
    return path


@pytest.fixture(scope="module")
def lora_engine(tiny_config, lora_file):
    overrides = {
        "model": {
            "base": "tiny",
            "loras": {"toon": {"path": lora_file.name, "scale": 0.8}},
            "search": {"folders": [str(lora_file.parent)]},
        },
        "server": {"data_dir": str(tiny_config.data_dir)},
    }
    config = load_config(overrides=overrides)
    return Engine(load_model(config.model, config.data_dir), config.scheduler, config.long_video), config


def test_kohya_lora_equals_diffusers_recipe_and_off_means_off(lora_engine, engine, tiny_root, lora_file):
    lora, config = lora_engine
    assert lora.model.loras == {"toon": 0.8}
    request = make_request(steps=2)
    with_lora = dataclasses.replace(request, loras=(("toon", 0.8),))
    ours = lora.generate(with_lora).frames
    theirs = bare_diffusers_frames(tiny_root, config.scheduler, with_lora, lora_file=lora_file)
    np.testing.assert_array_equal(ours, theirs)
    # Not named: exactly the server without LoRAs, also after a job that used one.
    np.testing.assert_array_equal(lora.generate(request).frames, engine.generate(request).frames)
    assert not np.array_equal(ours, lora.generate(dataclasses.replace(request, loras=(("toon", 0.3),))).frames)


def test_requests_name_loras_only_by_configured_name(tiny_config):
    fields = {"prompt": "x", "modality": "lineart", "keyframes": [{"index": 0, "image": _png()}]}

    def resolve(loras):
        config_loras = {"toon": 0.8}
        return resolve_request(fields | {"loras": loras}, tiny_config, ["lineart"], 1, loras=config_loras).loras

    assert resolve([{"name": "toon", "scale": None}]) == (("toon", 0.8),)
    assert resolve([{"name": "toon", "scale": -0.5}]) == (("toon", -0.5),)
    for bad, code in (
        ([{"name": "/etc/passwd", "scale": 1.0}], "unknown_lora"),
        ([{"name": "../toon", "scale": None}], "unknown_lora"),
        ([{"name": "toon", "scale": None}, {"name": "toon", "scale": 1.0}], "invalid_request"),
        ([{"name": "toon", "scale": 9.0}], "invalid_request"),
    ):
        with pytest.raises(RequestError) as err:
            resolve(bad)
        assert err.value.code == code


def test_a_file_that_is_not_a_lora_is_refused_by_name(tmp_path, tiny_config):
    bad = tmp_path / "notalora.safetensors"
    save_file({"some.weight": torch.zeros(2, 2)}, bad)
    overrides = {
        "model": {"base": "tiny", "loras": {"broken": str(bad)}},
        "server": {"data_dir": str(tiny_config.data_dir)},
    }
    config = load_config(overrides=overrides)
    with pytest.raises(ModelLoadError, match=r"notalora.safetensors: not a LoRA for this base model|holds no LoRA"):
        load_model(config.model, config.data_dir)


def _png() -> bytes:
    from tests.conftest import png_bytes, sketch

    return png_bytes(sketch())


def test_draft_jobs_with_the_distilled_module_bring_its_lora(tiny_root, tmp_path):
    from server.config import ConfigError

    overrides = {"model": {"base": "tiny", "loras": {"lcm": "AnimateLCM_sd15_t2v_lora.safetensors"}}}
    config = load_config(overrides=overrides | {"draft": {"adapter_lora": "lcm"}})
    fields = {"prompt": "x", "modality": "lineart", "keyframes": [{"index": 0, "image": _png()}]}

    def loras(quality, draft_adapter=True):
        fields_q = fields | {"quality": quality}
        resolved = resolve_request(fields_q, config, ["lineart"], 1, draft_adapter=draft_adapter, loras={"lcm": 1.0})
        return resolved.loras

    assert loras("draft") == (("lcm", 1.0),)
    assert loras("final") == () and loras("draft", draft_adapter=False) == ()
    with pytest.raises(ConfigError, match="adapter_lora = 'nope' is not a name in \\[model.loras\\]"):
        load_config(overrides=overrides | {"draft": {"adapter_lora": "nope"}})


def test_a_lora_on_motion_layers_is_refused_beside_a_draft_motion_module(tmp_path, tiny_config, tiny_root):
    """The draft swap copies whole motion modules; a LoRA wrapped around their layers would be lost (or break it)."""
    from diffusers import MotionAdapter

    adapter = MotionAdapter.from_pretrained(tiny_root / "motion_adapter")
    layer = adapter.down_blocks[0].motion_modules[0].transformer_blocks[0].attn1.to_q
    prefix = "unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q"
    save_file(
        {
            f"{prefix}.lora_A.weight": torch.randn(4, layer.in_features),
            f"{prefix}.lora_B.weight": torch.randn(layer.out_features, 4),
        },
        tmp_path / "zoom_motion_lora.safetensors",
    )
    overrides = {
        "model": {"base": "tiny", "loras": {"zoom": str(tmp_path / "zoom_motion_lora.safetensors")}},
        "server": {"data_dir": str(tiny_config.data_dir)},
    }
    config = load_config(overrides=overrides)  # the tiny model ships a draft motion module
    with pytest.raises(ModelLoadError, match="LoRA 'zoom' .* changes the motion module's layers"):
        load_model(config.model, config.data_dir)
