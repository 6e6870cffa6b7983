"""What #31 asked of depth every frame, measured: each frame's grey span and how much one distance's grey moves
between neighbouring frames."""

from __future__ import annotations

import numpy as np

from sparsectrl_passes.process import DepthRange, RenderBuffers, depth_image


def grey_spans(images: list[np.ndarray], buffers: list[RenderBuffers]) -> list[float]:
    """Each frame's greys of its surfaces, lightest minus darkest, as a share of 0-255."""
    spans = []
    for image, b in zip(images, buffers, strict=True):
        grey = image[..., 0][b.foreground].astype(float)
        spans.append((grey.max() - grey.min()) / 255 if grey.size else 0.0)
    return spans


def neighbour_changes(buffers: list[RenderBuffers], ranges: list[DepthRange]) -> list[float]:
    """For each pair of neighbouring frames, the mean grey change of frame i's distances drawn with frame i+1's
    range instead of its own: how much a thing that stays put flickers."""
    changes = []
    for b, here, there in zip(buffers, ranges, ranges[1:], strict=False):
        z = b.z[b.foreground][None]
        if not z.size:
            continue
        one_row = RenderBuffers(z=z, alpha=np.ones(z.shape))
        grey_here, grey_there = (depth_image(one_row, r)[..., 0].astype(float) for r in (here, there))
        changes.append(float(np.abs(grey_here - grey_there).mean()))
    return changes
