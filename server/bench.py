"""Benchmarks: python -m server.bench memory [--arch full|tiny] [--frames 16,32,64,128] [--size 128] [--steps 1]

`memory`: peak memory of one job as the clip grows, with context windows (server/engine/windowed.py). Each
point runs in a fresh process so its peak is its own: torch.cuda.max_memory_allocated on a GPU, the
process's peak RSS on a CPU. `--arch full` is the full-size SD1.5 + AnimateDiff v3 + SparseCtrl architecture
with random weights (the real model's memory and speed), `--arch tiny` the test model (a smoke run).
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


def _point(args: argparse.Namespace) -> dict:
    """One job of args.frames frames, in this process."""
    import psutil
    import torch
    from PIL import Image, ImageDraw

    from .config import load_config
    from .engine.engine import Engine
    from .engine.models import load_model, resolve_device, resolve_dtype
    from .engine.request import GenerationRequest, Keyframe
    from .engine.windows import context_windows

    overrides = {"model": {"base": "tiny"}} if args.arch == "tiny" else {}
    if args.data_dir:
        overrides["server"] = {"data_dir": args.data_dir}
    config = load_config(overrides=overrides)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.arch == "full":
        from .engine.full_size import build_full_size_model

        model = build_full_size_model(device, dtype)
    else:
        model = load_model(config.model, config.data_dir)
    engine = Engine(model, config.scheduler, config.long_video)
    import gc

    gc.collect()
    loaded_rss = psutil.Process().memory_info().rss
    # Building the model has its own peak; the job's peak is measured from here (Linux resets VmHWM).
    peak_reset = _reset_peak_rss()
    sketch = Image.new("RGB", (args.size, args.size))
    ImageDraw.Draw(sketch).rectangle((8, 8, args.size // 2, args.size - 8), outline="white", width=2)
    n = args.frames
    request = GenerationRequest(
        prompt="a benchmark",
        negative_prompt="",
        modality=next(iter(model.encoders)),
        num_frames=n,
        width=args.size,
        height=args.size,
        steps=args.steps,
        guidance_scale=7.5,
        conditioning_scale=1.0,
        seed=0,
        scheduler="ddim",
        fps=8,
        keyframes=[Keyframe(0, sketch), Keyframe(n - 1, sketch)],
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    started = time.perf_counter()
    result = engine.generate(request)
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        peak, over = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_allocated(device) - base
    else:
        peak = _peak_rss() if peak_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        over = peak - loaded_rss
    lv = config.long_video
    return {
        "frames": n,
        "windows": len(context_windows(n, lv.window_length, lv.window_overlap)),
        "peak_mib": peak / 2**20,
        "over_loaded_mib": over / 2**20,
        "seconds": seconds,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "shape": list(result.frames.shape),
    }


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


def memory(args: argparse.Namespace) -> int:
    import diffusers
    import torch

    rows = []
    for n in [int(x) for x in args.frames_list.split(",")]:
        cmd = [
            sys.executable,
            "-m",
            "server.bench",
            "_point",
            "--arch",
            args.arch,
            "--frames",
            str(n),
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
            "--dtype",
            args.dtype,
        ]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{row['frames']:>5} frames  {row['windows']:>3} windows  peak {row['peak_mib']:8.0f} MiB  "
            f"over the loaded model {row['over_loaded_mib']:7.0f} MiB  {row['seconds']:7.1f} s",
            flush=True,
        )
    first = rows[0]
    head = (
        f"### {datetime.date.today().isoformat()} · {_device_name(first['device'])} · torch {torch.__version__} · "
        f"diffusers {diffusers.__version__} · {args.arch}-size architecture, {args.size}×{args.size}, "
        f"{args.steps} step(s), {first['dtype']}, CFG on"
    )
    measure = (
        "torch.cuda.max_memory_allocated during the job"
        if first["device"].startswith("cuda")
        else "peak RSS of the process during the job (VmHWM reset after loading)"
    )
    lines = [
        "",
        head,
        "",
        f"Memory vs clip length with context windows (16 frames, overlap 4); peak = {measure}.",
        "",
        "| frames | windows | peak (MiB) | over the loaded model (MiB) | seconds |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['frames']} | {r['windows']} | {r['peak_mib']:.0f} | {r['over_loaded_mib']:.0f} | {r['seconds']:.1f} |"
        for r in rows
    ]
    out_path = Path(args.out)
    if not out_path.exists():
        out_path.write_text("# Benchmarks\n\nWritten by `python -m server.bench`; newest last.\n")
    with out_path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {out_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("memory", "_point"):
        p = sub.add_parser(name)
        p.add_argument("--arch", choices=["full", "tiny"], default="full")
        p.add_argument("--size", type=int, default=128)
        p.add_argument("--steps", type=int, default=1)
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="auto")
        p.add_argument("--data-dir", help="for --arch tiny: where the tiny model is kept")
        if name == "memory":
            p.add_argument("--frames", dest="frames_list", default="16,32,64,128")
            p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
        else:
            p.add_argument("--frames", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "_point":
        print(json.dumps(_point(args)))
        return 0
    return memory(args)


if __name__ == "__main__":
    sys.exit(main())
