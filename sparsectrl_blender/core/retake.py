"""Retake: a span of a take regenerated, the rest kept bit for bit (docs/api.md, "retake"). Pure Python: no bpy.

A take (a preview strip the add-on made, or a job on the server) plays its n generated frames as N delivered
frames, retimed by the server with its keyframes pinned (frame_mapping.output_positions). The artist chooses
timeline frames; the generated span sent is every generated frame that only those delivered frames show. So
each delivered frame outside the chosen frames is made of kept generated frames only, and is the parent's bit
for bit; at the span's edges the delivered frames inside it blend a kept and a regenerated frame, which spreads
the seam over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .frame_mapping import delivered_sources, output_positions


@dataclass(frozen=True)
class Take:
    """What a retake needs of its parent: its job, where it plays, and how its frames are timed."""

    job_id: str
    first_frame: int  # the timeline frame its delivered frame 0 plays at
    output_frames: int  # delivered frames (the shot's length)
    num_frames: int  # generated frames
    anchors: tuple[tuple[int, int], ...]  # the keyframes' (delivered index, generated index)
    shot_start: int  # the shot frame of delivered frame 0 (the shot range the take was made over)
    size: tuple[int, int] | None = None  # generated width, height (None: not recorded; the panel's)
    strip: str = ""  # the preview strip's name, when the take is one
    shown: tuple[int, int] | None = None  # the timeline frames it is shown over (a trimmed strip); None: all

    @property
    def frames(self) -> tuple[int, int]:
        """The timeline frames the take shows, first and last."""
        return self.shown or (self.first_frame, self.first_frame + self.output_frames - 1)

    @property
    def name(self) -> str:
        return f"the take '{self.strip}'" if self.strip else f"job {self.job_id}"


@dataclass(frozen=True)
class Retake:
    """The span to regenerate: generated indices (sent) and the timeline frames chosen (recorded)."""

    take: Take
    frames: tuple[int, int]  # generated indices, inclusive
    timeline: tuple[int, int]  # timeline frames, inclusive (clipped to the take)
    messages: list[str] = field(default_factory=list)  # warnings for the artist

    def entry(self) -> dict:
        """The body's "retake"."""
        return {"job": self.take.job_id, "frames": list(self.frames)}

    def record(self) -> dict:
        """What the new strip records of its parent and span."""
        return {
            "job": self.take.job_id,
            "strip": self.take.strip,
            "frames": list(self.frames),
            "timeline": list(self.timeline),
        }


def take_from_metadata(
    meta: dict, first_frame: int, output_frames: int, shot_start: int, shown=None, strip: str = ""
) -> Take:
    """A take from a preview strip's recorded metadata (its "sparsectrl" custom property) and where it plays;
    ValueError for strips that cannot be retaken (made before job ids were recorded)."""
    job_id, num_frames = meta.get("job_id"), meta.get("num_frames")
    if not job_id or not num_frames:
        raise ValueError(f"the strip '{strip}' does not record its job: generate it again to retake it")
    start = int(meta.get("start", shot_start))
    anchors = {(int(frame) - start, int(index)) for frame, index in (meta.get("keyframes") or {}).items()}
    size = (int(meta["size"][0]), int(meta["size"][1])) if meta.get("size") else None
    output_frames = int(meta.get("output_frames") or output_frames)
    return Take(
        str(job_id), first_frame, output_frames, int(num_frames), tuple(sorted(anchors)), start, size, strip, shown
    )


def take_from_job(job: dict, first_frame: int) -> Take:
    """A take from the server's GET /v1/jobs/{id}: its request says how its frames were timed."""
    request = job.get("request") or {}
    num_frames = int(request["num_frames"])
    output_frames = int(request.get("output_frames") or num_frames)
    anchors = {(int(k["output_index"]), int(k["index"])) for k in request.get("keyframes", []) if "output_index" in k}
    size = (int(request["width"]), int(request["height"])) if request.get("width") else None
    return Take(str(job["id"]), first_frame, output_frames, num_frames, tuple(sorted(anchors)), first_frame, size)


def plan_retake(take: Take, first: int, last: int) -> Retake:
    """The generated span behind timeline frames first..last of `take`; ValueError with a sentence for the
    artist when there is none (a backwards range, one outside the take, one too short to hold a generated frame
    of its own)."""
    if last < first:
        raise ValueError(f"the retake range ends (frame {last}) before it starts (frame {first})")
    shown_first, shown_last = take.frames
    if last < shown_first or first > shown_last:
        raise ValueError(
            f"the retake range {first}-{last} lies outside {take.name} (frames {shown_first}-{shown_last}): set "
            "the preview range (or In/Out) over the frames to retake"
        )
    messages = []
    if first < shown_first or last > shown_last:
        first, last = max(first, shown_first), min(last, shown_last)
        messages.append(f"the retake range reaches past {take.name}: retaking frames {first}-{last}")
    positions = output_positions(take.num_frames, take.output_frames, list(take.anchors))
    sources = delivered_sources(positions, take.num_frames)
    j0, j1 = first - take.first_frame, last - take.first_frame
    # Kept: every generated frame a delivered frame outside the range is made of.
    start = sources[j0 - 1][1] + 1 if j0 > 0 else 0
    end = sources[j1 + 1][0] - 1 if j1 + 1 < take.output_frames else take.num_frames - 1
    if start > end:
        per = take.output_frames / take.num_frames
        frames = f"frame {first} is" if first == last else f"frames {first}-{last} are"
        raise ValueError(
            f"{frames} too few to retake: {take.name} has {take.num_frames} generated frames over "
            f"{take.output_frames} timeline frames (about {per:.1f} each), all shared with the frames either side; "
            "widen the range"
        )
    return Retake(take, (start, end), (first, last), messages)


def parse_span(text: str) -> tuple[int, int]:
    """--span "1001:1040" -> (1001, 1040); a clear ValueError for anything else."""
    first, sep, last = (part.strip() for part in text.partition(":"))
    try:
        span = int(first), int(last)
    except ValueError:
        raise ValueError(f"--span {text!r}: write START:END in timeline frames, e.g. 1001:1040") from None
    if not sep:
        raise ValueError(f"--span {text!r}: write START:END in timeline frames, e.g. 1001:1040")
    if span[1] < span[0]:
        raise ValueError(f"--span {text!r}: the span ends before it starts")
    return span


def timing_note(retake: Retake, anchors: list[tuple[int, int]]) -> str:
    """A warning when the new take's keyframes time it differently from its parent's (a marker moved, added or
    removed): the server retimes each take by its own keyframes, so delivered frames near them can differ."""
    if tuple(sorted(set(anchors))) == retake.take.anchors:
        return ""
    return (
        f"the keyframes differ from those {retake.take.name} was made with: the new take is retimed by its own, so "
        "delivered frames outside the span may differ from the parent's (the generated frames outside it do not)"
    )
