"""The UNet's motion modules: the final one (AnimateDiff v3) or a distilled draft one (AnimateLCM), per job.

AnimateDiff v3 has no motion module in the UNet's middle block; AnimateLCM (like v2) has one. diffusers builds
the UNet after one adapter and its `load_motion_modules` would drop (or fail on) the other's middle module, so
a draft would run without a part of its network. Here the UNet gets a middle-block motion module when either
adapter has one; an adapter without one is loaded there as an identity (output projection zero: the block adds
exactly nothing to its residual), so each runs as it was trained, and swapping copies weights in place (no
second UNet in memory; offload hooks and a compiled graph keep working).
"""

from __future__ import annotations

import torch


def has_mid_block_module(adapter) -> bool:
    return adapter.mid_block is not None


def build_motion_unet(unet2d, final, draft=None):
    """UNetMotionModel from the 2-D UNet with `final`'s motion modules, shaped to take `draft`'s too. Both are
    loaded into it once here, so a draft that does not fit fails now, not on the first draft job."""
    from diffusers import UNetMotionModel

    shape_from = (
        draft if draft is not None and has_mid_block_module(draft) and not has_mid_block_module(final) else final
    )
    unet = UNetMotionModel.from_unet2d(unet2d, shape_from)  # loads shape_from's modules
    if draft is not None:
        if shape_from is final:
            use_motion_modules(unet, draft)
        use_motion_modules(unet, final)
    return unet


def use_motion_modules(unet, adapter) -> None:
    """Copy `adapter`'s motion modules into `unet` (strict: every weight, every shape)."""
    for block, source in zip(unet.down_blocks, adapter.down_blocks, strict=True):
        block.motion_modules.load_state_dict(source.motion_modules.state_dict())
    for block, source in zip(unet.up_blocks, adapter.up_blocks, strict=True):
        block.motion_modules.load_state_dict(source.motion_modules.state_dict())
    unet_mid = getattr(unet.mid_block, "motion_modules", None)
    if has_mid_block_module(adapter):
        if unet_mid is None:
            raise ValueError("the motion adapter has a middle-block motion module the UNet was built without")
        unet_mid.load_state_dict(adapter.mid_block.motion_modules.state_dict())
    elif unet_mid is not None:
        with torch.no_grad():
            for transformer in unet_mid:
                transformer.proj_out.weight.zero_()
                transformer.proj_out.bias.zero_()
