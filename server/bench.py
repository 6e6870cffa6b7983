"""Benchmarks: python -m server.bench memory|speed|train|flops|retake|preview [--arch full|tiny] [--size N] ...

`speed`: our engine and a bare diffusers AnimateDiffSparseControlNetPipeline call on the same weights and
request, side by side in one process: s/step, total s, peak memory, achieved TFLOP/s (FLOPs counted with
torch.utils.flop_counter on the same request) and the ours/diffusers ratio; `--quality draft` for a draft.

`memory`: peak memory of one job as the clip grows, with context windows (server/engine/windowed.py). Each
point runs in a fresh process so its peak is its own: torch.cuda.max_memory_allocated on a GPU; on a CPU the
same figure counted tensor by tensor (server/tensor_memory.py), and the process's peak RSS. `--diffusers` adds
a bare diffusers call per point that one window holds.

`--arch full` is the full-size SD1.5 + AnimateDiff v3 + SparseCtrl architecture with random weights (the real
model's memory and speed), `--arch tiny` the test model (a smoke run).

`preview`: FLOPs of a live preview (the linear approximation, TAESD) beside a denoising step's (#29).

`train`: training steps of a new SparseCtrl encoder (server/train) on synthetic clips: clips/s, s/step, peak
memory, achieved TFLOP/s (forward + backward counted) and the loss of each step.
Prints a table and appends it to BENCHMARKS.md with the device, versions and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The memory levers `levers` compares ([performance] and windowed.py; #18), in the order they are added.
LEVERS = {
    "release": "the encoder's residuals released as the UNet adds them",
    "chunk": "feed-forward chunking (a frame at a time)",
    "sequential": "CFG halves one after the other",
    "park": "text encoder and VAE off the device while denoising",
}


def _point(args: argparse.Namespace) -> dict:
    """One job of args.frames frames, in this process: our engine, or (args.runner == "diffusers") a bare
    diffusers call on the same modules, which has no context windows and diffusers' joint temporal norm.
    A linear measurement script (set up, measure, print, write the row): kept whole, read top to bottom."""
    import contextlib
    import gc

    import numpy as np
    import psutil
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .engine.models import resolve_dtype
    from .engine.performance import apply_performance
    from .engine.temporal_norm import use_joint_temporal_norm, use_per_frame_temporal_norm
    from .engine.windows import context_windows
    from .tensor_memory import PeakTensorMemory

    config, engine = _build(args)
    device, m = engine.device, engine.model
    n = args.frames
    reference = getattr(args, "reference", False)
    request = _request(config, m, n, args.size, args.steps, depth=getattr(args, "depth", False), reference=reference)
    if request.controlnets and args.runner == "diffusers":
        raise SystemExit("error: --depth compares with no bare diffusers call (it has no SparseCtrl + ControlNet)")
    denoisers = [m.unet, *m.encoders.values()]
    if args.runner == "diffusers":
        for module in denoisers:
            use_joint_temporal_norm(module)
        run, _ = _bare_diffusers(engine, request)
    else:
        if config.model.temporal_norm == "per_frame":
            for module in denoisers:
                use_per_frame_temporal_norm(module)
        performance = _lever_settings(config.performance, args)
        apply_performance(m, performance)
        engine.performance = performance
        engine.release_residuals = args.levers is None or "release" in args.levers.split(",")
        m.encoders[request.modality].to(device)  # where the engine puts it, so that the weights count it
        for controlnet in m.controlnets.values():
            controlnet.to(device)

        def run():
            return engine.generate(request, on_step=lambda step, total: marks.append(_mark(counter, flops))).frames

    gc.collect()
    loaded_rss = psutil.Process().memory_info().rss
    # Building the model has its own peak; the job's peak is measured from here (Linux resets VmHWM).
    peak_reset = _reset_peak_rss()
    on_device = [m.unet, m.vae, m.text_encoder, m.encoders[request.modality], *m.controlnets.values()]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        counter = None
        weights = torch.cuda.memory_allocated(device)
    else:
        float32_as = resolve_dtype(args.count_as, device) if getattr(args, "count_as", None) else None
        adapter = engine.reference_adapter if reference else None
        installed = [adapter.projection, *adapter.ip_processors] if adapter else []  # in the UNet for the job
        encoder = [adapter.weights.image_encoder] if adapter else []  # on the device only while it encodes
        counter = PeakTensorMemory(*on_device, *installed, *encoder, float32_as=float32_as)
        for module in encoder:
            counter.move(module, torch.device("cpu"))
        weights = counter.current
    if counter is not None and (engine.performance.park_idle_weights == "on" or reference):
        engine.move = counter.move  # no second device here: the count moves idle weights and the image encoder
    marks: list[tuple[int | None, int | None]] = []  # (peak since the last mark, FLOPs so far) per step
    flops = FlopCounterMode(display=False) if args.flops else contextlib.nullcontext()
    started = time.perf_counter()
    with counter if counter is not None else contextlib.nullcontext(), flops:
        frames = run()
        marks.append(_mark(counter, flops))  # the decode, after the last step
    seconds = time.perf_counter() - started
    if args.frames_out:
        np.save(args.frames_out, frames)
    allocated = torch.cuda.max_memory_allocated(device) if counter is None else counter.peak
    if device.type == "cuda":
        rss = None
    else:
        rss = _peak_rss() if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    lv = config.long_video
    windowed = args.runner == "ours" and n > lv.window_length
    return {
        "runner": args.runner,
        "frames": n,
        "windows": len(context_windows(n, lv.window_length, lv.window_overlap)) if windowed else 1,
        "window": lv.window_length,
        "overlap": lv.window_overlap,
        "allocated_mib": allocated / 2**20,
        "weights_mib": weights / 2**20,
        "rss_mib": None if rss is None else rss / 2**20,
        "rss_over_loaded_mib": None if rss is None else (rss - loaded_rss) / 2**20,
        "seconds": seconds,
        "device": str(device),
        "dtype": str(m.dtype).removeprefix("torch.")
        + (f", counted as {args.count_as}" if getattr(args, "count_as", None) else ""),
        "vae_slicing": bool(m.vae.use_slicing),
        "shape": list(frames.shape),
        "step_peaks_mib": [None if peak is None else peak / 2**20 for peak, _ in marks],
        "flops": [f for _, f in marks] if args.flops else None,
        "levers": args.levers,
    }


def _lever_settings(performance, args: argparse.Namespace):
    """[performance] with the levers `--levers` names (release, chunk, sequential, park) on and the others
    off; without --levers, the configuration's own ("auto" included) and VAE slicing as asked."""
    import dataclasses

    performance = dataclasses.replace(performance, vae_slicing=args.vae_slicing)
    if args.levers is None:
        return performance
    levers = set(args.levers.split(",")) - {"none", ""}
    unknown = levers - set(LEVERS)
    if unknown:
        raise SystemExit(f"error: unknown lever(s) {', '.join(sorted(unknown))}; known: {', '.join(LEVERS)}")
    return dataclasses.replace(
        performance,
        feed_forward_chunking="on" if "chunk" in levers else "off",
        cfg_halves="sequential" if "sequential" in levers else "together",
        park_idle_weights="on" if "park" in levers else "off",
    )


