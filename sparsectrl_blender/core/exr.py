"""Reading the uncompressed EXR files the passes' File Output node writes, with numpy only (no bpy).

Loading them through bpy.data.images costs a data-block and a conversion per file on Blender's main thread;
these files are plain enough to read directly: single-part scanline images, compression NONE, 32-bit float
channels. Anything else (another compression, tiles, several parts, half floats) is `ExrUnsupported`, and the
caller reads the file through Blender instead.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC = 20000630
_TILED, _LONG_NAMES, _DEEP, _MULTIPART = 0x200, 0x400, 0x800, 0x1000
_FLOAT = 2  # pixel types: 0 UINT, 1 HALF, 2 FLOAT


class ExrUnsupported(ValueError):
    """The file is not the plain kind this reader handles."""


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\0", pos)
    return data[pos:end].decode("latin-1"), end + 1


def _channels(value: bytes) -> list[tuple[str, int]]:
    out, pos = [], 0
    while value[pos] != 0:
        name, pos = _cstring(value, pos)
        pixel_type, _linear, x_sampling, y_sampling = struct.unpack_from("<iB3xii", value, pos)
        pos += 16
        if (x_sampling, y_sampling) != (1, 1):
            raise ExrUnsupported(f"channel {name!r} is subsampled")
        out.append((name, pixel_type))
    return out


def _header(data: bytes) -> tuple[dict, int]:
    if len(data) < 8 or struct.unpack_from("<i", data, 0)[0] != MAGIC:
        raise ExrUnsupported("not an EXR file")
    flags = struct.unpack_from("<i", data, 4)[0]
    if flags & (_TILED | _DEEP | _MULTIPART):
        raise ExrUnsupported("a tiled, deep or multi-part EXR")
    header, pos = {}, 8
    while data[pos] != 0:
        name, pos = _cstring(data, pos)
        _kind, pos = _cstring(data, pos)
        (size,) = struct.unpack_from("<i", data, pos)
        header[name] = data[pos + 4 : pos + 4 + size]
        pos += 4 + size
    return header, pos + 1


def read_exr(path: Path) -> dict[str, np.ndarray]:
    """Channel name -> float32 (h, w), top row first."""
    data = Path(path).read_bytes()
    header, pos = _header(data)
    if header.get("compression", b"\x00")[:1] != b"\x00":
        raise ExrUnsupported("a compressed EXR")
    channels = _channels(header["channels"])
    if any(pixel_type != _FLOAT for _, pixel_type in channels):
        raise ExrUnsupported("channels that are not 32-bit float")
    x0, y0, x1, y1 = struct.unpack("<4i", header["dataWindow"])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    offsets = np.frombuffer(data, "<u8", count=height, offset=pos)
    row = 8 + 4 * width * len(channels)  # y, byte count, then each channel's row in the header's order
    if offsets.min() < pos or int(offsets.max()) + row > len(data):
        raise ExrUnsupported("scanline offsets outside the file")
    if (np.diff(offsets.astype(np.int64)) == row).all():  # one block after another, as Blender writes them
        lines = np.frombuffer(data, np.uint8, count=row * height, offset=int(offsets[0])).reshape(height, row)
    else:
        lines = np.stack([np.frombuffer(data, np.uint8, count=row, offset=int(o)) for o in offsets])
    head = lines[:, :8].copy().view("<i4")  # (y, byte count) per block
    ys = head[:, 0] - y0
    if (head[:, 1] != row - 8).any() or not np.array_equal(np.sort(ys), np.arange(height)):
        raise ExrUnsupported("scanlines are not one row each")
    pixels = np.empty((height, len(channels), width), np.float32)
    pixels[ys] = lines[:, 8:].copy().view("<f4").reshape(height, len(channels), width)
    return {name: pixels[:, i, :] for i, (name, _) in enumerate(channels)}


_COMPONENT = {"R": 0, "X": 0, "G": 1, "Y": 1, "B": 2, "Z": 2, "A": 3}


def read_exr_rgba(path: Path) -> np.ndarray:
    """float32 (h, w, 4), top row first, as Blender's image pixels give it: a file's R/G/B/A (or X/Y/Z/A,
    either case) in that order, one channel repeated to grey with alpha 1, a missing alpha 1."""
    channels = read_exr(path)
    if len(channels) == 1:
        (value,) = channels.values()
        return np.stack([value, value, value, np.ones_like(value)], axis=2)
    slots = {}
    for name, value in channels.items():
        index = _COMPONENT.get(name.rpartition(".")[2].upper())
        if index is None or index in slots:
            raise ExrUnsupported(f"channels {sorted(channels)} are not one image's R, G, B, A")
        slots[index] = value
    if sorted(slots) not in ([0, 1, 2], [0, 1, 2, 3]):
        raise ExrUnsupported(f"channels {sorted(channels)} are not one image's R, G, B, A")
    if 3 not in slots:
        slots[3] = np.ones_like(slots[0])
    return np.stack([slots[i] for i in range(4)], axis=2)
