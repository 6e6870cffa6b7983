"""What the engine is asked to make: a fully resolved request (defaults already applied, limits checked)."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

# The scheduler names the API accepts (engine/schedulers.py maps each to a diffusers class).
SCHEDULER_NAMES = ("ddim", "euler", "euler_a", "dpm++ 2m", "dpm++ 2m karras", "lcm", "pndm")


@dataclass(frozen=True)
class Keyframe:
    """A condition image for one generated frame (0-based index into the clip)."""

    index: int
    image: Image.Image
    output_index: int | None = None  # where this keyframe must land in the retimed output (None: no anchor)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str
    modality: str
    num_frames: int
    width: int
    height: int
    steps: int
    guidance_scale: float
    conditioning_scale: float
    seed: int
    scheduler: str
    fps: int
    keyframes: list[Keyframe] = field(default_factory=list)
    output_frames: int = 0  # frames in the delivered clip after retiming; 0: num_frames (no retiming)
    quality: str = "final"  # "draft": generated smaller and with fewer steps ([draft]), scaled up to output size
    output_width: int = 0  # delivered size when it differs from the generation size (drafts); 0: width
    output_height: int = 0
    loras: tuple[tuple[str, float], ...] = ()  # (configured LoRA name, scale) turned on for this job

    @property
    def delivered_frames(self) -> int:
        return self.output_frames or self.num_frames
