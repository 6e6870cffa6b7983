"""The denoising loop's one way to take "something that happens at each step" (style: diffusers'
callback_on_step_end, which sees the step's tensors and may hand back new latents).

Known frames (a retake's kept frames, pinned pictures), progress and cancel are hooks; the loop
(windowed.denoise_windowed) calls every hook after each scheduler step, in the order given, on the whole clip
(one context window or many alike). A hook may return new latents, which the next hook and the next step see;
raising from a hook (JobCancelled) unwinds the job. A hook may also say that a context window needs no
prediction at all (every frame in it is known), so a long shot's retake runs only the windows it changes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass(frozen=True)
class StepState:
    """What a hook sees after denoising step `step` (0-based) of `steps`."""

    step: int
    steps: int
    timestep: torch.Tensor  # the step's timestep
    next_timestep: torch.Tensor | None  # the noise level `latents` are at now; None after the last step: clean
    latents: torch.Tensor  # (batch, channels, frames, h, w) after the scheduler step (and earlier hooks)
    noise_pred: torch.Tensor  # the blended, guided noise prediction of this step
    x0: torch.Tensor | None  # the scheduler's predicted clean latents, where its step gives them
    scheduler: Any


class StepHook:
    """Something that happens at each denoising step. Subclasses override what they need."""

    def needs_window(self, start: int, stop: int) -> bool:
        """Whether frames start..stop-1 need a noise prediction at all (False: the hook sets all of them)."""
        return True

    def __call__(self, state: StepState) -> torch.Tensor | None:
        """New latents, or None to leave them."""
        return None


class OnStep(StepHook):
    """A plain callable on the step number (progress, cancel): the engine's step_end as a hook."""

    def __init__(self, callback):
        self.callback = callback

    def __call__(self, state: StepState) -> None:
        self.callback(state.step)


def run_hooks(hooks, state: StepState) -> torch.Tensor:
    """Every hook in order, each seeing the latents the one before returned; the latents after the last."""
    latents = state.latents
    for hook in hooks:
        if latents is not state.latents:
            state = replace(state, latents=latents)
        replaced = hook(state)
        if replaced is not None:
            latents = replaced
    return latents
