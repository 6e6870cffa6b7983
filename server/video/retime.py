"""Retiming a generated clip to the shot's exact frame count, with the keyframes as fixed points.

n generated frames become N output frames. Output frame j shows generated position p(j), piecewise linear
through anchors: the clip's ends (0 -> 0, N-1 -> n-1) and each keyframe (its output index -> its generated
index). At a keyframe's output index p is a whole number, so that output frame *is* the conditioned frame;
between anchors, frames are blended linearly from the two nearest generated frames.
"""

from __future__ import annotations

import numpy as np


def timing(num_generated: int, output_frames: int, anchors: list[tuple[int, int]]) -> np.ndarray:
    """Generated position (float) of each output frame. `anchors` are (output index, generated index) pairs
    that increase together (checked when the request is resolved)."""
    points = {0: 0.0, output_frames - 1: float(num_generated - 1)}
    if output_frames == 1:
        points = {0: 0.0}
    for out_index, gen_index in anchors:
        points[out_index] = float(gen_index)
    xs = sorted(points)
    return np.interp(np.arange(output_frames), xs, [points[x] for x in xs])


def retime(frames: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """uint8 frames (n, h, w, 3) sampled at `positions` with linear blending -> (len(positions), h, w, 3)."""
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, len(frames) - 1)
    t = (positions - low).astype(np.float32)[:, None, None, None]
    exact = t[:, 0, 0, 0] == 0
    out = np.empty((len(positions),) + frames.shape[1:], np.uint8)
    out[exact] = frames[low[exact]]
    if (~exact).any():
        blend = frames[low[~exact]].astype(np.float32) * (1 - t[~exact]) + frames[high[~exact]] * t[~exact]
        out[~exact] = np.round(blend).astype(np.uint8)
    return out
