"""Keyframe images fitted to the generation size the documented way (decoding is request/images.py's).

Fitting (docs/api.md) is the official AnimateDiff code's: a centre crop to the clip's aspect ratio, then a
bilinear resize to exactly width x height.
"""

from __future__ import annotations

import math

from PIL import Image


def fit_to_size(img: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop to the aspect ratio of width x height, then resize bilinearly: the official AnimateDiff code's
    preprocessing (torchvision's RandomResizedCrop with scale (1, 1) and ratio width/height, whose every try fails
    for another aspect ratio and falls back to this centre crop). Where the aspect ratio already matches within
    a pixel's rounding, the official code shifts the crop by that pixel at random; here it stays centred."""
    if img.size == (width, height):
        return img
    ratio = width / height
    w, h = img.size
    crop_w, crop_h = round(math.sqrt(w * h * ratio)), round(math.sqrt(w * h / ratio))
    if not (crop_w <= w and crop_h <= h):
        crop_w, crop_h = (w, round(w / ratio)) if w / h < ratio else (round(h * ratio), h)
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    return img.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.Resampling.BILINEAR)
