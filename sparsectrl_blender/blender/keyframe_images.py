"""Image files as keyframes (bpy): a storyboard panel or a concept painting placed at a timeline frame, read
through Blender (every format it opens) and fitted to the generation size as the server fits keyframes: scaled
to cover it, then centre-cropped (docs/api.md). The file is only read; nothing of it stays in the .blend."""

from __future__ import annotations

import math
from pathlib import Path

import bpy
import numpy as np

from .scene_keyframes import KeyframeError


def check_keyframe_files(files: dict[int, str]) -> None:
    """Every file is there (before anything renders); KeyframeError naming the first frame whose file is not."""
    for frame, path_text in sorted(files.items()):
        _path(path_text, frame)


def _path(path_text: str, frame: int) -> Path:
    if path_text.startswith("//") and not bpy.data.filepath:
        raise KeyframeError(
            f"keyframe image for frame {frame}: {path_text} is relative to the .blend, which is not saved yet: "
            "save it first, or give the full path"
        )
    path = Path(bpy.path.abspath(path_text))
    if not path.is_file():
        raise KeyframeError(f"keyframe image for frame {frame}: no file {path}")
    return path


def keyframe_image(path_text: str, frame: int, width: int, height: int) -> np.ndarray:
    """The image at `path_text` ("//" relative to the .blend) as uint8 (height, width, 3); KeyframeError naming
    the frame and the file when it cannot be read."""
    path = _path(path_text, frame)
    try:
        image = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError as e:
        raise KeyframeError(f"keyframe image for frame {frame}: cannot read {path} ({e})") from None
    try:
        # The file's own values, as a PNG viewer shows them; is_data works under any OCIO config (a studio's ACES
        # config may have no "Non-Color").
        image.colorspace_settings.is_data = True
        w, h = image.size
        if w == 0 or h == 0:
            raise KeyframeError(f"keyframe image for frame {frame}: {path} is not an image Blender can read")
        scale = max(width / w, height / h)
        covering = max(width, math.ceil(w * scale)), max(height, math.ceil(h * scale))
        if covering != (w, h):
            image.scale(*covering)
        cw, ch = image.size
        pixels = np.empty(cw * ch * image.channels, np.float32)
        image.pixels.foreach_get(pixels)
        pixels = np.flipud(pixels.reshape(ch, cw, image.channels))
    except (RuntimeError, TypeError, ValueError) as e:  # a movie or a file without a pixel buffer
        raise KeyframeError(f"keyframe image for frame {frame}: cannot read {path} as an image ({e})") from None
    finally:
        bpy.data.images.remove(image)
    rgb = pixels[:, :, :3] if pixels.shape[2] >= 3 else np.repeat(pixels[:, :, :1], 3, axis=2)
    if pixels.shape[2] == 4:  # transparent is black, as the server takes transparent pixels
        rgb = rgb * pixels[:, :, 3:4]
    left, top = (cw - width) // 2, (ch - height) // 2
    return np.round(np.clip(rgb[top : top + height, left : left + width], 0, 1) * 255).astype(np.uint8)
