"""Which frames of a training clip are conditioned: drawn per clip, as SparseCtrl is trained (sparse masks)."""

from __future__ import annotations

import torch

STRATEGIES = ("first", "first_last", "random", "all")


def sample_mask(frames: int, weights: dict[str, float], max_random: int, generator: torch.Generator) -> torch.Tensor:
    """A (frames,) float mask with 1 on the conditioned frames: the first only, first + last, 1..max_random
    random frames, or all, chosen with the relative `weights`."""
    w = torch.tensor([float(weights[s]) for s in STRATEGIES])
    strategy = STRATEGIES[int(torch.multinomial(w / w.sum(), 1, generator=generator))]
    mask = torch.zeros(frames)
    if strategy == "first":
        mask[0] = 1
    elif strategy == "first_last":
        mask[0] = mask[-1] = 1
    elif strategy == "all":
        mask[:] = 1
    else:
        k = int(torch.randint(1, max(1, min(max_random, frames)) + 1, (1,), generator=generator))
        mask[torch.randperm(frames, generator=generator)[:k]] = 1
    return mask
