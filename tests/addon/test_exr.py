"""core/exr.py: the passes' uncompressed EXR files read with numpy (no bpy); anything else is refused."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sparsectrl_blender.core.exr import ExrUnsupported, read_exr, read_exr_rgba


def _attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def write_exr(path, channels: dict[str, np.ndarray], compression: int = 0, flags: int = 0, shuffle=False) -> None:
    """A single-part scanline EXR of float channels (written in name order, as OpenEXR does), one row per
    block; `shuffle` writes the blocks bottom row first (the offsets still say where each is)."""
    names = sorted(channels)
    h, w = channels[names[0]].shape
    chlist = b"".join(n.encode() + b"\0" + struct.pack("<iB3xii", 2, 0, 1, 1) for n in names) + b"\0"
    header = b"".join(
        [
            _attribute("channels", "chlist", chlist),
            _attribute("compression", "compression", bytes([compression])),
            _attribute("dataWindow", "box2i", struct.pack("<4i", 0, 0, w - 1, h - 1)),
            _attribute("displayWindow", "box2i", struct.pack("<4i", 0, 0, w - 1, h - 1)),
            _attribute("lineOrder", "lineOrder", b"\0"),
        ]
    )
    head = struct.pack("<ii", 20000630, 2 | flags) + header + b"\0"
    rows = list(range(h))[::-1] if shuffle else list(range(h))
    blocks, offsets, at = [], {}, len(head) + 8 * h
    for y in rows:
        data = b"".join(channels[n][y].astype("<f4").tobytes() for n in names)
        block = struct.pack("<ii", y, len(data)) + data
        offsets[y] = at
        at += len(block)
        blocks.append(block)
    table = b"".join(struct.pack("<Q", offsets[y]) for y in range(h))
    path.write_bytes(head + table + b"".join(blocks))


def test_channels_come_back_top_row_first_exactly(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.random((5, 7), dtype=np.float32) * 100
    z[0, 0] = 1e10  # Cycles' background depth
    for shuffle in (False, True):
        write_exr(tmp_path / "z.exr", {"R": z, "G": z + 1, "B": z + 2, "A": np.ones_like(z)}, shuffle=shuffle)
        channels = read_exr(tmp_path / "z.exr")
        assert sorted(channels) == ["A", "B", "G", "R"] and np.array_equal(channels["R"], z)
        rgba = read_exr_rgba(tmp_path / "z.exr")
        assert rgba.shape == (5, 7, 4) and rgba.dtype == np.float32
        assert np.array_equal(rgba[:, :, 2], z + 2) and (rgba[:, :, 3] == 1).all()


def test_normal_and_cryptomatte_channel_names_map_to_rgba(tmp_path):
    n = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_exr(tmp_path / "normal.exr", {"X": n, "Y": n + 1, "Z": n + 2})  # no alpha: 1, as Blender gives it
    rgba = read_exr_rgba(tmp_path / "normal.exr")
    assert np.array_equal(rgba[:, :, :3], np.stack([n, n + 1, n + 2], axis=2)) and (rgba[:, :, 3] == 1).all()
    ids = np.frombuffer(np.arange(12, dtype="<u4").tobytes(), "<f4").reshape(3, 4) + 0  # hashes as floats
    write_exr(tmp_path / "object.exr", {"r": ids, "g": n, "b": n, "a": n})
    assert np.array_equal(read_exr_rgba(tmp_path / "object.exr")[:, :, 0].view("<u4"), ids.view("<u4"))
    write_exr(tmp_path / "grey.exr", {"V": n})
    grey = read_exr_rgba(tmp_path / "grey.exr")
    assert all(np.array_equal(grey[:, :, i], n) for i in range(3)) and (grey[:, :, 3] == 1).all()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"compression": 3}, "compressed"),  # ZIP: Blender's default, read through Blender
        ({"flags": 0x1000}, "multi-part"),
        ({"flags": 0x200}, "tiled"),
    ],
)
def test_files_it_does_not_handle_are_refused_for_the_fallback(tmp_path, kwargs, reason):
    write_exr(tmp_path / "x.exr", {"R": np.zeros((2, 2), np.float32)}, **kwargs)
    with pytest.raises(ExrUnsupported, match=reason):
        read_exr(tmp_path / "x.exr")
    (tmp_path / "y.exr").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(ExrUnsupported, match="not an EXR"):
        read_exr(tmp_path / "y.exr")
    write_exr(tmp_path / "z.exr", {"R": np.zeros((2, 2), np.float32), "Q": np.zeros((2, 2), np.float32)})
    with pytest.raises(ExrUnsupported, match="R, G, B, A"):
        read_exr_rgba(tmp_path / "z.exr")
