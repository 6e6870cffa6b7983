"""Scheduler configs carrying keys a class does not take never crash (steps_offset on Euler did)."""

from __future__ import annotations

import pytest

from server.engine.schedulers import SCHEDULERS, accepted_keys, build_scheduler, sanitise_config

# SD1.5's own scheduler_config.json (a PNDM config) plus what AnimateDiff's reference YAML passed to every class.
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}
EXTRA = {
    "steps_offset": 1,
    "clip_sample": False,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "rescale_betas_zero_snr": False,
    "a_key_from_a_future_diffusers": 3,
}


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_config_with_extra_keys_builds_every_scheduler(name):
    scheduler = build_scheduler(name, SD15_CONFIG, {"beta_schedule": "linear", **EXTRA})
    kind = SCHEDULERS[name]
    assert type(scheduler) is kind.cls
    assert scheduler.config.beta_schedule == "linear"
    for key, value in kind.fixed.items():
        assert scheduler.config[key] == value
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) >= 10


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_sanitising_drops_exactly_what_the_class_would_have_crashed_on(name):
    cls = SCHEDULERS[name].cls
    config = {k: v for k, v in SD15_CONFIG.items() if not k.startswith("_")} | EXTRA
    kept, dropped = sanitise_config(cls, config)
    assert "a_key_from_a_future_diffusers" in dropped
    assert set(kept) <= accepted_keys(cls) and set(kept).isdisjoint(dropped)
    with pytest.raises(TypeError):  # what the reference scripts did: pass everything
        cls(**config)
    cls(**kept)


def test_unknown_scheduler_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scheduler 'heun'"):
        build_scheduler("heun", SD15_CONFIG, {})
