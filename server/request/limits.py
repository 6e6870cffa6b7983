"""[limits]: the bounds a request is checked against (request/schema.py puts them into the body's schema);
config.py reads them from the server's TOML."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    min_size: int
    max_size: int
    max_frames: int
    max_output_frames: int
    max_steps: int
    max_guidance_scale: float
    max_conditioning_scale: float
    max_fps: int
    max_prompt_chars: int
    max_image_pixels: int
    max_request_pixels: int
