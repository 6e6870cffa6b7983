"""Memory levers without offload (#18; [performance] feed_forward_chunking, cfg_halves, park_idle_weights, and
the encoder's residuals released early): what each does to the denoiser, that the frames stay (or how far
they move), and the "auto" plan from free memory. The figures at full size are in BENCHMARKS.md."""

from __future__ import annotations

import dataclasses
import logging
import weakref

import numpy as np
import pytest
import torch

from server.config import ConfigError, load_config
from server.engine.engine import Engine
from server.engine.models import load_model
from server.engine.performance import (
    GIB,
    WORKING_RESERVE,
    MemoryPlan,
    chunk_feed_forward,
    plan_memory,
    working_memory,
)
from server.tensor_memory import PeakTensorMemory
from tests.server.test_engine import make_request


@pytest.fixture
def own_engine(tiny_config):
    """An engine on a model of its own: chunking changes the modules in place."""
    return Engine(load_model(tiny_config.model, tiny_config.data_dir), tiny_config.scheduler, tiny_config.long_video)


def with_levers(engine: Engine, **settings) -> Engine:
    engine.performance = dataclasses.replace(engine.performance, **settings)
    return engine


def test_feed_forward_chunking_runs_every_block_a_frame_at_a_time(engine, own_engine):
    m = own_engine.model
    blocks = chunk_feed_forward(m.unet, *m.encoders.values())
    assert blocks > 0
    seen: dict[str, set] = {"spatial": set(), "temporal": set()}
    hooks = []
    for module in (m.unet, m.encoders["lineart"]):
        for name, sub in module.named_modules():
            if type(sub).__name__ == "FeedForward":
                kind = "temporal" if "motion_modules" in name.split(".") else "spatial"
                hooks.append(sub.register_forward_pre_hook(lambda _m, a, k=kind: seen[k].add(tuple(a[0].shape))))
    request = make_request(steps=2)
    try:
        chunked = own_engine.generate(request).frames.astype(int)
    finally:
        for hook in hooks:
            hook.remove()
    # spatial blocks: (batch × frames, pixels, channels), one frame each; motion blocks: (batch × pixels,
    # frames, channels), one frame each. Nothing runs on the whole batch at once.
    assert seen["spatial"] and {shape[0] for shape in seen["spatial"]} == {1}
    assert seen["temporal"] and {shape[1] for shape in seen["temporal"]} == {1}
    reference = engine.generate(request).frames.astype(int)
    assert np.abs(chunked - reference).max() <= 2  # smaller matrix products round differently, nothing more


def test_cfg_halves_one_after_the_other_run_the_denoiser_on_one_half_at_a_time(engine, monkeypatch):
    calls = {"unet": [], "encoder": []}
    hooks = [
        engine.model.unet.register_forward_pre_hook(lambda _m, args: calls["unet"].append(args[0].shape[0])),
        engine.model.encoders["lineart"].register_forward_pre_hook(
            lambda _m, args: calls["encoder"].append(args[0].shape[0])
        ),
    ]
    request = make_request(steps=3)
    try:
        together = engine.generate(request).frames.astype(int)
        calls["unet"].clear()
        calls["encoder"].clear()
        monkeypatch.setattr(engine, "performance", dataclasses.replace(engine.performance, cfg_halves="sequential"))
        sequential = engine.generate(request).frames.astype(int)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls["unet"] == [1] * 6 and calls["encoder"] == [1] * 6  # negative, then positive, per step
    assert np.abs(sequential - together).max() <= 2
    # Without guidance there is one half only: nothing changes.
    assert engine.memory_plan(make_request(guidance_scale=1.0)).sequential_cfg  # asked for; a no-op there


def test_a_plan_that_trades_speed_for_memory_is_logged(engine, monkeypatch, caplog):
    monkeypatch.setattr(engine, "performance", dataclasses.replace(engine.performance, cfg_halves="sequential"))
    with caplog.at_level(logging.INFO, logger="server.engine.engine"):
        engine.memory_plan(make_request())
    assert "memory plan: CFG halves in turn, idle weights kept (unknown free;" in caplog.text


def test_encoder_residuals_are_freed_before_the_up_path(engine):
    """The UNet keeps its own skip connections for the up path; the encoder's residuals were added to them on
    the way down and are gone by the time the first up block runs (they used to live through it)."""
    residuals: list[weakref.ref] = []
    alive_at_up: list[int] = []
    m = engine.model

    def keep_refs(_module, _args, output):
        down, _mid = output
        residuals[:] = [weakref.ref(t) for t in down]

    hooks = [
        m.encoders["lineart"].register_forward_hook(keep_refs),
        m.unet.up_blocks[0].register_forward_pre_hook(
            lambda *_: alive_at_up.append([i for i, r in enumerate(residuals) if r() is not None])
        ),
    ]
    try:
        engine.generate(make_request(steps=2))
        kept = alive_at_up[:]
        alive_at_up.clear()
        engine.release_residuals = False
        engine.generate(make_request(steps=2))
    finally:
        engine.release_residuals = True
        for hook in hooks:
            hook.remove()
    # All gone but the last (the smallest, at the lowest resolution), which the UNet's loop variable still holds.
    assert kept == [[len(residuals) - 1]] * 2
    assert alive_at_up == [list(range(len(residuals)))] * 2  # the measurement's baseline: all of them alive


