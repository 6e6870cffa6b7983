"""Command line: `python -m server [serve]` starts the HTTP server; `python -m server generate` makes one clip;
`python -m server models` lists the configured weights; `python -m server download` fetches the default set.

Flags override the config file, which overrides server/defaults.toml.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .config import Config, ConfigError, load_config
from .request.model import MODALITIES

log = logging.getLogger("server")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config laid over server/defaults.toml")
    p.add_argument(
        "--model",
        metavar="tiny|WEIGHTS",
        help="'tiny' for the random-weight test model (no weights needed), or the SD1.5 base: a diffusers "
        "folder, a .safetensors/.ckpt file (or its name in the model folders), or a cached HF repo id",
    )
    p.add_argument("--motion-adapter", metavar="WEIGHTS", help="e.g. v3_sd15_mm.ckpt or a MotionAdapter folder")
    p.add_argument(
        "--encoder",
        action="append",
        default=[],
        metavar="MODALITY=WEIGHTS",
        help=f"SparseCtrl encoder for a modality ({', '.join(MODALITIES)}); repeatable",
    )
    p.add_argument(
        "--controlnet",
        action="append",
        default=[],
        metavar="NAME=WEIGHTS",
        help="a per-frame SD1.5 ControlNet by name, e.g. depth=control_v11f1p_sd15_depth.pth; repeatable",
    )
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", help="auto, float16, bfloat16, float32")
    p.add_argument("--data-dir", metavar="DIR", help="where jobs, videos and the tiny model are kept")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    server: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for flag, table, key in (
        ("host", server, "host"),
        ("port", server, "port"),
        ("data_dir", server, "data_dir"),
        ("log_level", server, "log_level"),
        ("model", model, "base"),
        ("motion_adapter", model, "motion_adapter"),
        ("device", model, "device"),
        ("dtype", model, "dtype"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            table[key] = value
    named_flags = (("encoder", "encoders", "MODALITY=WEIGHTS"), ("controlnet", "controlnets", "NAME=WEIGHTS"))
    for flag, key, takes in named_flags:
        named = {}
        for item in getattr(args, flag, []):
            name, sep, weights = item.partition("=")
            if not sep or not weights:
                raise ConfigError(f"--{flag} takes {takes}, got {item!r}")
            named[name] = weights
        if named:
            model[key] = named
    return {k: v for k, v in (("server", server), ("model", model)) if v}


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _load_engine(config: Config):
    from .engine.build import build_engine

    return build_engine(config)


def serve(config: Config) -> int:
    import uvicorn

    from .api.app import create_app
    from .api.security import is_loopback_name
    from .jobs.service import JobService

    token = config.server.token or os.environ.get("SPARSECTRL_TOKEN", "")
    if not is_loopback_name(config.server.host) and not token and not config.auth.artists:
        raise ConfigError(
            f"binding {config.server.host} lets other machines drive this GPU: set server.token in the config "
            "(or the SPARSECTRL_TOKEN environment variable) and give the same token to the add-on, or give each "
            "artist a token in [auth] artists"
        )
    cluster = config.cluster.backend == "ray"
    engine = None if cluster else _load_engine(config)  # on a cluster, the workers load the model
    data_dir = config.data_dir
    service = JobService(config, engine, data_dir)
    if cluster:
        service.worker.connect()
    app = create_app(service, config, token=token)
    if token or config.auth.artists:
        log.info(
            "API requests need 'Authorization: Bearer <token>' (%s)",
            ", ".join((["the shared token"] if token else []) + [f"{len(config.auth.artists)} artists' tokens"]),
        )
    if cluster:
        log.info(
            "serving on http://%s:%d (data dir %s); jobs run on the Ray cluster at %s",
            config.server.host,
            config.server.port,
            data_dir,
            config.cluster.address or "a private one started here",
        )
    else:
        tiny = " -- TINY RANDOM MODEL: output is noise, for testing the pipeline only" if engine.model.tiny else ""
        log.info(
            "serving model %s on http://%s:%d (data dir %s)%s",
            engine.model.name,
            config.server.host,
            config.server.port,
            data_dir,
            tiny,
        )
    uvicorn.run(
        app, host=config.server.host, port=config.server.port, log_level=config.server.log_level, access_log=False
    )
    return 0


def _lora_arg(item: str) -> dict[str, Any]:
    name, sep, scale = item.partition(":")
    try:
        return {"name": name, "scale": float(scale) if sep else None}
    except ValueError:
        raise ConfigError(f"--lora takes NAME or NAME:SCALE, got {item!r}") from None


def generate(config: Config, args: argparse.Namespace) -> int:
    from .engine.engine import random_seed
    from .jobs.execute import JobOutputs, run_job
    from .request.errors import RequestError
    from .request.resolve import resolve_request

    keyframes = []
    for item in args.keyframe:
        head, _, rest = item.partition(":")
        modality = head if head in MODALITIES else None  # rgb:0:look.png: a keyframe for another encoder
        index, sep, path = (rest if modality else item).partition(":")
        if not sep or not index.isdigit():
            raise ConfigError(f"--keyframe takes INDEX:IMAGE or MODALITY:INDEX:IMAGE, got {item!r}")
        try:
            keyframe = {"index": int(index), "image": Path(path).read_bytes()}
        except OSError as e:
            raise ConfigError(f"cannot read keyframe image {path}: {e.strerror}") from None
        keyframes.append(keyframe | ({"modality": modality} if modality else {}))
    fields = {
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
        "modality": args.modality,
        "num_frames": args.frames,
        "width": args.width,
        "height": args.height,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "conditioning_scale": args.conditioning_scale,
        "seed": args.seed,
        "scheduler": args.scheduler,
        "fps": args.fps,
        "keyframes": keyframes,
        "quality": "draft" if args.draft else None,
        "loras": [_lora_arg(item) for item in args.lora],
    }
    engine = _load_engine(config)
    try:
        request = resolve_request(
            fields,
            config,
            engine.modalities,
            seed=random_seed(),
            draft_adapter=engine.model.has_draft_adapter,
            loras=engine.model.loras,
            ip_adapter=engine.reference_adapter is not None,
        )
    except RequestError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    outputs = JobOutputs(video=Path(args.out), frames=Path(args.frames_dir) if args.frames_dir else None)
    with tqdm(total=request.steps, unit="step", desc="generating") as bar:
        result = run_job(engine, request, outputs, on_step=lambda step, total: bar.update(step - bar.n))
    print(
        f"wrote {outputs.video} ({request.num_frames} frames {request.width}x{request.height} at {request.fps} fps, "
        f"seed {result.seed}, {result.seconds:.1f} s)"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    p_serve = sub.add_parser("serve", help="start the HTTP server (the default)")
    for p in (parser, p_serve):
        _add_model_flags(p)
        p.add_argument("--host", help="interface to bind (default 127.0.0.1, this machine only)")
        p.add_argument("--port", type=int, help="port (default 8765)")

    m = sub.add_parser("models", help="list the configured weights: found where, size, loadable (loads nothing)")
    _add_model_flags(m)
    m.add_argument("--deep", action="store_true", help="read every file (safely) to check what it holds")
    m.add_argument("--json", action="store_true", help="print JSON")

    d = sub.add_parser("download", help="fetch weights into the Hugging Face cache (the only online command)")
    d.add_argument("names", nargs="*", metavar="NAME", help="what to fetch (default: the default set; see --list)")
    d.add_argument("--list", action="store_true", help="list what can be downloaded")

    g = sub.add_parser("generate", help="make one clip without HTTP")
    _add_model_flags(g)
    g.add_argument("--modality", required=True, choices=MODALITIES)
    g.add_argument(
        "--keyframe",
        action="append",
        required=True,
        metavar="INDEX:IMAGE",
        help="condition image for generated frame INDEX (0-based); repeatable; MODALITY:INDEX:IMAGE (e.g. "
        "rgb:0:look.png) sends it to that modality's encoder beside --modality's",
    )
    g.add_argument("--prompt", required=True)
    g.add_argument("--negative-prompt")
    g.add_argument("--frames", type=int, help="number of generated frames")
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance-scale", type=float)
    g.add_argument("--conditioning-scale", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--scheduler")
    g.add_argument("--fps", type=int)
    g.add_argument("--draft", action="store_true", help="quality = draft (quick, see [draft])")
    g.add_argument(
        "--lora", action="append", default=[], metavar="NAME[:SCALE]", help="a [model.loras] LoRA to use; repeatable"
    )
    g.add_argument("--out", required=True, metavar="CLIP.mp4")
    g.add_argument("--frames-dir", metavar="DIR", help="also write every frame as DIR/NNNN.png")
    return parser


def models(config: Config, args: argparse.Namespace) -> int:
    import json

    from .weights.inventory import inventory

    entries = inventory(config.model, deep=args.deep)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    elif not entries:
        print("no weights configured: set [model] base, motion_adapter and [model.encoders] (docs/weights.md)")
    for e in [] if args.json else entries:
        state = "missing" if not e.found else {True: "ok", False: "UNUSABLE", None: "found"}[e.loadable]
        size = f"{e.size_bytes / 2**20:,.0f} MiB" if e.size_bytes is not None else ""
        label = e.role if e.name == e.role else f"{e.role} {e.name}"
        extra = f", input: {e.condition_input}" if e.condition_input else ""
        print(f"{label:28s} {state:8s} {size:>10s}  {e.format or '':17s} {e.path or e.ref}")
        print(f"{'':28s} {e.detail}{extra}")
    bad = [e for e in entries if not e.found or e.loadable is False]
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "download":
        from .weights.download import describe, download

        if args.list:
            print(describe())
            return 0
        return download(args.names)
    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _setup_logging(config.server.log_level)

    from .engine.models import ModelLoadError

    try:
        if args.command == "generate":
            return generate(config, args)
        if args.command == "models":
            return models(config, args)
        return serve(config)
    except (ConfigError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
