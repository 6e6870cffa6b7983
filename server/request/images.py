"""Keyframe images decoded safely: oversized images are refused before their pixels are decoded.

Transparent pixels become black (the "no line" colour of line art and the "far" of depth); greyscale is
replicated to RGB.
"""

from __future__ import annotations

import io
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
