from __future__ import annotations

import av
import numpy as np

from server.video.encode import read_video, write_mp4, write_pngs


def gradient_frames(n=12, h=48, w=80):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, None, :, None]
    t = np.arange(n, dtype=np.float32)[:, None, None, None] * 8
    return np.broadcast_to((x + t) % 256, (n, h, w, 3)).astype(np.uint8)


def test_mp4_is_h264_yuv420p_with_exactly_the_frames_and_rate(tmp_path):
    frames = gradient_frames()
    path = write_mp4(frames, 12, tmp_path / "clip.mp4")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
    decoded, fps = read_video(path)
    assert decoded.shape == frames.shape and fps == 12
    assert np.abs(decoded.astype(int) - frames).mean() < 3  # visually lossless
    assert not list(tmp_path.glob("*.partial"))


def test_pngs_are_lossless_and_named_by_index(tmp_path):
    frames = gradient_frames(n=3)
    paths = write_pngs(frames, tmp_path / "frames")
    assert [p.name for p in paths] == ["0000.png", "0001.png", "0002.png"]
    from PIL import Image

    np.testing.assert_array_equal(np.asarray(Image.open(paths[2])), frames[2])
