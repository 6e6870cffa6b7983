"""Condition images from render buffers (numpy only)."""

from __future__ import annotations

import numpy as np

from sparsectrl_passes.process import (
    BACKGROUND_Z,
    FAR_GREY,
    RenderBuffers,
    depth_image,
    line_width,
    lineart_image,
    shot_depth_range,
)


def buffers(z: np.ndarray) -> RenderBuffers:
    normal = np.zeros(z.shape + (3,), np.float32)
    normal[..., 2] = 1
    return RenderBuffers(z=z, normal=normal, alpha=(z < BACKGROUND_Z).astype(np.float32))


def test_depth_near_white_far_dark_background_black_one_range_per_shot():
    a = np.full((4, 4), 1e10, np.float32)
    a[0, 0], a[1, 1] = 2.0, 10.0
    b = np.full((4, 4), 1e10, np.float32)
    b[2, 2] = 10.0  # only the far object is in view on this keyframe
    shot = shot_depth_range([buffers(a), buffers(b)])
    assert (shot.near, shot.far) == (2.0, 10.0)
    ia, ib = depth_image(buffers(a), shot), depth_image(buffers(b), shot)
    assert ia[0, 0, 0] == 255 and ia[1, 1, 0] == FAR_GREY and ia[3, 3, 0] == 0
    assert ib[2, 2, 0] == ia[1, 1, 0]  # same distance, same grey, on every keyframe of the shot
    assert (ia[..., 0] == ia[..., 1]).all() and (ia[..., 1] == ia[..., 2]).all()


def test_lineart_outlines_a_square_white_on_black():
    z = np.full((32, 32), 1e10, np.float32)
    z[8:24, 8:24] = 5.0
    img = lineart_image(buffers(z), width_px=1)
    lines = img[..., 0] == 255
    assert set(np.unique(img)) <= {0, 255}
    assert lines[8, 8:24].all() and lines[8:24, 8].all() and lines[23, 8:24].all() and lines[8:24, 23].all()
    assert not lines[10:22, 10:22].any() and not lines[:7].any()  # inside and outside stay black


def test_line_width_scales_with_resolution():
    assert [line_width(s, s) for s in (128, 256, 512, 1024)] == [1, 1, 2, 4]
