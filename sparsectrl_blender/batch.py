"""Headless batch: the panel's code path without UI.

    python -m sparsectrl_blender.batch SHOT.blend --server URL [--modality lineart|depth|rgb]
        [--keyframes markers|1,24,48] [--frames N] [--prompt ...] [--passes-dir DIR] [--out OUT.blend]

Works with bpy from PyPI and inside Blender (`blender -b --python -m ... -- ARGS` style: arguments after
`--`). Settings not given as flags come from the panel settings saved in the .blend, then the defaults.
Exit 0 on success; otherwise one line `error: reason` and exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from .request import GenerationSettings

SETTINGS_PROP = "sparsectrl"  # where the panel's PropertyGroup lives on the scene


def _saved_settings(scene) -> dict:
    """The panel's settings saved in the .blend (ID properties, readable even when the add-on is not enabled)."""
    system = getattr(scene, "bl_system_properties_get", None)  # Blender 5.0 keeps bpy.props values there
    container = system() if system is not None else scene
    saved = container.get(SETTINGS_PROP) if container is not None else None
    if saved is None:
        return {}
    fields = {f.name for f in dataclasses.fields(GenerationSettings)}
    out = {k: saved[k] for k in saved.keys() if k in fields}
    # Enum properties are stored as their index; map them back to identifiers.
    enums = {
        "modality": ("lineart", "depth", "rgb"),
        "keyframe_source": ("MARKERS", "SELECTED_MARKERS", "CAMERA_KEYS", "EVERY_N", "LIST"),
        "frames_mode": ("AUTO", "FIXED"),
        "quality": ("final", "draft"),
        "shot_range": ("SCENE", "PREVIEW"),
    }
    for key, names in enums.items():
        if isinstance(out.get(key), int):
            out[key] = names[out[key]]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparsectrl_blender.batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shot", metavar="SHOT.blend")
    p.add_argument("--server", help="server URL (default: the one saved in the .blend, else http://127.0.0.1:8765)")
    p.add_argument("--token", help="the server's token, if it has one (default: SPARSECTRL_TOKEN)")
    p.add_argument("--modality", choices=["lineart", "depth", "rgb"])
    p.add_argument("--keyframes", help="'markers' (default), 'camera', 'every:N', or a list like 1,24,48")
    p.add_argument("--frames", type=int, help="generated frames (default: --motion-rate per second of shot)")
    p.add_argument("--motion-rate", type=float, help="generated frames per second of shot (default 8)")
    p.add_argument("--size", type=int, help="long side of the generated video in pixels")
    p.add_argument("--steps", type=int)
    p.add_argument("--draft", action="store_true", help="a quick draft (smaller, fewer steps, scaled up)")
    p.add_argument("--seed", type=int)
    p.add_argument("--loras", metavar="NAME[:SCALE],...", help="LoRAs the server has configured, e.g. ink:0.7")
    p.add_argument("--prompt")
    p.add_argument("--negative-prompt")
    p.add_argument("--preview-range", action="store_true", help="use the scene's preview range as the shot")
    p.add_argument("--passes-dir", metavar="DIR", help="write the passes sent, as frame_NNNN.png")
    p.add_argument("--out", metavar="OUT.blend", help="where to save the result (default: overwrite SHOT.blend)")
    return p


def settings_from(args: argparse.Namespace, saved: dict) -> GenerationSettings:
    values = dict(saved)
    flags = {
        "server_url": args.server,
        "modality": args.modality,
        "num_frames": args.frames,
        "size": args.size,
        "steps": args.steps,
        "seed": args.seed,
        "loras": getattr(args, "loras", None),
        "prompt": args.prompt,
        "negative_prompt": args.negative_prompt,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    if getattr(args, "draft", False):
        values["quality"] = "draft"
    if args.frames is not None:
        values["frames_mode"] = "FIXED"
    if args.motion_rate is not None:
        values["frames_mode"], values["motion_rate"] = "AUTO", args.motion_rate
    if args.preview_range:
        values["shot_range"] = "PREVIEW"
    if args.keyframes:
        spec = args.keyframes.strip().lower()
        if spec == "markers":
            values["keyframe_source"] = "MARKERS"
        elif spec == "camera":
            values["keyframe_source"] = "CAMERA_KEYS"
        elif spec.startswith("every:"):
            values["keyframe_source"], values["every_n"] = "EVERY_N", int(spec.partition(":")[2])
        else:
            values["keyframe_source"], values["frame_list"] = "LIST", args.keyframes
    return GenerationSettings(**values)


def run(argv: list[str]) -> int:
    import bpy

    from .client import Client, ServerError
    from .generation import JobRunner, import_result, prepare, write_passes

    args = build_parser().parse_args(argv)
    shot = Path(args.shot)
    if not shot.is_file():
        raise ValueError(f"no such .blend file: {shot}")
    bpy.ops.wm.open_mainfile(filepath=str(shot.resolve()))
    scene = bpy.context.scene
    settings = settings_from(args, _saved_settings(scene))

    client = Client(settings.server_url, token=args.token or os.environ.get("SPARSECTRL_TOKEN", ""))
    health = client.health()
    if settings.modality not in health["modalities"]:
        raise ServerError(
            f"the server has no {settings.modality} encoder; it offers: {', '.join(health['modalities']) or 'none'}"
        )
    prepared = prepare(scene, settings)
    for message in prepared.messages:
        print(f"warning: {message}", file=sys.stderr)
    if args.passes_dir:
        write_passes(prepared, Path(args.passes_dir))
    print(
        f"passes: {len(prepared.passes)} {settings.modality} keyframes "
        f"{sorted(prepared.mapping)} -> generated frames {sorted(prepared.mapping.values())}",
        flush=True,
    )

    runner = JobRunner(client, prepared.body)
    state = runner.run()
    if state.phase != "done":
        raise ServerError(state.error or f"the job ended {state.phase}")
    out = (Path(args.out) if args.out else shot).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Save as OUT first (Blender remaps the shot's relative paths), so the video path is relative to OUT.
    bpy.ops.wm.save_as_mainfile(filepath=str(out))
    strip = import_result(scene, prepared, state, settings, blend_path=str(out))
    bpy.ops.wm.save_mainfile()
    print(
        f"strip '{strip.name}' on channel {strip.channel}, frames {strip.frame_final_start}-"
        f"{strip.frame_final_end - 1}, video {strip.filepath}; saved {out}",
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .client import ServerError
    from .passes.render import PassError
    from .scene_keyframes import KeyframeError

    try:
        return run(argv)
    except (ServerError, PassError, KeyframeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
