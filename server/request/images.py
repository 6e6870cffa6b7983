"""Keyframe images decoded safely: oversized images are refused before their pixels are decoded.

A request's images are decoded one at a time, each fitted to the generation size at once (the engine's own
fitting, below) and kept only as that small PNG, so a request's memory does not grow with the images' size; their
pixels in all are bounded too ([limits] max_request_pixels), and every image of every request decodes in one thread
of the process, one at a time, so concurrent requests cannot multiply the peak (nor each leave a malloc arena of
freed full-size pixels behind, as decoding in each request's own thread did).

Transparent pixels become black (the "no line" colour of line art and the "far" of depth); greyscale is
replicated to RGB.

Fitting (docs/api.md) is the official AnimateDiff code's: a centre crop to the clip's aspect ratio, then a
bilinear resize to exactly width x height.
"""

from __future__ import annotations

import io
import math
import warnings
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# A 4096x4096 image takes ~0.2 s to decode and fit: one at a time costs little.
_decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparsectrl-decode")


class ImageError(ValueError):
    """A keyframe image that cannot be used; the message says why."""


class PixelBudget:
    """The pixels a request's images may still decode to ([limits] max_request_pixels), taken before decoding."""

    def __init__(self, total: int):
        self.total, self.left = total, total

    def take(self, width: int, height: int) -> None:
        if width * height > self.left:
            raise ImageError(
                f"image is {width}x{height}: the request's images add up to more than the {self.total} pixels "
                "allowed in all ([limits] max_request_pixels; send them at the generation size)"
            )
        self.left -= width * height


def decode_image(data: bytes, max_pixels: int, budget: PixelBudget | None = None) -> Image.Image:
    """Decode image bytes into an RGB image, refusing oversized images before their pixels are decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(f"image is {width}x{height}: too large, more than the {max_pixels} pixels allowed")
            if budget is not None:
                budget.take(width, height)
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image is too large, more than the {max_pixels} pixels allowed") from None
    except Exception as e:  # PIL raises many types for corrupt data
        raise ImageError(f"not a readable PNG/JPEG/WebP image ({type(e).__name__})") from None
    return to_rgb(img)


def fitted_png(data: bytes, size: tuple[int, int], max_pixels: int, budget: PixelBudget) -> bytes:
    """The bytes a job keeps for one image: as sent when it is a PNG of the generation size already, else the image
    decoded, fitted to `size` as the engine would fit it, as PNG (so the job's result is the same, bit for bit).
    The full-size pixels live only inside this call, in the one decoding thread."""
    return _decoder.submit(_fitted_png, data, size, max_pixels, budget).result()


def _fitted_png(data: bytes, size: tuple[int, int], max_pixels: int, budget: PixelBudget) -> bytes:
    image = decode_image(data, max_pixels, budget)
    if image.size == size and data.startswith(b"\x89PNG"):
        return data
    buf = io.BytesIO()
    fit_to_size(image, *size).save(buf, format="PNG")
    return buf.getvalue()


# A reference image (IP-Adapter's look) is kept at most this on its short side: the image encoder sees a 224x224
# centre crop of it, so more pixels only cost memory and disk.
REFERENCE_SIDE = 512


def reference_png(data: bytes, max_pixels: int, budget: PixelBudget) -> bytes:
    """The bytes a job keeps for one reference image: as sent when it is a PNG no larger than REFERENCE_SIDE on
    its short side, else decoded and scaled down (Lanczos) to that, as PNG; in the one decoding thread."""
    return _decoder.submit(_reference_png, data, max_pixels, budget).result()


def _reference_png(data: bytes, max_pixels: int, budget: PixelBudget) -> bytes:
    image = decode_image(data, max_pixels, budget)
    short = min(image.size)
    if short <= REFERENCE_SIDE and data.startswith(b"\x89PNG"):
        return data
    if short > REFERENCE_SIDE:
        w, h = (round(v * REFERENCE_SIDE / short) for v in image.size)
        image = image.resize((max(w, REFERENCE_SIDE), max(h, REFERENCE_SIDE)), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


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
    if (crop_w, crop_h) != (w, h):  # a crop of the whole image would only copy it (the same pixels, more memory)
        img = img.crop((left, top, left + crop_w, top + crop_h))
    return img.resize((width, height), Image.Resampling.BILINEAR)
