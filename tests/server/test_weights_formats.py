"""Every weights format artists keep, written as tiny random weights with the original key names, loaded through
the real code path, compared tensor by tensor with what was written; and the clear errors for bad files."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from server.config import load_config
from server.engine import models as models_module
from server.engine.models import (
    ModelLoadError,
    load_base,
    load_controlnet,
    load_encoder,
    load_model,
    load_motion_adapter,
)
from server.weights import convert
from server.weights.refs import WeightRef
from tests.original_layout import write_original_files


@pytest.fixture(scope="module")
def originals(tiny_root, tmp_path_factory) -> dict:
    return write_original_files(tiny_root, tmp_path_factory.mktemp("originals"))


def section(tmp_path: Path, **model) -> object:
    return load_config(overrides={"model": model, "server": {"data_dir": str(tmp_path)}}).model


def assert_same_weights(module: torch.nn.Module, reference: torch.nn.Module) -> None:
    got, want = module.state_dict(), reference.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


@pytest.fixture(scope="module")
def reference(tiny_root):
    from diffusers import AutoencoderKL, MotionAdapter, SparseControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    base = tiny_root / "base"
    return {
        "unet": UNet2DConditionModel.from_pretrained(base / "unet"),
        "vae": AutoencoderKL.from_pretrained(base / "vae"),
        "text_encoder": CLIPTextModel.from_pretrained(base / "text_encoder"),
        "motion_adapter": MotionAdapter.from_pretrained(tiny_root / "motion_adapter"),
        "lineart": SparseControlNetModel.from_pretrained(tiny_root / "encoders" / "lineart"),
        "rgb": SparseControlNetModel.from_pretrained(tiny_root / "encoders" / "rgb"),
    }


# --- single-file SD1.5 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["sd15", "sd15_ckpt"])
def test_single_file_sd15_loads_every_tensor(tmp_path, originals, reference, which):
    ref = WeightRef(str(originals[which]), config=str(originals["configs"] / "base"))
    cfg = section(tmp_path, tokenizer=str(originals["tokenizer"]))
    parts = load_base(cfg, ref, tmp_path, torch.float32)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(parts[name], reference[name])
    assert parts["tokenizer"]("a red ball").input_ids[0] == parts["tokenizer"].bos_token_id
    assert parts["scheduler_config"]["beta_schedule"] == "scaled_linear"


def test_conversion_is_cached_and_the_second_start_reads_the_cache(tmp_path, originals, reference, monkeypatch, caplog):
    ref = WeightRef(str(originals["sd15"]), config=str(originals["configs"] / "base"))
    cfg = section(tmp_path, tokenizer=str(originals["tokenizer"]))
    load_base(cfg, ref, tmp_path, torch.float32)
    cached = list((tmp_path / "converted").glob("tinyVision_v1-*/converted.json"))
    assert len(cached) == 1 and (cached[0].parent / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    def no_reading(path):
        raise AssertionError(f"{path} was read again instead of the cache")

    monkeypatch.setattr(convert, "read_state_dict", no_reading)
    with caplog.at_level(logging.INFO, logger="server.weights.convert"):
        parts = load_base(cfg, ref, tmp_path, torch.float32)
    assert_same_weights(parts["unet"], reference["unet"])
    assert any("from its converted copy" in r.getMessage() and " s" in r.getMessage() for r in caplog.records)


def test_novae_checkpoint_needs_a_vae_and_takes_a_separate_file(tmp_path, originals, reference):
    ref = WeightRef(str(originals["sd15_novae"]), config=str(originals["configs"] / "base"))
    with pytest.raises(ModelLoadError, match=r'no VAE inside \(a "noVAE" model\): set \[model\] vae'):
        load_base(section(tmp_path, tokenizer=str(originals["tokenizer"])), ref, tmp_path, torch.float32)
    vae = {"path": str(originals["vae"]), "config": str(originals["configs"] / "base")}
    parts = load_base(section(tmp_path, tokenizer=str(originals["tokenizer"]), vae=vae), ref, tmp_path, torch.float32)
    assert_same_weights(parts["vae"], reference["vae"])


def test_single_file_without_a_tokenizer_anywhere_says_where_to_get_one(tmp_path, originals, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    ref = WeightRef(str(originals["sd15"]), config=str(originals["configs"] / "base"))
    with pytest.raises(ModelLoadError, match="carries no CLIP tokenizer.*python -m server download"):
        load_base(section(tmp_path), ref, tmp_path, torch.float32)


def test_shipped_sd15_configs_describe_the_real_architecture():
    """The configs used for real single files (no hub at run time) build SD1.5's exact parameter count."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    sd15 = convert.CONFIGS / "sd15"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd15 / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(sd15 / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(sd15 / "text_encoder"))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(text)) == (859_520_964, 83_653_863, 123_060_480)


