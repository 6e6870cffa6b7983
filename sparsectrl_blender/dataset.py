"""Training clips rendered by Blender: RGB frames with their exact depth, for `python -m server.train`.

    python -m sparsectrl_blender.dataset SCENE.blend... --out DIR [--frames 16] [--stride 1] [--size 256]
        [--cameras scene|all] [--clips N] [--captions captions.json] [--engine workbench|cycles] [--samples 16]

Each clip is DIR/<scene>-<camera>-<first frame>/ with rgb/NNNN.png, cond/NNNN.png and caption.txt. The depth
images come from the add-on's own depth pass (blender/passes.py -> sparsectrl_passes/process.py depth_images),
each frame's range following the clip's frames exactly as the add-on's follows a shot's, so what the encoder
learns from is what the add-on will send it. Captions: captions.json ({"scene": "...", "scene/camera": "..."}),
else the scene name.
Works with bpy from PyPI and inside Blender (arguments after `--`). Exit 0, or `error: reason` and exit 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def clip_starts(frame_start: int, frame_end: int, frames: int, stride: int, limit: int = 0) -> list[int]:
    """First frames of the clips that fit in [frame_start, frame_end], one after another."""
    span = (frames - 1) * stride + 1
    starts = list(range(frame_start, frame_end - span + 2, span))
    return starts[:limit] if limit else starts


def caption_for(captions: dict[str, str], scene_name: str, camera_name: str) -> str:
    return captions.get(f"{scene_name}/{camera_name}") or captions.get(scene_name) or scene_name.replace("_", " ")


def _write_pngs(folder: Path, images: list) -> None:
    from .core.png import encode_png

    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        (folder / f"{i:04d}.png").write_bytes(encode_png(pixels))


def render_clips(blend: Path, out: Path, args: argparse.Namespace, captions: dict[str, str]) -> list[Path]:
    import bpy

    from .blender.passes import PassRenderer
    from .core.request import generation_size

    bpy.ops.wm.open_mainfile(filepath=str(blend))
    scene = bpy.context.scene
    cameras = [scene.camera] if args.cameras == "scene" else [o for o in scene.objects if o.type == "CAMERA"]
    cameras = [c for c in cameras if c is not None]
    if not cameras:
        raise ValueError(f"{blend}: no camera to render from")
    r = scene.render
    width, height = generation_size(r.resolution_x * r.pixel_aspect_x, r.resolution_y * r.pixel_aspect_y, args.size)
    starts = clip_starts(scene.frame_start, scene.frame_end, args.frames, args.stride, args.clips)
    if not starts:
        raise ValueError(f"{blend}: frames {scene.frame_start}-{scene.frame_end} hold no clip of {args.frames} frames")
    written = []
    for camera in cameras:
        scene.camera = camera  # this process never saves the file
        caption = caption_for(captions, Path(blend).stem, camera.name)
        with PassRenderer(scene, width, height) as renderer:
            for start in starts:
                frames = [start + i * args.stride for i in range(args.frames)]
                folder = out / f"{Path(blend).stem}-{camera.name}-{start:05d}"
                if args.engine == "workbench":
                    rgb = renderer.render("rgb", frames)
                else:
                    rgb = renderer.render_shaded(frames, args.samples)
                depth = renderer.render("depth", frames)
                _write_pngs(folder / "rgb", [rgb[f] for f in frames])
                _write_pngs(folder / "cond", [depth[f] for f in frames])
                (folder / "caption.txt").write_text(caption)
                source = {"blend": str(blend), "camera": camera.name, "frames": frames, "size": [width, height]}
                (folder / "source.json").write_text(json.dumps(source))
                written.append(folder)
                log.info("clip %s: frames %d-%d, %dx%d", folder.name, frames[0], frames[-1], width, height)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparsectrl_blender.dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("scenes", nargs="+", metavar="SCENE.blend")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (the motion module's window)")
    p.add_argument("--stride", type=int, default=1, help="timeline frames between kept frames")
    p.add_argument("--size", type=int, default=256, help="long side in pixels (scene aspect, multiples of 8)")
    p.add_argument("--cameras", choices=["scene", "all"], default="all", help="the scene camera or every camera")
    p.add_argument("--clips", type=int, default=0, help="at most this many clips per camera (0: all that fit)")
    p.add_argument("--captions", metavar="FILE", help='JSON: {"scene": "caption", "scene/camera": "caption"}')
    p.add_argument("--engine", choices=["workbench", "cycles"], default="workbench", help="RGB frames' renderer")
    p.add_argument("--samples", type=int, default=16, help="Cycles samples for --engine cycles")
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = build_parser().parse_args(argv)
    from .blender.passes import PassError

    try:
        if args.frames < 1 or args.stride < 1:
            raise ValueError("--frames and --stride must be at least 1")
        captions = json.loads(Path(args.captions).read_text()) if args.captions else {}
        out = Path(args.out)
        written = []
        for scene in args.scenes:
            if not Path(scene).is_file():
                raise ValueError(f"{scene}: no such .blend file")
            written += render_clips(Path(scene).resolve(), out, args, captions)
    except (PassError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} clips to {out}")
    return 0


if __name__ == "__main__":
    from .core.shutdown import exit_process

    exit_process(main())  # reports, then exits with main's status: bpy 4.2/4.5 may crash or hang after