def _mark(counter, flops) -> tuple[int | None, int | None]:
    """(peak since the last mark, FLOPs counted so far): one step's figures, read at its end."""
    peak = counter.mark() if counter is not None else None
    return peak, (flops.get_total_flops() if hasattr(flops, "get_total_flops") else None)


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident size (Linux: clear_refs 5 resets VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    import os

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _run_point(args: argparse.Namespace, frames: int, runner: str) -> dict | None:
    """`_point` in a fresh process, so that its peak is its own."""
    cmd = [sys.executable, "-m", "server.bench", "_point", "--runner", runner, "--frames", str(frames)]
    flags = ("arch", "size", "steps", "device", "dtype", "vae_slicing", "data_dir", "levers", "frames_out", "count_as")
    for flag in flags:
        value = getattr(args, flag, None)
        if value:
            cmd += ["--" + flag.replace("_", "-"), str(value)]
    if getattr(args, "flops", False):
        cmd.append("--flops")
    if getattr(args, "depth", False):
        cmd.append("--depth")
    if getattr(args, "reference", False):
        cmd.append("--reference")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr[-3000:], file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args: argparse.Namespace) -> int:
    """Peak memory of a job per point, ours and bare diffusers, each in a fresh process.
    A linear measurement script (set up, measure, print, write the row): kept whole, read top to bottom."""
    import diffusers
    import torch

    rows = []
    for n in [int(x) for x in args.frames_list.split(",")]:
        row = _run_point(args, n, "ours")
        if row is None:
            return 1
        # diffusers has no context windows: it is compared where one window holds the clip.
        bare = _run_point(args, n, "diffusers") if args.diffusers and row["windows"] == 1 else None
        if args.diffusers and row["windows"] == 1 and bare is None:
            return 1
        row["diffusers"] = bare
        rows.append(row)
        cpu = row["rss_mib"] is not None
        print(
            f"{n:>5} frames  {row['windows']:>3} windows  peak allocated {row['allocated_mib']:8.0f} MiB "
            f"(weights {row['weights_mib']:.0f})"
            + (f"  peak RSS {row['rss_mib']:8.0f} MiB" if cpu else "")
            + f"  {row['seconds']:7.1f} s"
            + (
                f"  | diffusers: peak allocated {bare['allocated_mib']:8.0f} MiB  {bare['seconds']:7.1f} s"
                if bare
                else ""
            ),
            flush=True,
        )
    first = rows[0]
    cpu = first["rss_mib"] is not None
    head = (
        f"### {datetime.date.today().isoformat()} · {_device_name(first['device'])} · torch {torch.__version__} · "
        f"diffusers {diffusers.__version__} · memory · {args.arch}-size architecture, {args.size}×{args.size}, "
        f"{args.steps} step(s), {first['dtype']}, CFG on, ours with VAE slicing "
        f"{'on' if first['vae_slicing'] else 'off'}"
    )
    measure = (
        "torch.cuda.max_memory_allocated during the job"
        if not cpu
        else "the tensor storages alive at once during the job, counted on the CPU (server/tensor_memory.py: what "
        "torch.cuda.max_memory_allocated would report on a GPU, less kernel workspaces); peak RSS = the process's "
        "resident peak (VmHWM reset after loading)"
    )
    lines = [
        "",
        head,
        "",
        f"Each point in a fresh process; clips longer than {first['window']} frames in context windows "
        f"(overlap {first['overlap']}). Peak allocated = {measure}.",
        "",
    ]
    columns = ["frames", "windows", "peak allocated (MiB)", "of which weights (MiB)"]
    columns += ["peak RSS (MiB)", "RSS over the loaded model (MiB)"] if cpu else []
    columns += ["seconds"]
    columns += ["diffusers: peak allocated (MiB)", "diffusers: seconds"] if args.diffusers else []
    lines += ["| " + " | ".join(columns) + " |", "|" + " ---: |" * len(columns)]
    for r in rows:
        cells = [r["frames"], r["windows"], f"{r['allocated_mib']:.0f}", f"{r['weights_mib']:.0f}"]
        cells += [f"{r['rss_mib']:.0f}", f"{r['rss_over_loaded_mib']:.0f}"] if cpu else []
        cells += [f"{r['seconds']:.1f}"]
        if args.diffusers:
            bare = r["diffusers"]
            cells += [f"{bare['allocated_mib']:.0f}", f"{bare['seconds']:.1f}"] if bare else ["—", "—"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    _append(Path(args.out), lines)
    return 0


LEVER_SETS = "none;release;release,chunk;release,chunk,sequential;release,chunk,sequential,park"


def levers(args: argparse.Namespace) -> int:
    """The memory levers side by side at one shot, each set in a fresh process: peak allocated (and per step),
    FLOPs per step, seconds, each as a ratio to the first set, and how far its frames move from the first's.
    A linear measurement script (set up, measure, print, write the row): kept whole, read top to bottom."""
    import tempfile

    import diffusers
    import numpy as np
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, lever_set in enumerate(args.sets.split(";")):
            point = argparse.Namespace(**vars(args), levers=lever_set or "none", flops=True)
            point.frames_out = str(Path(tmp) / f"{i}.npy")
            row = _run_point(point, args.frames, "ours")
            if row is None:
                return 1
            frames = np.load(point.frames_out).astype(np.int16)
            row["max_diff"] = int(np.abs(frames - np.load(str(Path(tmp) / "0.npy")).astype(np.int16)).max())
            flops = row["flops"]
            row["step_flops"] = flops[1] - flops[0] if len(flops) > 2 else flops[0]
            rows.append(row)
            base = rows[0]
            print(
                f"{lever_set or 'none':<40} peak allocated {row['allocated_mib']:6.0f} MiB "
                f"(weights {row['weights_mib']:.0f}; per step "
                + ", ".join(f"{p:.0f}" for p in row["step_peaks_mib"])
                + f")  {row['step_flops'] / 1e12:.2f} TFLOP/step  {row['seconds']:.1f} s "
                f"(×{row['seconds'] / base['seconds']:.3f})  max |Δ| {row['max_diff']}/255",
                flush=True,
            )
    first = rows[0]
    on_gpu = first["rss_mib"] is None
    head = (
        f"### {datetime.date.today().isoformat()} · {_device_name(first['device'])} · torch {torch.__version__} · "
        f"diffusers {diffusers.__version__} · memory levers · {args.arch}-size architecture, {args.frames}×"
        f"{args.size}², {args.steps} step(s), {first['dtype']}, CFG on, VAE slicing "
        f"{'on' if first['vae_slicing'] else 'off'}"
        + (", line-art keyframes + depth ControlNet on every frame" if args.depth else "")
        + (" + a reference (IP-Adapter plus, two images)" if args.reference else "")
    )
    lines = [
        "",
        head,
        "",
        f"`python -m server.bench levers --frames {args.frames} --size {args.size} --steps {args.steps} --dtype "
        f"{args.dtype}"
        + (f" --count-as {args.count_as}" if args.count_as else "")
        + (" --depth" if args.depth else "")
        + (" --reference" if args.reference else "")
        + (f' --sets "{args.sets}"' if args.sets != LEVER_SETS else "")
        + "`. Each set in "
        "a fresh process. Peak allocated: "
        + ("torch.cuda.max_memory_allocated" if on_gpu else "tensor storages alive at once, counted on the CPU")
        + "; per step: the peak within each denoising step, then the decode's. FLOPs: torch.utils.flop_counter, "
        "the second step's. Ratios against the first row; max |Δ| = the largest change of a frame's 8-bit value "
        "from the first row's frames (same seed).",
        "",
        "| levers | peak allocated (MiB) | of which weights (MiB) | per step, then decode (MiB) | TFLOP/step | "
        "FLOPs ratio | seconds | time ratio | max abs diff (of 255) |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        names = [n for n in (r["levers"] or "").split(",") if n in LEVERS]
        lines.append(
            f"| {' + '.join(names) or 'none'} | {r['allocated_mib']:.0f} | {r['weights_mib']:.0f} | "
            + ", ".join(f"{p:.0f}" for p in r["step_peaks_mib"])
            + f" | {r['step_flops'] / 1e12:.2f} | {r['step_flops'] / first['step_flops']:.3f} | {r['seconds']:.1f} | "
            f"{r['seconds'] / first['seconds']:.3f} | {r['max_diff']} |"
        )
    lines += ["", "Levers: " + "; ".join(f"{k}: {v}" for k, v in LEVERS.items()) + "."]
    _append(Path(args.out), lines)
    return 0


def flops(args: argparse.Namespace) -> int:
    """FLOPs of a final and of each kind of draft at the same shot, counted with torch.utils.flop_counter on a
    real one-step job of each request (as the server resolves it) and on its prompt encoding alone: a job of n
    steps = prompt + n × (the step's count less the prompt's) + decode. (A one-time cost before the loop, e.g.
    the RGB encoder's VAE encoding of keyframes, would be counted per step: the line-art encoder has none.)
    A linear measurement script: kept whole, read top to bottom."""
    import gc

    import diffusers
    import torch

    rows = []
    for draft_module in (False, True):  # the final and the plain draft on v3 alone; then AnimateLCM's module
        build = argparse.Namespace(**vars(args), quality="draft" if draft_module else "final")
        config, engine = _build(build)
        m = engine.model
        if not draft_module:
            m.motion_adapters.pop("draft", None)  # the tiny model ships one; the final and plain draft run v3's
            rows.append(("final", _job_flops(engine, _request(config, m, args.frames, args.size, args.steps))))
        request = _request(config, m, args.frames, args.size, args.steps, "draft")
        name = f"draft ({'draft motion module' if draft_module else 'no draft module'})"
        rows.append((name, _job_flops(engine, request)))
        del engine, m
        gc.collect()
    final = rows[0][1]["job"]
    for name, r in rows:
        print(f"{name:<30} {_describe(r['request']):<50} {r['job'] / 1e12:9.2f} TFLOP  ×{r['job'] / final:.3f}")
    head = (
        f"### {datetime.date.today().isoformat()} · torch {torch.__version__} · diffusers {diffusers.__version__} · "
        f"flops · {args.arch}-size architecture, {args.frames}×{args.size}², final {args.steps} steps, CFG on"
    )
    lines = [
        "",
        head,
        "",
        f"`python -m server.bench flops --frames {args.frames} --size {args.size} --steps {args.steps}`: "
        "torch.utils.flop_counter on a real one-step job of each request, as the server resolves it ([draft]), and "
        "on its prompt alone; a job = prompt + steps × step + decode (the same on any device or dtype).",
        "",
        "| run | resolves to | TFLOP/step | decode TFLOP | job TFLOP | of a final |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {_describe(r['request'])} | {r['step'] / 1e12:.2f} | {r['decode'] / 1e12:.2f} | "
            f"{r['job'] / 1e12:.1f} | {r['job'] / final:.3f} |"
        )
    _append(Path(args.out), lines)
    return 0


def retake(args: argparse.Namespace) -> int:
    """FLOPs of a retake of `--span` frames beside the whole shot it retakes (#28: at most 0.4 of it for 16 of
    128 frames), each counted over a whole job (prompt, every step, decode) with torch.utils.flop_counter: the
    retake runs only the context windows its span touches and decodes only its span."""
    import dataclasses

    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .jobs.execute import take_files
    from .request.model import TAKE_FRAMES, TAKE_LATENTS, Retake

    config, engine = _build(args)
    shot = _request(config, engine.model, args.frames, args.size, args.steps)
    with FlopCounterMode(display=False) as counter:
        take = take_files(engine.generate(shot))
    whole = counter.get_total_flops()
    start = (args.frames - args.span) // 2
    span = (start, start + args.span - 1)
    again = dataclasses.replace(shot, seed=1, retake=Retake("0" * 32, *span, take[TAKE_LATENTS], take[TAKE_FRAMES]))
    with FlopCounterMode(display=False) as counter:
        engine.generate(again)
    part = counter.get_total_flops()
    lv = config.long_video
    print(f"whole shot {whole / 1e12:.3f} TFLOP; retake of {span} {part / 1e12:.3f} TFLOP; x{part / whole:.3f}")
    head = (
        f"### {datetime.date.today().isoformat()} · torch {torch.__version__} · diffusers {diffusers.__version__} · "
        f"retake · {args.arch}-size architecture, {args.frames}×{args.size}², {args.steps} steps, CFG on, windows "
        f"of {lv.window_length} (overlap {lv.window_overlap})"
    )
    command = f"python -m server.bench retake --arch {args.arch} --frames {args.frames} --size {args.size}"
    lines = [
        "",
        head,
        "",
        f"`{command} --steps {args.steps} --span {args.span}`: torch.utils.flop_counter over each whole job "
        "(prompt, steps, decode), the retake's span in the middle of the shot (the same on any device or dtype).",
        "",
        "| job | frames generated anew | TFLOP | of the whole shot |",
        "| --- | --- | ---: | ---: |",
        f"| whole shot | 0..{args.frames - 1} | {whole / 1e12:.3f} | 1.000 |",
        f"| retake | {span[0]}..{span[1]} | {part / 1e12:.3f} | {part / whole:.3f} |",
    ]
    _append(Path(args.out), lines)
    return 0


def preview(args: argparse.Namespace) -> int:
    """FLOPs of one live preview (#29) beside one denoising step's, each counted with torch.utils.flop_counter:
    the step from a real one-step job (_job_flops), the preview from the step hook itself on latents of the same
    shape, x0 computed from the noise prediction (what DPM++ needs; the counter counts matrix products and
    convolutions, not the few elementwise operations): the linear approximation, and TAESD's decoder at its
    released architecture (random weights). Both scale with the pixels; a step grows faster (attention)."""
    import diffusers
    import torch
    from diffusers import AutoencoderTiny
    from torch.utils.flop_counter import FlopCounterMode

    from .engine.previews import PreviewHook, TaesdDecoder
    from .engine.step_hooks import StepState

    config, engine = _build(args)
    request = _request(config, engine.model, args.frames, args.size, 1)
    step = _job_flops(engine, request)["step"]
    pipe = engine.build_pipeline(request.modality, request.scheduler)
    pipe.scheduler.set_timesteps(2)
    shape = (1, 4, request.num_frames, request.height // 8, request.width // 8)
    latents = torch.randn(shape, device=engine.device, dtype=engine.model.dtype)
    t, following = pipe.scheduler.timesteps
    state = StepState(0, 2, t, following, latents, torch.randn_like(latents), None, pipe.scheduler)
    taesd = AutoencoderTiny().to(device=engine.device, dtype=engine.model.dtype)
    counts = {}
    for name, decoder in (("linear approximation", None), ("TAESD", TaesdDecoder(taesd))):
        with FlopCounterMode(display=False) as counter:
            PreviewHook(lambda _s, _i: None, decoder)(state)
        counts[name] = counter.get_total_flops()
    for name, n in counts.items():
        print(f"{name:<22} {n:.4g} FLOP  {n / step:.2e} of a step ({step:.4g} FLOP)")
    head = (
        f"### {datetime.date.today().isoformat()} · torch {torch.__version__} · diffusers {diffusers.__version__} · "
        f"preview · {args.arch}-size architecture, {args.frames}×{args.size}², CFG on"
    )
    lines = [
        "",
        head,
        "",
        f"`python -m server.bench preview --arch {args.arch} --frames {args.frames} --size {args.size}`: "
        "torch.utils.flop_counter on one denoising step of a real job and on the live preview's step hook "
        "(x0 from the noise prediction, then RGB; matrix products and convolutions; the same on any device).",
        "",
        "| per step | FLOP | of a step |",
        "| --- | ---: | ---: |",
        f"| denoising step | {step:.4g} | 1 |",
        *(f"| preview, {name} | {n:.4g} | {n / step:.2e} |" for name, n in counts.items()),
    ]
    _append(Path(args.out), lines)
    return 0


def _job_flops(engine, request) -> dict:
    """The FLOPs of `request` from a one-step job and its prompt alone: prompt + steps × step + decode. A
    one-time cost before the loop (the RGB encoder's VAE encoding of keyframes) would be counted per step; the
    line-art encoder has none (tested against a whole job's count)."""
    import dataclasses

    from torch.utils.flop_counter import FlopCounterMode

    pipe = engine.build_pipeline(request.modality, request.scheduler)
    with FlopCounterMode(display=False) as counter:
        engine.encode_prompt(pipe, request)
    prompt = counter.get_total_flops()
    marks: list[int] = []
    with FlopCounterMode(display=False) as counter:
        one = dataclasses.replace(request, steps=1)
        engine.generate(one, on_step=lambda _s, _t: marks.append(counter.get_total_flops()))
        total = counter.get_total_flops()
    step, decode = marks[0] - prompt, total - marks[0]
    return {"request": request, "step": step, "decode": decode, "job": prompt + request.steps * step + decode}


def _build(args: argparse.Namespace):
    from .config import load_config
    from .engine.engine import Engine
    from .engine.models import load_model, resolve_device, resolve_dtype

    overrides = {"model": {"base": "tiny"}} if args.arch == "tiny" else {}
    if args.data_dir:
        overrides["server"] = {"data_dir": args.data_dir}
    config = load_config(overrides=overrides)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.arch == "full":
        from .engine.full_size import build_full_size_model

        model = build_full_size_model(
            device,
            dtype,
            draft=getattr(args, "quality", "final") == "draft",
            depth=getattr(args, "depth", False),
            reference=getattr(args, "reference", False),
        )
    else:
        model = load_model(config.model, config.data_dir)
    return config, Engine(model, config.scheduler, config.long_video)


def _request(
    config, model, frames: int, size: int, steps: int, quality: str = "final", depth: bool = False, reference=False
):
    """The benchmark's request, through the server's own request resolution (a draft gets the draft's size,
    steps, scheduler and guidance from [draft], as a real draft request would). `depth`: also a depth map on
    every frame for the model's depth ControlNet (#16: Blender's depth beside line-art keyframes); `reference`:
    also a reference look of two images (a character sheet's views; #30) for the model's IP-Adapter."""
    import io

    from PIL import Image, ImageDraw

    from .request.resolve import resolve_request

    sketch = Image.new("RGB", (size, size))
    ImageDraw.Draw(sketch).rectangle((size // 8, size // 8, size // 2, size - size // 8), outline="white", width=2)
    png = io.BytesIO()
    sketch.save(png, format="PNG")
    fields = {
        "prompt": "a benchmark",
        "negative_prompt": "",
        "modality": next(iter(model.encoders)),
        "num_frames": frames,
        "width": size,
        "height": size,
        "steps": steps,
        "fps": 8,
        "quality": quality,
        "keyframes": [{"index": 0, "image": png.getvalue()}, {"index": frames - 1, "image": png.getvalue()}],
    }
    if depth:
        if "depth" not in model.controlnets:
            raise SystemExit("error: --depth needs a ControlNet named depth ([model.controlnets]; --arch full has one)")
        depth_map = Image.linear_gradient("L").resize((size, size)).convert("RGB")  # near = white at the bottom
        frame = io.BytesIO()
        depth_map.save(frame, format="PNG")
        fields["controlnets"] = [
            {"name": "depth", "frames": [{"index": i, "image": frame.getvalue()} for i in range(frames)]}
        ]
    if reference:
        views = []
        for colour in ("red", "navy"):
            view = Image.new("RGB", (512, 768), "grey")
            ImageDraw.Draw(view).ellipse((96, 96, 416, 672), fill=colour)
            buf = io.BytesIO()
            view.save(buf, format="PNG")
            views.append(buf.getvalue())
        fields["reference"] = {"images": views, "strength": 0.6}
    return resolve_request(
        fields,
        config,
        model.modalities,
        seed=0,
        draft_adapter=model.has_draft_adapter,
        controlnets=list(model.controlnets),
        ip_adapter=model.ip_adapter is not None,
    )


def _describe(request) -> str:
    """What the request runs: a draft names its own size, steps, scheduler and guidance."""
    text = f"{request.num_frames}×{request.width}²"
    if request.quality == "draft":
        asked = request.output_width or request.width
        text = f"draft of {request.num_frames}×{asked}² run at {request.width}², {request.scheduler}, "
        text += f"guidance {request.guidance_scale:g}"
    return f"{text}, {request.steps} steps"


def _bare_diffusers(engine, request):
    """The same request as a user calls diffusers directly, on the engine's very modules."""
    import torch
    from diffusers import AnimateDiffSparseControlNetPipeline

    from .engine.motion_modules import use_motion_modules
    from .engine.schedulers import build_scheduler

    m = engine.model
    pipe = AnimateDiffSparseControlNetPipeline(
        vae=m.vae,
        text_encoder=m.text_encoder,
        tokenizer=m.tokenizer,
        unet=m.unet,
        motion_adapter=None,
        controlnet=m.encoders[request.modality].to(m.device),
        scheduler=build_scheduler(request.scheduler, m.scheduler_config, engine.scheduler_overrides),
    )
    pipe.set_progress_bar_config(disable=True)
    step_times = []

    def call():
        torch.manual_seed(request.seed)
        return pipe(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt or None,
            num_frames=request.num_frames,
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            conditioning_frames=[k.image for k in request.keyframes],
            controlnet_frame_indices=[k.index for k in request.keyframes],
            controlnet_conditioning_scale=request.conditioning_scale,
            generator=torch.Generator(m.device).manual_seed(request.seed),
            output_type="np",
            callback_on_step_end=lambda p, i, t, kw: (step_times.append(time.perf_counter()), kw)[1],
        ).frames[0]

    def run():
        """A draft runs the draft motion module, swapped in as the engine does, and swapped back after."""
        if request.quality != "draft" or not m.has_draft_adapter:
            return call()
        use_motion_modules(m.unet, m.motion_adapters["draft"])
        try:
            return call()
        finally:
            use_motion_modules(m.unet, m.motion_adapters["final"])

    return run, step_times


def _timed(run, step_times, device) -> dict:
    import torch

    step_times.clear()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak_rss()
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss()
    gaps = [b - a for a, b in zip(step_times, step_times[1:], strict=False)]
    per_step = sum(gaps) / len(gaps) if gaps else total
    return {"total_s": total, "s_per_step": per_step, "peak_mib": peak / 2**20}


def speed(args: argparse.Namespace) -> int:
    """Seconds per step and achieved TFLOP/s of one job, ours beside bare diffusers on the same modules.
    A linear measurement script (set up, measure, print, write the row): kept whole, read top to bottom."""
    import dataclasses

    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    config, engine = _build(args)
    device = engine.device
    request = _request(config, engine.model, args.frames, args.size, args.steps, args.quality)

    # FLOPs of the whole job (text encoder, every step, VAE decode): counted on a 1- and a 2-step run.
    counts = []
    for steps in (1, 2):
        with FlopCounterMode(display=False) as counter:
            engine.generate(dataclasses.replace(request, steps=steps))
        counts.append(counter.get_total_flops())
    per_step_flops = counts[1] - counts[0]
    job_flops = counts[0] + (request.steps - 1) * per_step_flops

    ours_times: list[float] = []

    def ours():
        return engine.generate(request, on_step=lambda s, t: ours_times.append(time.perf_counter())).frames

    bare, bare_times = _bare_diffusers(engine, request)
    levers = dataclasses.replace(
        config.performance,
        vae_slicing=args.vae_slicing,
        channels_last=args.channels_last,
        fuse_qkv=args.fuse_qkv,
        compile=args.compile,
    )
    applied = []
    results = {}
    # Bare diffusers first, on the modules as diffusers ships them (its joint temporal norm); then ours: the
    # per-frame norm (docs/rgb-correctness.md) and our levers, which change the modules in place.
    from .engine.temporal_norm import use_joint_temporal_norm, use_per_frame_temporal_norm

    denoisers = [engine.model.unet, *engine.model.encoders.values()]
    for module in denoisers:
        use_joint_temporal_norm(module)
    for name, run, times in (("diffusers", bare, bare_times), ("ours", ours, ours_times)):
        if name == "ours":
            from .engine.performance import apply_performance

            if config.model.temporal_norm == "per_frame":
                for module in denoisers:
                    use_per_frame_temporal_norm(module)
            applied = apply_performance(engine.model, levers)
            if args.compile:
                ours()  # the first call compiles; not timed
        for _ in range(args.repeats):  # keep each side's best run
            r = _timed(run, times, device)
            if name not in results or r["total_s"] < results[name]["total_s"]:
                results[name] = r
    for r in results.values():
        r["tflops"] = job_flops / r["total_s"] / 1e12
    ratio = results["ours"]["total_s"] / results["diffusers"]["total_s"]
    dtype = str(engine.model.dtype).removeprefix("torch.")
    for name, r in results.items():
        print(
            f"{name:>9}: {r['s_per_step']:.3f} s/step  {r['total_s']:.2f} s total  peak {r['peak_mib']:.0f} MiB  "
            f"{r['tflops']:.3f} TFLOP/s achieved"
        )
    print(
        f"ours/diffusers time ratio {ratio:.3f}; job = {job_flops / 1e12:.2f} TFLOP "
        f"({per_step_flops / 1e12:.2f} per step)"
    )
    head = (
        f"### {datetime.date.today().isoformat()} · {_device_name(str(device))} · torch {torch.__version__} · "
        f"diffusers {diffusers.__version__} · speed · {args.arch}-size architecture, {_describe(request)}, {dtype}, "
        f"CFG {'on' if request.guidance_scale > 1 else 'off'} · ours with: {', '.join(applied) or 'no levers'}"
    )
    lines = [
        "",
        head,
        "",
        f"One job = {job_flops / 1e12:.2f} TFLOP (torch.utils.flop_counter), best of "
        f"{args.repeats}; peak = {'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'VmHWM'}.",
        "",
        "| run | s/step | total s | peak (MiB) | achieved TFLOP/s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {name} | {r['s_per_step']:.3f} | {r['total_s']:.2f} | {r['peak_mib']:.0f} | {r['tflops']:.3f} |"
        for name, r in results.items()
    ]
    lines += ["", f"ours/diffusers time ratio: {ratio:.3f}"]
    _append(Path(args.out), lines)
    return 0


def train(args: argparse.Namespace) -> int:
    """Training throughput of server/train on synthetic clips, full-size (random weights) or tiny.
    A linear measurement script (set up, measure, print, write the row): kept whole, read top to bottom."""
    import tempfile

    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .engine.models import resolve_device
    from .train.config import load_train_config
    from .train.data import write_synthetic_clips
    from .train.trainer import Trainer, full_size_frozen

    device = resolve_device(args.device)
    precision = args.mixed_precision or ("bf16" if device.type == "cuda" else "no")
    with tempfile.TemporaryDirectory() as tmp:
        clips = write_synthetic_clips(Path(tmp) / "clips", clips=2, frames=args.frames, size=args.size)
        config = load_train_config(
            overrides={
                "model": {"base": "tiny"},  # replaced by the full-size model below for --arch full
                "data": {"clips": str(clips), "frames": args.frames, "width": args.size, "height": args.size},
                "optim": {"batch_size": args.batch_size},
                "train": {
                    "output_dir": str(Path(tmp) / "run"),
                    "mixed_precision": precision,
                    "device": args.device,
                    "gradient_checkpointing": not args.no_checkpointing,
                },
            }
        )
        frozen = None
        if args.arch == "full":
            dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
            frozen = full_size_frozen(device, dtype if device.type != "cpu" else torch.float32)
        trainer = Trainer(config, data_dir=Path(args.data_dir) if args.data_dir else Path(tmp) / "data", frozen=frozen)
        with FlopCounterMode(display=False) as counter:
            losses = [trainer.train_step()]  # also the warm-up step: not timed
        step_flops = counter.get_total_flops()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        peak_reset = _reset_peak_rss()
        started = time.perf_counter()
        for _ in range(args.steps):
            losses.append(trainer.train_step())
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else (_peak_rss() if peak_reset else 0)
    clips_per_step = args.batch_size
    s_per_step = seconds / args.steps
    row = {
        "s_per_step": s_per_step,
        "clips_per_s": clips_per_step / s_per_step,
        "peak_mib": peak / 2**20,
        "tflops": step_flops / s_per_step / 1e12,
    }
    print(
        f"train: {row['s_per_step']:.2f} s/step, {row['clips_per_s']:.3f} clips/s, peak {row['peak_mib']:.0f} MiB, "
        f"{row['tflops']:.3f} TFLOP/s achieved ({step_flops / 1e12:.2f} TFLOP per step); losses "
        + ", ".join(f"{v:.4f}" for v in losses)
    )
    head = (
        f"### {datetime.date.today().isoformat()} · {_device_name(str(device))} · torch {torch.__version__} · "
        f"diffusers {diffusers.__version__} · train · {args.arch}-size architecture, batch {args.batch_size} × "
        f"{args.frames}×{args.size}², mixed precision {precision}, gradient checkpointing "
        f"{'off' if args.no_checkpointing else 'on'}"
    )
    lines = [
        "",
        head,
        "",
        f"One step = {step_flops / 1e12:.2f} TFLOP forward + backward (torch.utils.flop_counter); "
        f"{args.steps} timed steps after one warm-up; peak = "
        f"{'torch.cuda.max_memory_allocated' if device.type == 'cuda' else 'VmHWM'} during them.",
        "",
        "| s/step | clips/s | peak (MiB) | achieved TFLOP/s | losses |",
        "| ---: | ---: | ---: | ---: | --- |",
        f"| {row['s_per_step']:.2f} | {row['clips_per_s']:.3f} | {row['peak_mib']:.0f} | {row['tflops']:.3f} | "
        + ", ".join(f"{v:.3f}" for v in losses)
        + " |",
    ]
    _append(Path(args.out), lines)
    return 0


def _append(path: Path, lines: list[str]) -> None:
    if not path.exists():
        path.write_text("# Benchmarks\n\nWritten by `python -m server.bench`; newest last.\n")
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {path}")


def _counting_parser(sub, name: str, help: str, arch: str, frames: int, size: int) -> argparse.ArgumentParser:
    """A FLOP-counting command's parser with the arguments they all take (architecture, shot, device, output)."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--arch", choices=["full", "tiny"], default=arch)
    p.add_argument("--frames", type=int, default=frames)
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--data-dir", help="for --arch tiny: where the tiny model is kept")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("memory", "speed", "_point"):
        p = sub.add_parser(name)
        p.add_argument("--arch", choices=["full", "tiny"], default="full")
        p.add_argument("--size", type=int, default=128)
        p.add_argument("--steps", type=int, default=1)
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="auto")
        p.add_argument("--data-dir", help="for --arch tiny: where the tiny model is kept")
        p.add_argument("--vae-slicing", choices=["auto", "on", "off"], default="auto", help="ours")
        if name == "memory":
            p.add_argument("--frames", dest="frames_list", default="16,32,64,128")
            p.add_argument("--diffusers", action="store_true", help="also the bare diffusers call, per point")
        if name == "speed":
            p.add_argument("--frames", type=int, default=16)
            p.add_argument("--repeats", type=int, default=2)
            p.add_argument(
                "--quality",
                choices=["final", "draft"],
                default="final",
                help="draft: the request a draft resolves to ([draft]); --arch full adds a random AnimateLCM-shaped "
                "draft motion module (LCM scheduler), the tiny model has its own",
            )
            p.add_argument("--channels-last", action="store_true")
            p.add_argument("--fuse-qkv", action="store_true")
            p.add_argument("--compile", action="store_true", help="torch.compile the UNet (first run not timed)")
        if name != "_point":
            p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
        else:
            p.add_argument("--frames", type=int, required=True)
            p.add_argument("--runner", choices=["ours", "diffusers"], default="ours")
            p.add_argument("--levers", help="comma-separated: " + ", ".join(LEVERS) + " (the rest off)")
            p.add_argument("--flops", action="store_true", help="also count FLOPs, per step")
            p.add_argument("--frames-out", help="save the frames (.npy) to compare levers")
            p.add_argument("--count-as", help="count float32 tensors at this dtype's size (PeakTensorMemory)")
            p.add_argument("--depth", action="store_true", help="a depth ControlNet on every frame too")
            p.add_argument("--reference", action="store_true", help="a reference look (IP-Adapter) too")
    lv = sub.add_parser("levers", help="the memory levers side by side: peak, FLOPs, time, how far frames move")
    lv.add_argument("--arch", choices=["full", "tiny"], default="full")
    lv.add_argument("--frames", type=int, default=16)
    lv.add_argument("--size", type=int, default=512)
    lv.add_argument("--steps", type=int, default=2)
    lv.add_argument("--device", default="auto")
    lv.add_argument("--dtype", default="auto")
    lv.add_argument("--data-dir", help="for --arch tiny: where the tiny model is kept")
    lv.add_argument("--vae-slicing", choices=["auto", "on", "off"], default="on")
    lv.add_argument(
        "--count-as",
        help="with --dtype float32 on a CPU: count float32 tensors at this dtype's size (e.g. bfloat16), for a "
        "CPU without half-precision arithmetic (server/tensor_memory.py)",
    )
    lv.add_argument(
        "--sets",
        default=LEVER_SETS,
        help="lever sets separated by ';', each compared with the first",
    )
    lv.add_argument(
        "--depth",
        action="store_true",
        help="the job also has a depth ControlNet on every frame (#16; --arch full: SD1.5's ControlNet architecture)",
    )
    lv.add_argument(
        "--reference",
        action="store_true",
        help="the job also has a reference look of two images (#30; --arch full: ip-adapter-plus_sd15's shapes and "
        "CLIP ViT-H/14, the image encoder on the device only while it encodes)",
    )
    lv.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    fl = _counting_parser(sub, "flops", "FLOPs of a final and of each kind of draft at the same shot", "full", 16, 512)
    fl.add_argument("--steps", type=int, default=25, help="the final's steps")
    rt = _counting_parser(sub, "retake", "FLOPs of a retake of a span beside the whole shot", "tiny", 128, 64)
    rt.add_argument("--span", type=int, default=16, help="frames the retake generates anew, mid-shot")
    rt.add_argument("--steps", type=int, default=2)
    preview_help = "FLOPs of a live preview (linear, TAESD) beside a denoising step's"
    _counting_parser(sub, "preview", preview_help, "full", 16, 128)
    t = sub.add_parser("train", help="training steps of a new encoder (server/train) on synthetic clips")
    t.add_argument("--arch", choices=["full", "tiny"], default="full")
    t.add_argument("--frames", type=int, default=16)
    t.add_argument("--size", type=int, default=256)
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    t.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="default: bf16 on CUDA, else no")
    t.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off")
    t.add_argument("--device", default="auto")
    t.add_argument("--data-dir", help="for --arch tiny: where the tiny model is kept")
    t.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args(argv)
    if args.command == "_point":
        print(json.dumps(_point(args)))
        return 0
    if args.command == "train":
        return train(args)
    if args.command == "levers":
        return levers(args)
    if args.command == "flops":
        return flops(args)
    if args.command == "retake":
        return retake(args)
    if args.command == "preview":
        return preview(args)
    return memory(args) if args.command == "memory" else speed(args)


if __name__ == "__main__":
    sys.exit(main())