# --- AnimateDiff v3 originals -----------------------------------------------------------------------------------


def test_v3_motion_module_ckpt(tmp_path, originals, reference):
    ref = WeightRef(str(originals["motion_module"]), config=str(originals["configs"] / "motion_adapter"))
    adapter = load_motion_adapter(ref, "motion adapter", section(tmp_path), tmp_path, torch.float32)
    assert_same_weights(adapter, reference["motion_adapter"])


def test_motion_module_ckpt_with_a_middle_block_module(tmp_path, tiny_root):
    """AnimateLCM_sd15_t2v.ckpt / AnimateDiff v2 layout: a middle-block motion module beside the down/up ones.
    Loaded tensor for tensor; without a config, the shipped layout is chosen from the keys."""
    from diffusers import MotionAdapter

    from tests.original_layout import animatediff_state_dict

    draft = MotionAdapter.from_pretrained(tiny_root / "motion_adapter_draft")  # the tiny stand-in for AnimateLCM
    original = animatediff_state_dict(draft.state_dict())
    assert any(k.startswith("mid_block.motion_modules.0.temporal_transformer.") for k in original)
    torch.save(original, tmp_path / "AnimateLCM_sd15_t2v.ckpt")
    ref = WeightRef(str(tmp_path / "AnimateLCM_sd15_t2v.ckpt"), config=str(tiny_root / "motion_adapter_draft"))
    adapter = load_motion_adapter(ref, "draft motion adapter", section(tmp_path), tmp_path, torch.float32)
    assert_same_weights(adapter, draft)
    assert convert.motion_config_for(original).name == "motion_adapter_mid_block"
    v3 = animatediff_state_dict(MotionAdapter.from_pretrained(tiny_root / "motion_adapter").state_dict())
    assert convert.motion_config_for(v3).name == "motion_adapter_v3"


@pytest.mark.parametrize("modality,file", [("lineart", "sparsectrl_scribble"), ("rgb", "sparsectrl_rgb")])
def test_v3_sparsectrl_ckpts(tmp_path, originals, reference, modality, file):
    ref = WeightRef(str(originals[file]), config=str(originals["configs"] / modality))
    encoder = load_encoder(ref, modality, section(tmp_path), tmp_path, torch.float32)
    assert_same_weights(encoder, reference[modality])


def test_sparsectrl_kind_is_read_from_the_file(originals):
    """Without a config, the RGB/scribble config is chosen from the file's keys (the released architectures)."""
    from server.weights.checkpoint import read_state_dict

    assert convert.sparsectrl_config_for(read_state_dict(originals["sparsectrl_rgb"])).name == "sparsectrl_rgb"
    scribble = read_state_dict(originals["sparsectrl_scribble"])
    assert convert.sparsectrl_config_for(scribble).name == "sparsectrl_scribble"


def test_a_controlnet_is_told_from_a_sparsectrl_encoder_and_refused_as_one(tmp_path, originals, tiny_root):
    """A per-frame ControlNet (an artist's control_v11f1p_sd15_depth) shares SparseCtrl's condition-embedding
    names; configured as an encoder it gets a sentence saying what it is, not a layout error."""
    from diffusers import ControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file

    from server.weights.checkpoint import read_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_root / "base" / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    diffusers_layout = {k: v.contiguous() for k, v in controlnet.state_dict().items()}
    path = tmp_path / "control_v11f1p_sd15_depth.safetensors"
    save_file(diffusers_layout, path)
    assert convert.identify(diffusers_layout) == "controlnet"
    # lllyasviel's .pth keys, a prefixless file, a ControlNet 1.0 "full" file with the SD UNet inside
    lllyasviel = {"control_model.input_hint_block.0.weight": 0, "control_model.zero_convs.0.0.bias": 0}
    assert convert.identify(lllyasviel) == "controlnet"
    assert convert.identify({"input_hint_block.0.weight": 0, "zero_convs.0.0.weight": 0}) == "controlnet"
    full = {"model.diffusion_model.input_blocks.0.0.weight": 0, "control_model.input_hint_block.0.weight": 0}
    assert convert.identify(full) == "controlnet"
    for file in ("sparsectrl_scribble", "sparsectrl_rgb"):  # the released encoders stay what they are
        assert convert.identify(read_state_dict(originals[file])) == "sparsectrl"
    with pytest.raises(ModelLoadError, match=r"control_v11f1p_sd15_depth.safetensors: holds a per-frame ControlNet, "):
        load_encoder(WeightRef(str(path)), "depth", section(tmp_path), tmp_path, torch.float32)


