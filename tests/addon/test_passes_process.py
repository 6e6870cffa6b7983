"""Condition images from render buffers (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from sparsectrl_passes.process import (
    BACKGROUND_Z,
    CREASE_DEGREES,
    FAR_GREY,
    RenderBuffers,
    depth_images,
    depth_ranges,
    line_width,
    lineart_image,
)
from tests.addon.depth_measure import grey_spans, neighbour_changes


def buffers(z: np.ndarray) -> RenderBuffers:
    """Z as an orthographic camera looking down -Z at pixel-sized steps would see it."""
    rows, cols = np.indices(z.shape)
    position = np.stack([cols, -rows, -np.minimum(z, 1e3)], axis=2).astype(np.float32)
    return RenderBuffers(z=z, position=position, alpha=(z < BACKGROUND_Z).astype(np.float32))


def test_depth_near_white_far_dark_background_black():
    a = np.full((4, 4), 1e10, np.float32)
    a[0, 0], a[1, 1] = 2.0, 10.0
    (ia,) = depth_images([buffers(a)])
    assert ia[0, 0, 0] == 255 and ia[1, 1, 0] == FAR_GREY and ia[3, 3, 0] == 0
    assert (ia[..., 0] == ia[..., 1]).all() and (ia[..., 1] == ia[..., 2]).all()


def _floor_shot(close_up: range = range(16, 17), frames: int = 48) -> list[RenderBuffers]:
    """A floor from 20 m (top rows, under 4 rows of sky) to 3 m (bottom) on every frame, and a wall 0.4-0.6 m
    from the lens over the left half on the frames of `close_up`."""
    shot = []
    for frame in range(1, frames + 1):
        z = np.tile(np.linspace(20, 3, 36)[:, None], (1, 64)).astype(np.float32)
        z[:4] = 1e10
        if frame in close_up:
            z[:, :32] = np.linspace(0.4, 0.6, 32)[None, :]
        shot.append(buffers(z))
    return shot


@pytest.mark.parametrize(("close_up", "largest_change"), [(range(16, 17), 1), (range(16, 21), 15)])
def test_depth_keeps_its_contrast_after_a_close_up_and_does_not_flicker(close_up, largest_change):
    """#31: normalised once per shot, one close-up left the other frames grey levels 24-50 (10 % of the range).
    A close-up of five frames is a change of scene: the floor's greys move by up to 15 levels as it comes."""
    shot, frames = _floor_shot(close_up), list(range(1, 49))
    images = depth_images(shot, frames)
    assert min(grey_spans(images, shot)) >= 0.6  # was 0.10
    changes = neighbour_changes(shot, depth_ranges(shot, frames))
    assert max(changes) < largest_change and np.mean(changes) < 1.5  # grey levels of 255
    assert min(i[..., 0][4:, 32:].max() for i in images[36:]) >= 250  # the floor's near end is white again


def test_depth_of_a_still_shot_is_the_same_on_every_frame():
    shot = _floor_shot(close_up=range(0))
    images = depth_images(shot, list(range(1, 49)))
    assert all(np.array_equal(images[0], i) for i in images)
    assert images[0][4, 0, 0] == FAR_GREY and images[0][-1, 0, 0] == 255


def test_depth_keyframes_far_apart_each_use_their_own_range():
    """Frames far apart on the timeline hardly follow each other: each uses its own range."""
    shot = _floor_shot(close_up=range(2, 3), frames=2)
    images = depth_images(shot, [1, 2 + 40])  # frame 42 is the close-up, 41 frames after the first
    assert min(grey_spans(images, shot)) > 0.85


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


def _profile(turns_degrees: list[float], step: float = 0.1, run: int = 12) -> RenderBuffers:
    """One image row along a surface that runs flat for `run` pixels, turns by each of `turns_degrees` from one
    pixel to the next (a bevel's segments), then runs flat again; seen from far above (z barely changes)."""
    angle, point, points = 0.0, np.zeros(2), []
    for turn in [0.0] * run + turns_degrees + [0.0] * run:
        angle += np.radians(turn)
        point = point + step * np.array([np.cos(angle), np.sin(angle)])
        points.append(point)
    xy = np.array(points)
    n = len(xy)
    position = np.zeros((3, n, 3), np.float32)
    position[:, :, 0], position[:, :, 2] = xy[:, 0], xy[:, 1]
    position[:, :, 1] = np.arange(3)[:, None] * step
    z = np.full((3, n), 100.0, np.float32)
    return RenderBuffers(z=z, position=position, alpha=np.ones(z.shape, np.float32))


def test_a_bevelled_fold_is_one_line_and_a_gentle_curve_none():
    """#31: a bevel turns 90 degrees over several pixels, each step under the crease angle; counted whole, it is a
    line (one, not a band); a gentle bend of the same steps spread apart is not."""
    assert 3 * 30 > CREASE_DEGREES > 30
    bevel = lineart_image(_profile([30.0, 30.0, 30.0]), width_px=1)[1, :, 0] == 255
    assert bevel.any() and np.ptp(np.nonzero(bevel)[0]) <= 2
    sharp = lineart_image(_profile([90.0]), width_px=1)[1, :, 0] == 255
    assert 1 <= sharp.sum() <= 2
    gentle = lineart_image(_profile([30.0] + [0.0] * 8 + [30.0]), width_px=1)[1, :, 0] == 255
    assert not gentle.any()
