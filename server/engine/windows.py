"""Context windows for clips longer than the motion module's 16-frame training window.

The denoiser runs on overlapping windows of `length` frames (`overlap` shared between neighbours); each
window's noise prediction is weighted by a pyramid (high in its middle, low at its ends) and the weights of all
windows covering a frame are normalised to sum to 1, so overlaps cross-fade smoothly (as FreeNoise and
AnimateDiff-Evolved's context scheduling do). Initial noise is shared FreeNoise-style: frames past the first
window reuse a shuffled copy of earlier frames' noise, so windows far from any keyframe still agree on the
scene. Pure Python apart from the noise (torch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Window:
    start: int
    stop: int  # exclusive
    weights: tuple[float, ...]  # per frame of the window; over all windows, each frame's weights sum to 1

    def __len__(self) -> int:
        return self.stop - self.start


def window_starts(num_frames: int, length: int, overlap: int) -> list[int]:
    if length < 1 or not 0 <= overlap < length:
        raise ValueError(f"window length {length} and overlap {overlap}: need 0 <= overlap < length")
    if num_frames <= length:
        return [0]
    stride = length - overlap
    starts = list(range(0, num_frames - length + 1, stride))
    if starts[-1] + length < num_frames:
        starts.append(num_frames - length)  # the last window ends on the last frame
    return starts


def context_windows(num_frames: int, length: int = 16, overlap: int = 4) -> list[Window]:
    """Windows covering every frame, with normalised pyramid weights."""
    starts = window_starts(num_frames, length, overlap)
    size = min(length, num_frames)
    pyramid = [float(min(i + 1, size - i)) for i in range(size)]
    totals = [0.0] * num_frames
    for s in starts:
        for i, w in enumerate(pyramid):
            totals[s + i] += w
    return [Window(s, s + size, tuple(pyramid[i] / totals[s + i] for i in range(size))) for s in starts]


def share_noise(latents: torch.Tensor, length: int, overlap: int, generator: torch.Generator | None) -> torch.Tensor:
    """FreeNoise's noise rescheduling: each block of `length - overlap` frames past the first window takes a
    shuffled copy of the noise of the block before it. `latents` is (batch, channels, frames, h, w)."""
    num_frames = latents.shape[2]
    stride = length - overlap
    latents = latents.clone()
    for start in range(length, num_frames, stride):
        source = torch.arange(start - length, start - length + stride)
        source = source[
            torch.randperm(stride, generator=generator, device=generator.device if generator else "cpu").to(
                source.device
            )
        ]
        stop = min(num_frames, start + stride)
        latents[:, :, start:stop] = latents[:, :, source[: stop - start]]
    return latents
