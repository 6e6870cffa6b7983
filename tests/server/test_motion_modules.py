"""Final (v3, no middle-block module) and draft (AnimateLCM-like, with one) motion modules in one UNet."""

from __future__ import annotations

import pytest
import torch

from server.engine.motion_modules import build_motion_unet, use_motion_modules


@pytest.fixture(scope="module")
def parts(tiny_root):
    from diffusers import MotionAdapter, UNet2DConditionModel

    unet2d = UNet2DConditionModel.from_pretrained(tiny_root / "base", subfolder="unet")
    final = MotionAdapter.from_pretrained(tiny_root / "motion_adapter")
    draft = MotionAdapter.from_pretrained(tiny_root / "motion_adapter_draft")
    assert final.mid_block is None and draft.mid_block is not None  # as v3 and AnimateLCM
    return unet2d, final, draft


def noise_prediction(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, 8, generator=generator)  # (batch, channels, frames, h, w)
    text = torch.randn(8, 7, unet.config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(latents, 500, encoder_hidden_states=text).sample


def test_one_unet_runs_each_module_exactly_as_its_own_unet(parts):
    """Swapped into one UNet, each motion module computes what diffusers' UNet built for it alone computes,
    the draft's middle-block module included (dropping it would change the result) and, for v3, absent."""
    from diffusers import UNetMotionModel

    unet2d, final, draft = parts
    shared = build_motion_unet(unet2d, final, draft).eval()
    assert hasattr(shared.mid_block, "motion_modules")
    own_final = UNetMotionModel.from_unet2d(unet2d, final).eval()
    own_draft = UNetMotionModel.from_unet2d(unet2d, draft).eval()
    assert not hasattr(own_final.mid_block, "motion_modules")

    torch.testing.assert_close(noise_prediction(shared), noise_prediction(own_final), rtol=0, atol=0)
    use_motion_modules(shared, draft)
    with_mid = noise_prediction(shared)
    torch.testing.assert_close(with_mid, noise_prediction(own_draft), rtol=0, atol=0)
    for transformer in own_draft.mid_block.motion_modules:  # the middle-block module matters
        torch.nn.init.zeros_(transformer.proj_out.weight)
        torch.nn.init.zeros_(transformer.proj_out.bias)
    assert (noise_prediction(own_draft) - with_mid).abs().max() > 1e-4
    use_motion_modules(shared, final)
    torch.testing.assert_close(noise_prediction(shared), noise_prediction(own_final), rtol=0, atol=0)


def test_a_middle_block_module_the_unet_lacks_is_refused(parts):
    unet2d, final, draft = parts
    with pytest.raises(ValueError, match="middle-block motion module"):
        use_motion_modules(build_motion_unet(unet2d, final), draft)


def test_a_draft_module_that_does_not_fit_is_refused_at_start(tmp_path, tiny_root, tiny_config):
    """A draft module of another shape (here two motion layers per block, the UNet has one) is a start-up error
    naming it, not a failure on the first draft job."""
    from diffusers import MotionAdapter

    from server.config import load_config
    from server.engine.models import ModelLoadError, load_model

    final = MotionAdapter.from_pretrained(tiny_root / "motion_adapter")
    MotionAdapter(**{**final.config, "motion_layers_per_block": 2}).save_pretrained(tmp_path / "misfit")
    overrides = {"model": {"base": "tiny", "draft_motion_adapter": str(tmp_path / "misfit")}}
    config = load_config(overrides=overrides | {"server": {"data_dir": str(tiny_config.data_dir)}})
    with pytest.raises(ModelLoadError, match="the draft motion adapter .*misfit does not fit beside"):
        load_model(config.model, config.data_dir)
