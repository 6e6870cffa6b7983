"""Colour lock: each generated frame's colour statistics brought to the RGB keyframes' (`color_lock`, issue #28).

SparseCtrl regenerates an RGB keyframe rather than copying it, and the clip drifts in colour away from it
(guoyww/AnimateDiff#278, #387). The lock is a statistics transfer after generation (Reinhard et al. 2001, in
CIELAB): every frame's mean and standard deviation per L*, a*, b* channel are moved to a target, the keyframes'
statistics interpolated linearly by frame index between the RGB keyframes either side (the nearest keyframe's
beyond the first and last). It moves colour only; shapes and motion stay the generation's.

Keyframe images are fitted to the frames' size as the engine fits them (engine/conditions.py), so the statistics
are those of what the encoder saw. sRGB <-> Lab is colour-science's, D65 (sRGB's own white: no chromatic
adaptation). The transfer can leave the sRGB gamut; clipping (and rounding to 8 bits) then moves the frame's mean,
so the mean is corrected and the frame made again until it lies within MEAN_TOLERANCE of its target.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

from ..engine.conditions import fit_to_size


def _import_colour():
    """colour-science, without its side effects where matplotlib is not installed: a warning, and MagicMock
    stand-ins for matplotlib put into sys.modules (colour/plotting/__init__.py), which break every later
    importlib.util.find_spec("matplotlib") in the process (diffusers' import does one). The stand-ins go again."""
    before = set(sys.modules)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import colour
    for name in set(sys.modules) - before:
        if type(sys.modules[name]).__module__ == "unittest.mock":
            del sys.modules[name]
    return colour


colour = _import_colour()

MEAN_TOLERANCE = 0.05  # ΔE (CIE76) between a locked frame's mean Lab and its target's, after clipping and rounding
CORRECTION_ROUNDS = 8  # at most this many corrections of a clipped frame's mean
MAX_GAIN = 4.0  # a channel's spread is raised at most this much (a nearly flat frame's noise is not blown up)
FLAT = 1e-3  # a channel whose spread is below this (in Lab units) keeps its spread


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB (..., 3) -> CIELAB (..., 3), D65."""
    return colour.XYZ_to_Lab(colour.sRGB_to_XYZ(rgb / 255.0, chromatic_adaptation_transform=None))


def to_srgb8(lab: np.ndarray) -> np.ndarray:
    """CIELAB (..., 3), D65 -> uint8 sRGB (..., 3), out-of-gamut values clipped."""
    rgb = colour.XYZ_to_sRGB(colour.Lab_to_XYZ(lab), chromatic_adaptation_transform=None)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


def statistics(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, standard deviation) per Lab channel of one image (h, w, 3)."""
    return lab.mean(axis=(0, 1)), lab.std(axis=(0, 1))


def targets(keyframes: Sequence[tuple[int, Image.Image]], num_frames: int, size: tuple[int, int]):
    """(means, stds), each (num_frames, 3): the keyframes' Lab statistics (images fitted to `size`, width x
    height) interpolated linearly by frame index, flat beyond the first and last keyframe."""
    keyframes = sorted(keyframes, key=lambda k: k[0])
    stats = [statistics(to_lab(np.asarray(fit_to_size(img.convert("RGB"), *size)))) for _, img in keyframes]
    at = [index for index, _ in keyframes]
    frames = np.arange(num_frames)

    def interpolated(values):
        return np.stack([np.interp(frames, at, [v[c] for v in values]) for c in range(3)], axis=1)

    return interpolated([s[0] for s in stats]), interpolated([s[1] for s in stats])


def lock_frame(frame: np.ndarray, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, float]:
    """One uint8 frame (h, w, 3) moved to the target Lab mean and std; (the frame, its mean's ΔE from the
    target after clipping and rounding). A clipped frame's mean is corrected by an offset, round after round."""
    lab = to_lab(frame)
    own_mean, own_std = statistics(lab)
    gain = np.where(own_std > FLAT, np.minimum(std / np.maximum(own_std, FLAT), MAX_GAIN), 1.0)
    moved = (lab - own_mean) * gain + mean
    offset = np.zeros(3)
    best, best_error = frame, np.inf
    for _ in range(CORRECTION_ROUNDS + 1):
        out = to_srgb8(moved + offset)
        miss = mean - to_lab(out).mean(axis=(0, 1))
        error = float(np.linalg.norm(miss))
        if error < best_error:
            best, best_error = out, error
        if error <= MEAN_TOLERANCE:
            break
        offset += miss
    return best, best_error


def color_lock(frames: np.ndarray, keyframes: Sequence[tuple[int, Image.Image]]) -> np.ndarray:
    """uint8 frames (n, h, w, 3) with each frame's Lab mean and std brought to the RGB keyframes' (generated
    frame index, image), interpolated between them. At least one keyframe (request/resolve.py refuses
    color_lock without)."""
    if not keyframes:
        raise ValueError("color_lock needs at least one RGB keyframe")
    means, stds = targets(keyframes, len(frames), (frames.shape[2], frames.shape[1]))
    return np.stack([lock_frame(f, means[i], stds[i])[0] for i, f in enumerate(frames)])
