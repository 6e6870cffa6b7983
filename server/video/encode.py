"""Writing generated frames as an H.264 MP4 (yuv420p, so Blender and browsers play it) and as PNGs.

Files are written under a temporary name and renamed into place, so a reader never sees a partial file.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# Visually lossless for previews; H.264 needs even sizes, which multiples of 8 always are.
CRF = "18"


def _replace_atomically(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_mp4(frames: np.ndarray, fps: int, path: Path) -> Path:
    """Write uint8 frames (n, h, w, 3) as exactly n H.264 frames at `fps`."""
    n, height, width, _ = frames.shape
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": CRF, "preset": "medium"}
        stream.time_base = Fraction(1, fps)
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    _replace_atomically(tmp, path)
    return path


def write_pngs(frames: np.ndarray, folder: Path) -> list[Path]:
    """Write each frame as folder/NNNN.png (0-based, the index the API serves it under)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = folder / f"{i:04d}.png"
        tmp = folder / f".{i:04d}.png.partial"
        Image.fromarray(frame).save(tmp, format="PNG")
        _replace_atomically(tmp, path)
        paths.append(path)
    return paths


def read_video(path: Path) -> tuple[np.ndarray, float]:
    """Decode every frame of a video (for checks and tests); returns (frames, fps)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        fps = float(stream.average_rate or stream.base_rate)
    return np.stack(frames), fps
