"""Keyframe images: decoded safely, then fitted to the generation size the documented way.

Fitting (docs/api.md) is the official AnimateDiff code's: a centre crop to the clip's aspect ratio, then a
bilinear resize to exactly width x height. Transparent pixels become black (the "no line" colour of
line art and the "far" of depth); greyscale is replicated to RGB.
"""

from __future__ import annotations

import io
import math
import warnings

from PIL import Image

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


class ImageError(ValueError):
    """A keyframe image that cannot be used; the message says why."""


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes into an RGB image, refusing oversized images before their pixels are decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height}: too large, more than the {max_pixels} pixels allowed")
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image is too large, more than the {max_pixels} pixels allowed") from None
    except Exception as e:  # PIL raises many types for corrupt data
        raise ImageError(f"not a readable PNG/JPEG/WebP image ({type(e).__name__})") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")


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
