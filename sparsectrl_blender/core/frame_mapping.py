"""Timeline frames <-> generated frames. Pure Python and numpy: imports without Blender.

The shot's N timeline frames [start, end] map linearly onto the n generated frames: timeline frame f goes to
generated index round((f - start) * n / N), the last one at most. The server retimes the n frames back to N
with each keyframe pinned (its generated index shown exactly at its own timeline frame), so this choice only
has to be monotonic and close to linear; it is also how Blender's Speed effect in Stretch mode would play n
frames over N. Two keyframes landing on one index keep the first and say so, except the shot's last frame,
which always stays (it defines where the shot ends: `every:N` ends on it); keyframes outside the shot are left
out with a message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class MappedKeyframes:
    indices: dict[int, int]  # timeline frame -> generated index, in timeline order
    messages: list[str] = field(default_factory=list)  # warnings for the artist, one sentence each


def timeline_to_index(frame: int, start: int, end: int, num_frames: int) -> int:
    shot_frames = end - start + 1
    return min(num_frames - 1, max(0, int((frame - start) * num_frames / shot_frames + 0.5)))


def map_keyframes(frames: list[int], start: int, end: int, num_frames: int) -> MappedKeyframes:
    if end < start:
        raise ValueError(f"the shot ends (frame {end}) before it starts (frame {start})")
    if num_frames < 1:
        raise ValueError("the number of generated frames must be at least 1")
    indices: dict[int, int] = {}
    taken: dict[int, int] = {}
    messages = []
    outside = sorted(f for f in set(frames) if not start <= f <= end)
    if outside:
        messages.append(f"keyframes outside the shot {start}-{end} left out: {', '.join(map(str, outside))}")
    for frame in sorted(set(frames) - set(outside)):
        index = timeline_to_index(frame, start, end, num_frames)
        if index in taken:
            kept = frame if frame == end and taken[index] != start else taken[index]  # the last frame: the end
            why = ", the shot's last frame" if kept == end else ""
            messages.append(
                f"keyframes {taken[index]} and {frame} both land on generated frame {index} "
                f"(of {num_frames}); keeping {kept}{why}. Generate more frames or move a marker."
            )
            if kept == taken[index]:
                continue
            del indices[taken[index]]
        taken[index] = frame
        indices[frame] = index
    return MappedKeyframes(indices, messages)


def generated_timeline_frames(start: int, end: int, num_frames: int, keyframes: dict[int, int]) -> list[int]:
    """The timeline frame each generated frame is shown at, index by index: where the server's retiming
    (server/video/retime.py) puts it. The clip's ends are the shot's ends and each keyframe (timeline frame ->
    generated index) is pinned to its own frame; between these the positions are linear, rounded to the nearest
    whole frame. What a per-frame pass (depth every frame) is rendered at, so that the preview's frame i was
    steered by the scene as it is where frame i plays."""
    if num_frames == 1:
        return [start]
    points = {0: 0, num_frames - 1: end - start}
    for frame, index in keyframes.items():
        points[index] = frame - start
    xs = sorted(points)
    positions = np.interp(np.arange(num_frames), xs, [points[x] for x in xs])
    return [start + int(p + 0.5) for p in positions]


def output_positions(num_frames: int, output_frames: int, anchors: list[tuple[int, int]]) -> np.ndarray:
    """The generated position (float) each delivered frame shows: the server's retiming (server/video/retime.py
    `timing`, the same arithmetic, tested equal), piecewise linear through the clip's ends and the keyframes'
    (delivered index, generated index) anchors."""
    points = {0: 0.0, output_frames - 1: float(num_frames - 1)} if output_frames > 1 else {0: 0.0}
    for out_index, gen_index in anchors:
        points[out_index] = float(gen_index)
    xs = sorted(points)
    return np.interp(np.arange(output_frames), xs, [points[x] for x in xs])


def delivered_sources(positions: np.ndarray, num_frames: int) -> list[tuple[int, int]]:
    """(lowest, highest) generated index each delivered frame is made of: one frame where its position is whole,
    else the two it blends (as the server's `retime` decides, in float32)."""
    low = np.floor(positions).astype(int)
    blended = (positions - low).astype(np.float32) > 0
    high = np.minimum(low + blended, num_frames - 1)
    return list(zip(low.tolist(), high.tolist(), strict=True))


def parse_frame_list(text: str) -> list[int]:
    """'1, 24, 48' or '1 24 48' -> [1, 24, 48]; a clear ValueError for anything else."""
    frames = []
    for part in text.replace(",", " ").split():
        try:
            frames.append(int(part))
        except ValueError:
            raise ValueError(f"'{part}' in the keyframe list is not a frame number") from None
    return sorted(set(frames))


def every_n(start: int, end: int, n: int) -> list[int]:
    if n < 1:
        raise ValueError("'every N frames' needs N of at least 1")
    frames = list(range(start, end + 1, n))
    return frames if frames[-1] == end else frames + [end]


def generated_frame_count(shot_frames: int, fps: float, motion_rate: float, max_frames: int) -> int:
    """Frames to generate for a shot: `motion_rate` per second of shot (8 by default), between 2 and
    `max_frames`, never more than the shot has."""
    wanted = round(shot_frames / fps * motion_rate)
    return max(1, min(shot_frames, max_frames, max(2, wanted)))