def test_domain_adapter_is_merged_as_animatediff_does(tmp_path, originals, reference):
    from diffusers import UNetMotionModel

    from server.weights.checkpoint import read_state_dict
    from server.weights.lora import merge_domain_adapter

    unet = UNetMotionModel.from_unet2d(reference["unet"], reference["motion_adapter"])
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    changed = merge_domain_adapter(unet, originals["domain_adapter"], scale=0.7)
    lora = read_state_dict(originals["domain_adapter"])
    assert changed == len(lora) // 2 > 0
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora"
    expected = before["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight"] + 0.7 * (
        lora[f"{key}.up.weight"] @ lora[f"{key}.down.weight"]
    )
    after = unet.state_dict()
    torch.testing.assert_close(after["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.weight"], expected)
    untouched = [k for k in before if "motion_modules" in k or "resnets" in k]
    assert untouched and all(torch.equal(before[k], after[k]) for k in untouched)


# --- the whole model from a ComfyUI / A1111 install, by file name -----------------------------------------------


def comfyui_tree(root: Path, originals: dict) -> Path:
    models = root / "models"
    for sub, key in (
        ("checkpoints/SD1.5", "sd15"),
        ("animatediff_models", "motion_module"),
        ("controlnet", "sparsectrl_scribble"),
        ("controlnet", "sparsectrl_rgb"),
        ("controlnet", "controlnet_pth"),
        ("loras", "domain_adapter"),
    ):
        (models / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy(originals[key], models / sub)
    shutil.copytree(originals["tokenizer"], root / "comfy" / "sd1_tokenizer")
    return root


def test_whole_model_by_file_names_from_a_comfyui_install_generates(tmp_path, originals, reference):
    from server.engine.engine import Engine
    from tests.server.test_engine import make_request

    comfy = comfyui_tree(tmp_path / "ComfyUI", originals)
    configs = originals["configs"]
    config = load_config(
        overrides={
            "server": {"data_dir": str(tmp_path / "data")},
            "model": {
                "base": {"path": "tinyVision_v1.safetensors", "config": str(configs / "base")},
                "motion_adapter": {"path": "v3_sd15_mm.ckpt", "config": str(configs / "motion_adapter")},
                "domain_adapter": {"path": "v3_sd15_adapter.ckpt", "scale": 1.0},
                "encoders": {
                    "lineart": {"path": "v3_sd15_sparsectrl_scribble.ckpt", "config": str(configs / "lineart")},
                    "rgb": {"path": "v3_sd15_sparsectrl_rgb.ckpt", "config": str(configs / "rgb")},
                },
                "search": {"comfyui": str(comfy)},
            },
        }
    )
    model = load_model(config.model, config.data_dir)
    assert model.name == "tinyVision_v1" and model.modalities == ["lineart", "rgb"]
    assert_same_weights(model.encoders["rgb"], reference["rgb"])
    result = Engine(model, config.scheduler, config.long_video).generate(make_request(modality="rgb", steps=2))
    assert result.frames.shape == (8, 64, 64, 3)


def test_a1111_folders_are_searched(tmp_path, originals, reference):
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(originals["sd15"], webui / "models" / "Stable-diffusion")
    cfg = section(tmp_path, tokenizer=str(originals["tokenizer"]), search={"a1111": str(webui)})
    ref = WeightRef("tinyVision_v1.safetensors", config=str(originals["configs"] / "base"))
    assert_same_weights(load_base(cfg, ref, tmp_path, torch.float32)["unet"], reference["unet"])


# --- the Hugging Face cache, offline ------------------------------------------------------------------------------


def fake_hf_cache(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """The hub cache layout huggingface_hub reads: models--org--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for rel, src in files.items():
        dest = repo / "snapshots" / commit / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest)


def test_repo_ids_resolve_from_the_local_hf_cache_offline(tmp_path, tiny_root, originals, reference, monkeypatch):
    cache = tmp_path / "hub"
    fake_hf_cache(cache, "guoyww/animatediff-motion-adapter-v1-5-3", {"": tiny_root / "motion_adapter"})
    fake_hf_cache(cache, "guoyww/animatediff", {"v3_sd15_mm.ckpt": originals["motion_module"]})
    fake_hf_cache(cache, "stable-diffusion-v1-5/stable-diffusion-v1-5", {"tokenizer": originals["tokenizer"]})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = section(tmp_path)
    folder = load_motion_adapter(
        WeightRef("guoyww/animatediff-motion-adapter-v1-5-3"), "motion adapter", cfg, tmp_path, torch.float32
    )
    assert_same_weights(folder, reference["motion_adapter"])
    one_file = WeightRef("guoyww/animatediff/v3_sd15_mm.ckpt", config=str(originals["configs"] / "motion_adapter"))
    assert_same_weights(
        load_motion_adapter(one_file, "motion adapter", cfg, tmp_path, torch.float32), reference["motion_adapter"]
    )
    # A single-file base finds SD1.5's tokenizer in the cache.
    ref = WeightRef(str(originals["sd15"]), config=str(originals["configs"] / "base"))
    assert load_base(cfg, ref, tmp_path, torch.float32)["tokenizer"].vocab_size > 0
    with pytest.raises(ModelLoadError, match=r"not found; .*Hugging Face cache \(HF_HUB_OFFLINE is set\)"):
        load_motion_adapter(WeightRef("someone/not-downloaded"), "motion adapter", cfg, tmp_path, torch.float32)


# --- per-frame ControlNets (#16): every layout, wherever artists keep them ------------------------------------------


def _tiny_controlnet(originals):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(originals["controlnet"])


@pytest.mark.parametrize("which", ["controlnet_pth", "controlnet_prefixless"])
def test_single_file_controlnets_load_every_tensor_and_are_cached(tmp_path, originals, which, caplog):
    """lllyasviel's .pth (control_model.*, pickled: read with weights_only) and the prefixless .safetensors."""
    ref = WeightRef(str(originals[which]), config=str(originals["configs"] / "controlnet"))
    first = load_controlnet(ref, "depth", section(tmp_path), tmp_path, torch.float32)
    assert_same_weights(first, _tiny_controlnet(originals))
    assert list((tmp_path / "converted").iterdir())  # converted once, as safetensors in diffusers layout
    with caplog.at_level(logging.INFO, logger="server.weights.convert"):
        again = load_controlnet(ref, "depth", section(tmp_path), tmp_path, torch.float32)
    assert_same_weights(again, first)
    assert not any("converted" in r.getMessage() for r in caplog.records)  # from the cache this time


def test_controlnets_are_found_where_artists_keep_them(tmp_path, originals, monkeypatch):
    """A ComfyUI models/controlnet file, an A1111 models/ControlNet file, a diffusers folder, an HF repo id."""
    (tmp_path / "ComfyUI" / "models" / "controlnet").mkdir(parents=True)
    shutil.copy(originals["controlnet_pth"], tmp_path / "ComfyUI" / "models" / "controlnet")
    (tmp_path / "webui" / "models" / "ControlNet").mkdir(parents=True)
    shutil.copy(originals["controlnet_prefixless"], tmp_path / "webui" / "models" / "ControlNet")
    cache = tmp_path / "hub"
    fake_hf_cache(cache, "lllyasviel/control_v11f1p_sd15_depth", {"": originals["controlnet"]})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    search = {"comfyui": str(tmp_path / "ComfyUI"), "a1111": str(tmp_path / "webui")}
    cfg = section(tmp_path, search=search)
    config = str(originals["configs"] / "controlnet")
    want = _tiny_controlnet(originals)
    for ref in (
        WeightRef("control_v11f1p_sd15_depth.pth", config=config),
        WeightRef("control_v11f1p_sd15_depth_fp16.safetensors", config=config),
        WeightRef(str(originals["controlnet"])),
        WeightRef("lllyasviel/control_v11f1p_sd15_depth"),
    ):
        assert_same_weights(load_controlnet(ref, "depth", cfg, tmp_path, torch.float32), want)


def test_controlnet_files_that_cannot_be_used_are_said(tmp_path, originals):
    from safetensors.torch import save_file

    from server.weights.checkpoint import read_state_dict

    cfg, config = section(tmp_path), str(originals["configs"] / "controlnet")
    # The tiny file against the shipped SD1.5 ControlNet config: not that architecture, and how to say so.
    with pytest.raises(ModelLoadError, match=r"is not the SD1.5 ControlNet expected \(.*of another shape.*config"):
        load_controlnet(WeightRef(str(originals["controlnet_pth"])), "depth", cfg, tmp_path, torch.float32)
    # A file with a weight missing (diffusers' mapping gives None for it): named, not an AttributeError.
    cut = read_state_dict(originals["controlnet_prefixless"])
    del cut["zero_convs.0.0.weight"]
    save_file(cut, tmp_path / "cut.safetensors")
    with pytest.raises(ModelLoadError, match=r"1 weights missing \(controlnet_down_blocks.0.weight\)"):
        load_controlnet(
            WeightRef(str(tmp_path / "cut.safetensors"), config=config), "depth", cfg, tmp_path, torch.float32
        )
    # A SparseCtrl encoder set as a ControlNet, and the other way round: each says where it belongs.
    with pytest.raises(ModelLoadError, match=r"holds a SparseCtrl encoder \(set it under \[model.encoders\]\)"):
        load_controlnet(WeightRef(str(originals["sparsectrl_scribble"])), "depth", cfg, tmp_path, torch.float32)
    with pytest.raises(
        ModelLoadError, match=r"holds a per-frame ControlNet.*set a ControlNet under \[model.controlnets\]"
    ):
        load_encoder(WeightRef(str(originals["controlnet_pth"])), "depth", cfg, tmp_path, torch.float32)
    with pytest.raises(ModelLoadError, match=r"ControlNet 'depth': .*not found"):
        load_controlnet(WeightRef("control_v11p_sd15_missing.pth"), "depth", cfg, tmp_path, torch.float32)


def test_the_tiny_model_carries_a_depth_controlnet_made_from_its_unet(engine, tiny_root):
    """ControlNet's recipe (a copy of the UNet's encoder half, zero convolutions on top: filled here, so that it
    steers), built beside the tiny model without moving its weights (TINY_VERSION and the parity data stay)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    (name,) = engine.model.controlnets
    controlnet = engine.model.controlnets[name]
    assert name == "depth" and isinstance(controlnet, ControlNetModel) and not controlnet.training
    unet = UNet2DConditionModel.from_pretrained(tiny_root / "base" / "unet")
    copied = controlnet.down_blocks[0].resnets[0].conv1.weight
    assert torch.equal(copied, unet.down_blocks[0].resnets[0].conv1.weight)
    assert all(torch.count_nonzero(block.weight) > 0 for block in controlnet.controlnet_down_blocks)
    assert not any(p.requires_grad for p in controlnet.parameters())


def test_controlnet_names_in_the_config(tmp_path):
    from server.config import ConfigError

    cfg = section(tmp_path, controlnets={"depth": "a.pth", "depth-v2": {"path": "b.safetensors", "config": "c"}})
    assert cfg.controlnets["depth"] == WeightRef("a.pth") and cfg.controlnets["depth-v2"].config == "c"
    with pytest.raises(ConfigError, match=r"\[model.controlnets\] names \['my depth'\]"):
        section(tmp_path, controlnets={"my depth": "a.pth"})
    with pytest.raises(ConfigError, match=r"model.controlnets.depth' has unknown fields \['scaled'\]"):
        section(tmp_path, controlnets={"depth": {"path": "a.pth", "scaled": 1}})


# --- bad files: one clear error naming the file and what was expected ---------------------------------------------


def truncated(src: Path, dest: Path) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda o, d: truncated(o["sd15"], d / "cut.safetensors"), r"cut.safetensors: not a readable .safetensors"),
        (lambda o, d: truncated(o["sd15_ckpt"], d / "cut.ckpt"), r"cut.ckpt: not a readable PyTorch checkpoint"),
        (lambda o, d: (d / "junk.safetensors").write_bytes(os.urandom(4096)) and d / "junk.safetensors", "junk"),
        (
            lambda o, d: o["motion_module"],
            r"v3_sd15_mm.ckpt: holds an AnimateDiff motion module .*; expected a Stable Diffusion 1.5 checkpoint",
        ),
        (lambda o, d: o["sparsectrl_rgb"], r"holds a SparseCtrl encoder .*expected a Stable Diffusion 1.5"),
    ],
    ids=["truncated-safetensors", "truncated-ckpt", "random-bytes", "motion-module-as-base", "encoder-as-base"],
)
def test_bad_base_files(tmp_path, originals, make, pattern):
    path = make(originals, tmp_path)
    cfg = section(tmp_path, tokenizer=str(originals["tokenizer"]))
    with pytest.raises(ModelLoadError, match=pattern):
        load_base(cfg, WeightRef(str(path), config=str(originals["configs"] / "base")), tmp_path, torch.float32)


def test_wrong_architecture_names_the_file_and_the_weights(tmp_path, originals):
    scribble_as_rgb = WeightRef(str(originals["sparsectrl_scribble"]), config=str(originals["configs"] / "rgb"))
    with pytest.raises(
        ModelLoadError, match=r"v3_sd15_sparsectrl_scribble.ckpt: is not the SparseCtrl encoder expected"
    ):
        load_encoder(scribble_as_rgb, "rgb", section(tmp_path), tmp_path, torch.float32)
    # The tiny motion module against the real v3 config: every shape differs.
    real_config = WeightRef(str(originals["motion_module"]))
    with pytest.raises(
        ModelLoadError, match=r"v3_sd15_mm.ckpt: is not the AnimateDiff motion module expected \(.*shape"
    ):
        load_motion_adapter(real_config, "motion adapter", section(tmp_path), tmp_path, torch.float32)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_ckpt_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "trap": _Boom()}, tmp_path / "evil.ckpt")
    with pytest.raises(ModelLoadError, match=r"evil.ckpt: holds pickled Python objects besides tensors"):
        load_encoder(WeightRef(str(tmp_path / "evil.ckpt")), "rgb", section(tmp_path), tmp_path, torch.float32)
    assert not (tmp_path / "pwned").exists()


def test_names_never_leave_the_model_folders(tmp_path, originals):
    comfy = comfyui_tree(tmp_path / "ComfyUI", originals)
    (tmp_path / "secret.safetensors").write_bytes(originals["sd15"].read_bytes())
    cfg = section(tmp_path, search={"comfyui": str(comfy)})
    for name in ("../../secret.safetensors", "SD1.5/../../../secret.safetensors"):
        with pytest.raises(ModelLoadError, match="not found|no such file"):
            models_module._located(WeightRef(name), "base", "base model", cfg)
    found = models_module._located(WeightRef("SD1.5/tinyVision_v1.safetensors"), "base", "base model", cfg)
    assert found.path.parent.name == "SD1.5" and found.source == "search"


def test_missing_weights_say_where_they_were_looked_for(tmp_path):
    cfg = section(tmp_path, search={"folders": [str(tmp_path)]})
    with pytest.raises(ModelLoadError, match=rf"motion adapter: v3_sd15_mm.ckpt: not found; looked in .*{tmp_path}"):
        load_motion_adapter(WeightRef("v3_sd15_mm.ckpt"), "motion adapter", cfg, tmp_path, torch.float32)


# --- full size: the shipped configs against files of the released architectures ---------------------------------


@pytest.mark.slow
def test_full_size_original_files_load_with_the_shipped_configs(tmp_path):
    """Random weights of the released architectures (half precision, like most released files), written in the
    original layouts, load through the shipped configs with no config given, tensor for tensor. (The same
    exported files also load into the official AnimateDiff classes with the official v3 configs, strictly:
    docs/weights.md "How the formats were checked".)"""
    from diffusers import AutoencoderKL, MotionAdapter, SparseControlNetModel, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from server.weights.convert import CONFIGS, load_motion_module_file, load_sd15_file, load_sparsectrl_file
    from tests.original_layout import animatediff_state_dict, ldm_state_dict

    half = torch.float16
    torch.manual_seed(0)
    adapter = MotionAdapter.from_config(MotionAdapter.load_config(CONFIGS / "motion_adapter_v3")).to(half)
    torch.save(animatediff_state_dict(adapter.state_dict()), tmp_path / "v3_sd15_mm.ckpt")
    assert_same_weights(load_motion_module_file(tmp_path / "v3_sd15_mm.ckpt", half, None), adapter)
    # AnimateLCM's original file (a middle-block module too): the other shipped layout, chosen from its keys.
    lcm = MotionAdapter.from_config(MotionAdapter.load_config(CONFIGS / "motion_adapter_mid_block")).to(half)
    assert lcm.mid_block is not None
    torch.save(animatediff_state_dict(lcm.state_dict()), tmp_path / "AnimateLCM_sd15_t2v.ckpt")
    assert_same_weights(load_motion_module_file(tmp_path / "AnimateLCM_sd15_t2v.ckpt", half, None), lcm)
    del adapter, lcm
    for name in ("scribble", "rgb"):
        encoder = SparseControlNetModel.from_config(SparseControlNetModel.load_config(CONFIGS / f"sparsectrl_{name}"))
        encoder = encoder.to(half)
        path = tmp_path / f"v3_sd15_sparsectrl_{name}.ckpt"
        torch.save({"controlnet": animatediff_state_dict(encoder.state_dict())}, path)
        assert_same_weights(load_sparsectrl_file(path, half, None), encoder)  # scribble or RGB told by its keys
        path.unlink()

    sd15 = CONFIGS / "sd15"
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(sd15 / "unet")).to(half)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(sd15 / "vae")).to(half)
    text = CLIPTextModel(CLIPTextConfig.from_pretrained(sd15 / "text_encoder")).to(half)
    save_file(ldm_state_dict(unet, vae, text), tmp_path / "someModel_v15.safetensors")
    parts = load_sd15_file(tmp_path / "someModel_v15.safetensors", half, None)
    for module, reference in ((parts["unet"], unet), (parts["vae"], vae), (parts["text_encoder"], text)):
        assert_same_weights(module, reference)


def test_hub_downloads_fetch_missing_repo_ids_only_when_allowed_and_online(tmp_path, tiny_root, monkeypatch):
    """The hub is the edge we cannot reach here: huggingface_hub's download is replaced by a local copy."""
    from server.weights import locate as locate_module

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    fetched = []

    def fake_snapshot_download(repo_id, **kwargs):
        fetched.append(repo_id)
        if kwargs.get("local_files_only"):
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError("not cached")
        return str(tiny_root / "motion_adapter")

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    ref = WeightRef("guoyww/animatediff-motion-adapter-v1-5-3")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ModelLoadError, match="not found; .*python -m server download"):
        load_motion_adapter(ref, "motion adapter", section(tmp_path), tmp_path, torch.float32)
    allowed = section(tmp_path, hub_downloads=True)
    adapter = load_motion_adapter(ref, "motion adapter", allowed, tmp_path, torch.float32)
    assert fetched[-1] == "guoyww/animatediff-motion-adapter-v1-5-3" and adapter.config.block_out_channels
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"HF_HUB_OFFLINE is set"):
        load_motion_adapter(ref, "motion adapter", allowed, tmp_path, torch.float32)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def unreachable(repo_id, **kwargs):
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr("huggingface_hub.snapshot_download", unreachable)
    with pytest.raises(
        locate_module.WeightsNotFound, match="not in the HF cache, and downloading it failed: .*refused"
    ):
        locate_module.locate(ref.ref, "motion_adapter", allowed.search, allow_download=True)


def test_a_name_without_suffix_prefers_safetensors(tmp_path, originals):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(originals["sd15"], folder / "toonyou.safetensors")
    shutil.copy(originals["sd15_ckpt"], folder / "toonyou.ckpt")
    cfg = section(tmp_path, search={"folders": [str(folder)]})
    assert models_module._located(WeightRef("toonyou"), "base", "base", cfg).path.name == "toonyou.safetensors"
    (folder / "toonyou.safetensors").unlink()
    assert models_module._located(WeightRef("toonyou"), "base", "base", cfg).path.name == "toonyou.ckpt"
