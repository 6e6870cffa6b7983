"""Scheduler names the API offers, and building them from a config without ever crashing on its keys.

The AnimateDiff reference scripts passed one kwargs table to every scheduler class; EulerDiscreteScheduler
crashed on a key it did not take (`steps_offset`). Here a config is first reduced to the keys the target
class's __init__ accepts; what is dropped is logged, never passed on.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..request.model import SCHEDULER_NAMES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerKind:
    cls: type[SchedulerMixin]
    # What the name means (e.g. "dpm++ 2m" is DPM-Solver++ of order 2); laid over the config.
    fixed: dict[str, Any] = field(default_factory=dict)


SCHEDULERS: dict[str, SchedulerKind] = {
    "ddim": SchedulerKind(DDIMScheduler),
    "euler": SchedulerKind(EulerDiscreteScheduler),
    "euler_a": SchedulerKind(EulerAncestralDiscreteScheduler),
    "dpm++ 2m": SchedulerKind(DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++ 2m karras": SchedulerKind(
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "lcm": SchedulerKind(LCMScheduler),
    "pndm": SchedulerKind(PNDMScheduler),
}
assert tuple(SCHEDULERS) == SCHEDULER_NAMES, "the API's scheduler names and the engine's classes differ"


def accepted_keys(cls: type) -> set[str]:
    params = inspect.signature(cls.__init__).parameters
    return {name for name, p in params.items() if name != "self" and p.kind is not p.VAR_KEYWORD}


def sanitise_config(cls: type, config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Split `config` into what `cls.__init__` takes and the names it would have crashed on."""
    keys = accepted_keys(cls)
    kept = {k: v for k, v in config.items() if k in keys}
    dropped = sorted(k for k in config if k not in keys)
    return kept, dropped


def overrides_for(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """[scheduler]'s plain keys with the table under `name` laid over them: what scheduler `name` is given."""
    return {k: v for k, v in overrides.items() if not isinstance(v, dict)} | overrides.get(name, {})


def build_scheduler(name: str, base_config: dict[str, Any], overrides: dict[str, Any]) -> SchedulerMixin:
    """The scheduler called `name`, from the base model's config with `overrides` laid over it.

    `overrides` is the [scheduler] table: its plain keys apply to every scheduler, a table under a scheduler's
    name (`{"ddim": {"timestep_spacing": "leading"}}`) to that one only, laid last.
    """
    try:
        kind = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; known: {sorted(SCHEDULERS)}") from None
    merged = {k: v for k, v in base_config.items() if not k.startswith("_")}
    merged.update(overrides_for(name, overrides))
    merged.update(kind.fixed)
    kept, dropped = sanitise_config(kind.cls, merged)
    if dropped:
        log.debug("scheduler %s: ignoring config keys it does not take: %s", name, ", ".join(dropped))
    return kind.cls(**kept)