def test_idle_weights_leave_the_device_for_the_denoising_loop_and_come_back_to_decode(engine, monkeypatch):
    m = engine.model
    events: list[str] = []
    names = {id(m.text_encoder): "text encoder", id(m.vae): "vae"}

    def move(module, where):
        events.append(f"{names[id(module)]} to {where.type}")
        module.to(where)

    monkeypatch.setattr(engine, "move", move)
    monkeypatch.setattr(engine, "performance", dataclasses.replace(engine.performance, park_idle_weights="on"))
    hooks = [
        m.unet.register_forward_pre_hook(lambda *_: events.append("unet")),
        m.vae.decoder.register_forward_pre_hook(lambda *_: events.append("decode")),
    ]
    request = make_request(steps=2)
    try:
        parked = engine.generate(request).frames
    finally:
        for hook in hooks:
            hook.remove()
    moves = ["text encoder to cpu", "vae to cpu", "unet", "unet", "text encoder to cpu", "vae to cpu"]
    assert events[:6] == moves  # the CPU is this device: the moves are there, the bytes stay
    assert events[6:] and set(events[6:]) == {"decode"}
    monkeypatch.setattr(engine, "performance", dataclasses.replace(engine.performance, park_idle_weights="off"))
    assert np.array_equal(parked, engine.generate(request).frames)


def test_counted_peak_falls_with_each_lever_and_parking_is_counted(own_engine):
    """The tensor counter of the memory benchmark, on the tiny model: each lever lowers a denoising step's peak
    (the decode has its own, which VAE slicing keeps down)."""
    m = own_engine.model
    request = make_request(steps=2, num_frames=16, width=128, height=128)
    peaks = {}
    for name, settings in {
        "none": {},
        "sequential": dict(cfg_halves="sequential"),
        "sequential + park": dict(cfg_halves="sequential", park_idle_weights="on"),
    }.items():
        with_levers(own_engine, **({"cfg_halves": "together", "park_idle_weights": "off"} | settings))
        counter = PeakTensorMemory(m.unet, m.vae, m.text_encoder, m.encoders["lineart"])
        own_engine.move = counter.move
        steps: list[int] = []
        with counter:
            own_engine.generate(request, on_step=lambda _s, _t, c=counter, into=steps: into.append(c.mark()))
        peaks[name] = max(steps) - counter.start
    assert peaks["none"] > peaks["sequential"] > peaks["sequential + park"]


def test_auto_plan_turns_the_levers_on_when_free_memory_is_short():
    perf = load_config().performance
    needed = working_memory(16, 512, 512, torch.bfloat16, cfg=True)
    assert working_memory(32, 512, 512, torch.bfloat16, cfg=True) == 2 * needed
    assert working_memory(16, 512, 512, torch.float32, cfg=True) == 2 * needed
    assert working_memory(16, 512, 512, torch.bfloat16, cfg=False) == needed // 2
    assert plan_memory(perf, None, needed) == MemoryPlan()  # CPU: nothing to fill
    assert plan_memory(perf, needed + WORKING_RESERVE + GIB, needed) == MemoryPlan()
    assert plan_memory(perf, needed, needed) == MemoryPlan(sequential_cfg=True, park_idle_weights=True)
    forced = dataclasses.replace(perf, cfg_halves="together", park_idle_weights="off")
    assert plan_memory(forced, 0, needed) == MemoryPlan()
    forced = dataclasses.replace(perf, cfg_halves="sequential", park_idle_weights="on")
    assert plan_memory(forced, None, needed) == MemoryPlan(sequential_cfg=True, park_idle_weights=True)


@pytest.mark.parametrize(
    "key, value", [("cfg_halves", "split"), ("feed_forward_chunking", "yes"), ("park_idle_weights", True)]
)
def test_unknown_lever_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config(overrides={"performance": {key: value}})


@pytest.mark.parametrize("quality", ["final", "draft"])
def test_job_flops_from_one_step_equal_a_whole_jobs_count(engine, tiny_config, quality):
    """`server.bench flops` counts one step and projects; the projection is a whole job's count, exactly."""
    from torch.utils.flop_counter import FlopCounterMode

    from server.bench import _job_flops, _request

    request = _request(tiny_config, engine.model, 8, 64, 5, quality)
    with FlopCounterMode(display=False) as counter:
        engine.generate(request)
    assert _job_flops(engine, request)["job"] == counter.get_total_flops()
