"""Frame mapping (pure Python): shot -> generated frames, as the stretched strip plays them back."""

from __future__ import annotations

import pytest

from sparsectrl_blender.core.frame_mapping import (
    every_n,
    generated_frame_count,
    generated_timeline_frames,
    map_keyframes,
    parse_frame_list,
    timeline_to_index,
)


def test_ends_of_the_shot_map_to_the_first_and_last_generated_frames():
    assert timeline_to_index(1, 1, 48, 16) == 0
    assert timeline_to_index(48, 1, 48, 16) == 15


def test_mapping_is_linear_and_nearest():
    # 48 shot frames over 16 generated: each generated frame covers 3 timeline frames.
    assert [timeline_to_index(f, 1, 48, 16) for f in (1, 2, 3, 4, 24, 25, 47)] == [0, 0, 1, 1, 8, 8, 15]
    # Same number of frames: identity.
    assert [timeline_to_index(f, 10, 25, 16) for f in range(10, 26)] == list(range(16))


def test_markers_map_to_indices_in_timeline_order():
    mapped = map_keyframes([48, 1, 24], 1, 48, 16)
    assert mapped.indices == {1: 0, 24: 8, 48: 15}
    assert mapped.messages == []


def test_two_keyframes_on_one_index_keep_the_first_with_a_warning():
    mapped = map_keyframes([10, 11], 1, 48, 16)
    assert mapped.indices == {10: 3}
    assert len(mapped.messages) == 1 and "10 and 11 both land on generated frame 3" in mapped.messages[0]


def test_keyframes_outside_the_shot_are_left_out_with_a_message():
    mapped = map_keyframes([0, 5, 60], 1, 48, 16)
    assert mapped.indices == {5: 1}
    assert mapped.messages == ["keyframes outside the shot 1-48 left out: 0, 60"]


def test_single_frame_shots_and_clips():
    assert map_keyframes([7], 7, 7, 1).indices == {7: 0}
    assert map_keyframes([1, 48], 1, 48, 1).indices == {1: 0}


def test_bad_ranges_are_errors():
    with pytest.raises(ValueError, match="ends .* before it starts"):
        map_keyframes([1], 10, 5, 16)


def test_frame_lists_and_every_n():
    assert parse_frame_list("24, 1 48,24") == [1, 24, 48]
    with pytest.raises(ValueError, match="'x' in the keyframe list"):
        parse_frame_list("1, x")
    assert every_n(1, 48, 12) == [1, 13, 25, 37, 48]
    assert every_n(1, 49, 12) == [1, 13, 25, 37, 49]


def test_generated_frames_follow_the_motion_rate():
    assert generated_frame_count(96, 24, 8, 256) == 32  # a 4 s shot at 8 frames per second of shot
    assert generated_frame_count(240, 24, 8, 256) == 80
    assert generated_frame_count(2400, 24, 8, 256) == 256  # capped at the server's limit
    assert generated_frame_count(5, 24, 8, 256) == 2  # at least two
    assert generated_frame_count(1, 24, 8, 256) == 1  # a one-frame shot


def test_each_generated_frame_plays_where_the_servers_retiming_shows_it():
    """Depth every frame renders generated frame i at the timeline frame whose delivered frame shows it: the
    inverse of server/video/retime.py's timing, keyframes pinned to their own frames."""
    np = pytest.importorskip("numpy")
    from server.video.retime import timing

    for start, end, n, frames in ((1001, 1096, 16, [1001, 1030, 1096]), (1, 48, 16, []), (5, 80, 24, [40])):
        mapped = map_keyframes(frames, start, end, n).indices
        timeline = generated_timeline_frames(start, end, n, mapped)
        assert len(timeline) == n and timeline[0] == start and timeline[-1] == end
        assert timeline == sorted(timeline)  # timeline order
        for frame, index in mapped.items():
            assert timeline[index] == frame  # a keyframe's depth is rendered at the keyframe
        shown = timing(n, end - start + 1, [(f - start, i) for f, i in mapped.items()])
        slope = np.max(np.diff(shown))  # generated frames per timeline frame, at most
        for i, frame in enumerate(timeline):
            assert abs(shown[frame - start] - i) <= slope / 2 + 1e-9, (i, frame)
    assert generated_timeline_frames(1, 48, 16, {}) == [1 + round(i * 47 / 15 + 1e-9) for i in range(16)]
    assert generated_timeline_frames(10, 10, 1, {}) == [10]
    # More generated frames than the shot has (Fixed): neighbours share a timeline frame, in order.
    assert generated_timeline_frames(1, 4, 8, {}) == [1, 1, 2, 2, 3, 3, 4, 4]


def test_every_n_keeps_the_shots_last_frame_when_it_shares_a_generated_frame():
    """#31 item 6: every:6 on a 25-56 shot at 8 frames: 55 and 56 both land on the last generated frame; the
    shot's last frame stays (it defines the end), the one before it is left out and said."""
    mapped = map_keyframes(every_n(25, 56, 6), 25, 56, 8)
    assert 56 in mapped.indices and 55 not in mapped.indices and mapped.indices[56] == 7
    assert list(mapped.indices) == sorted(mapped.indices)  # still in timeline order
    assert mapped.messages == [
        "keyframes 55 and 56 both land on generated frame 7 (of 8); keeping 56, the shot's last frame. "
        "Generate more frames or move a marker."
    ]
    # One generated frame: the first frame stays (it defines the start).
    assert map_keyframes([25, 56], 25, 56, 1).indices == {25: 0}
