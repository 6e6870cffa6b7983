"""Delivery: the engine's generated frames made into the clip the request asked for.

With color_lock, each generated frame's colours are first brought to the RGB keyframes' (color_lock.py).
A draft generated smaller is scaled back up to the size asked for; a clip generated with fewer frames than the
shot is retimed to the delivered frame count, each keyframe pinned to its output frame (retime.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..request.model import GenerationRequest
from .color_lock import color_lock
from .retime import retime, timing


def deliver(frames: np.ndarray, request: GenerationRequest) -> np.ndarray:
    """uint8 frames (num_frames, height, width, 3) -> (delivered_frames, output height, output width, 3)."""
    if request.color_lock:  # on the generated frames, before any scaling or retiming
        frames = color_lock(frames, [(k.index, k.image) for k in request.keyframes_for("rgb")])
    if request.output_width and (request.output_width, request.output_height) != (request.width, request.height):
        size = (request.output_width, request.output_height)
        frames = np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.LANCZOS)) for f in frames])
    # One anchor per generated frame (keyframes of two encoders at one frame agree: request/resolve.py).
    anchors = sorted({(k.output_index, k.index) for k in request.keyframes if k.output_index is not None})
    if request.delivered_frames != request.num_frames or anchors:
        frames = retime(frames, timing(request.num_frames, request.delivered_frames, anchors))
    return frames
