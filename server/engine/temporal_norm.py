"""Normalise the motion modules' input per frame, as AnimateDiff and SparseCtrl were trained.

AnimateDiff's `TemporalTransformer3DModel` (guoyww/AnimateDiff, animatediff/models/motion_module.py) rearranges
"b c f h w -> (b f) c h w" before its GroupNorm: statistics per frame. diffusers' `AnimateDiffTransformer3D`
applies the same GroupNorm to the 5-D (b, c, f, h, w) tensor: statistics over all frames at once. For text-to-video
the frames look alike and the two nearly agree; in a SparseCtrl encoder they do not: a conditioned frame carries an
image and its neighbours are zeros, so the shared statistics are dominated by the one conditioned frame and the
encoder's residuals change (by ~20% on the tiny model; docs/rgb-correctness.md). This is the cause we found for
diffusers issue 9508 ("SparseCtrl RGB ignores the image"). We fix it on the loaded modules, without touching
diffusers' files: each such GroupNorm becomes a `PerFrameGroupNorm` with the very same parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PerFrameGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are taken per frame of a (batch, channels, frames, height, width) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        b, c, f, h, w = x.shape
        # diffusers hands over a permuted view of a (b, f, c, h, w) buffer: undoing the permute costs no copy.
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        out = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return out.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4)


def use_per_frame_temporal_norm(module: nn.Module) -> int:
    """Make every motion-module GroupNorm inside `module` per-frame; returns how many were changed."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    changed = 0
    for sub in module.modules():
        if isinstance(sub, AnimateDiffTransformer3D) and type(sub.norm) is nn.GroupNorm:
            sub.norm.__class__ = PerFrameGroupNorm  # same parameters and state-dict keys
            changed += 1
    return changed


def use_joint_temporal_norm(module: nn.Module) -> int:
    """Undo `use_per_frame_temporal_norm` (diffusers' behaviour: statistics over all frames)."""
    changed = 0
    for sub in module.modules():
        if type(sub) is PerFrameGroupNorm:
            sub.__class__ = nn.GroupNorm
            changed += 1
    return changed
