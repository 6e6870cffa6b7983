"""The Blender side's speed: seconds per keyframe pass against a bare render, and the UI block per Generate.

    python -m sparsectrl_blender.bench_passes [SHOT.blend] [--scene NAME] [--frames 4] [--size 512x288]
        [--repeats 3] [--generate lineart] [--depth-every-frame N] [--out BENCHMARKS.md]

For each pass (depth, line art, RGB) at `--frames` keyframes spread over the shot:

- ours: the add-on's own code path (blender/passes.py render_passes: the scene copy, the engine set up, the
  compositor's File Output, the buffers read back and made into the condition image), seconds per keyframe
  with the scene copy's setup and cleanup shared out, warm (the first call is reported apart as cold);
- bare: what Blender itself needs for the same pass in the same process: a plain Scene.copy() set to the same
  engine, resolution and one sample (Cycles CPU, denoising off) with the view layer passes the pass is drawn
  from (depth: Z; line art: Z, Position and Cryptomatte object and material; RGB: Combined, Workbench with the
  scene's shading), rendered with bpy.ops.render.render(write_still=True) to a multilayer EXR (a PNG for RGB)
  after frame_set, without compositor, read-back or normalisation. "lineart vs Freestyle" also times Blender's
  own line art (Cycles at one sample with Freestyle, a white line set, PNG) for reference;
- the ratio ours/bare (the goal is at most 1.2).

Then the panel's Generate operator (bpy.ops.sparsectrl.generate, the add-on registered; the job goes to a server
address nothing answers, which the job thread finds out after the operator returned) is timed from call to
return: how long a Generate blocked Blender's UI when it rendered its passes in one go (before #29; still so
in the background), with its main-thread stages (PreparedJob.stage_seconds); then the same Generate as Blender
with a UI runs it, a pass render per timer tick: its longest block (the operator's call or one tick) and the
blocks' total.
With `--depth-every-frame N`, a second Generate is timed the same way with Depth every frame alone (Keyframes:
None, N generated frames): the depth pass at every generated frame, its cost per frame.

Without SHOT.blend it builds a scene with the traits of real shots: start frame 101, 29.97 fps, non-square
pixels (1440x1080 at 4:3 pixel aspect, 16:9 on screen), a 400 m floor seen at a grazing angle, a wall with a
sign, flat text before a backdrop, a sphere, a cylinder and cones with materials, two lights, a world, a dolly
of the camera and a moving sphere. SHOT.blend is never written. The table is printed and appended to --out as a
section (date, Blender version, CPU, the command). Exit 0, or `error: reason` and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import math
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODALITY_ORDER = ("depth", "lineart", "rgb")
FREESTYLE = "lineart vs Freestyle"
STAGES = ("scene copy", "frame_set", "render", "read", "process", "cleanup", "other")  # the table's order


# --- the scene ---------------------------------------------------------------------------------------------


def _mesh_object(name: str, build, location, collection, material=None):
    import bmesh
    import bpy

    mesh = bpy.data.meshes.new(name)
    bm = bmesh.new()
    build(bm)
    bm.to_mesh(mesh)
    bm.free()
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    obj.location = location
    if material is not None:
        mesh.materials.append(material)
    return obj


def _box(name, size, location, collection, material=None):
    import bmesh

    def build(bm):
        bmesh.ops.create_cube(bm, size=1.0)
        bmesh.ops.scale(bm, vec=size, verts=bm.verts)

    return _mesh_object(name, build, location, collection, material)


def _ball(bm):
    import bmesh

    bmesh.ops.create_uvsphere(bm, u_segments=48, v_segments=24, radius=0.4)


def _post(bm):
    import bmesh

    bmesh.ops.create_cone(bm, cap_ends=True, segments=32, radius1=0.15, radius2=0.15, depth=2.0)


def _tree(bm):
    import bmesh

    bmesh.ops.create_cone(bm, cap_ends=True, segments=24, radius1=1.0, radius2=0.0, depth=4.0)


def _material(name: str, colour):
    import bpy

    mat = bpy.data.materials.new(name)
    mat.diffuse_color = (*colour, 1.0)  # Workbench's material colour
    if mat.node_tree is None:  # 4.x; 5.x materials always have nodes
        mat.use_nodes = True
    mat.node_tree.nodes["Principled BSDF"].inputs["Base Color"].default_value = (*colour, 1.0)
    return mat


def build_scene():
    """Reset Blender to an empty file and build the benchmark shot (see the module's docstring)."""
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = "Bench shot"
    scene.frame_start, scene.frame_end = 101, 220
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 1440, 1080, 100
    r.pixel_aspect_x, r.pixel_aspect_y = 4.0, 3.0
    r.fps, r.fps_base = 30000, 1001
    scene.world = bpy.data.worlds.new("Sky")
    scene.world.color = (0.4, 0.5, 0.6)
    col = scene.collection
    mats = {n: _material(n, c) for n, c in (("ground", (0.3, 0.3, 0.25)), ("paint", (0.7, 0.2, 0.1)))}
    mats.update({n: _material(n, c) for n, c in (("metal", (0.6, 0.6, 0.7)), ("leaves", (0.1, 0.5, 0.1)))})
    _box("floor", (400, 400, 0.02), (0, 200, -0.01), col, mats["ground"])
    _box("wall", (1.6, 0.2, 2.4), (1.2, 8.1, 1.2), col, mats["paint"])
    _box("sign", (0.9, 0.01, 0.5), (1.2, 7.97, 1.5), col, mats["metal"])
    _box("backdrop", (1.5, 0.05, 1.0), (-1.2, 6.0, 1.3), col, mats["paint"])
    _box("crate", (0.6, 0.6, 0.6), (0.1, 5.0, 0.3), col, mats["ground"])
    font = bpy.data.curves.new("title", "FONT")
    font.body, font.size, font.extrude = "PREVIS", 0.35, 0.0
    font.align_x, font.align_y = "CENTER", "CENTER"
    text = bpy.data.objects.new("title", font)
    col.objects.link(text)
    text.location, text.rotation_euler = (-1.2, 5.955, 1.3), (math.pi / 2, 0, 0)
    sphere = _mesh_object("ball", _ball, (-0.6, 4.0, 0.4), col, mats["metal"])
    sphere.data.polygons.foreach_set("use_smooth", [True] * len(sphere.data.polygons))
    sphere.keyframe_insert("location", frame=101)
    sphere.location.x = 0.8
    sphere.keyframe_insert("location", frame=220)
    _mesh_object("post", _post, (2.4, 10.0, 1.0), col, mats["metal"])
    for i, (x, y) in enumerate(((-3.0, 14.0), (3.5, 18.0), (-5.0, 25.0), (6.0, 30.0))):
        _mesh_object(f"tree.{i}", _tree, (x, y, 2.0), col, mats["leaves"])
    for name, kind, location, energy in (("sun", "SUN", (0, 0, 10), 3.0), ("lamp", "AREA", (-2, 3, 3), 200.0)):
        light = bpy.data.objects.new(name, bpy.data.lights.new(name, kind))
        light.data.energy = energy
        light.location = location
        col.objects.link(light)
    cam = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    col.objects.link(cam)
    cam.location, cam.rotation_euler = (0, 0, 1.6), (math.radians(84), 0, 0)  # 6 degrees below the horizon
    scene.camera = cam
    cam.keyframe_insert("location", frame=101)
    cam.location = (0.6, 1.5, 1.6)  # a dolly in
    cam.keyframe_insert("location", frame=220)
    scene.frame_set(101)
    return scene


def spread_frames(start: int, end: int, count: int) -> list[int]:
    """`count` keyframes from `start` to `end`, the first and the last included."""
    if count <= 1:
        return [start]
    return sorted({round(start + i * (end - start) / (count - 1)) for i in range(count)})


# --- timing ------------------------------------------------------------------------------------------------


def time_ours(scene, modality: str, frames: list[int], width: int, height: int) -> dict:
    """One render_passes-equivalent call (PassRenderer, as the panel and the batch use it), timed whole."""
    from .blender.passes import PassRenderer

    started = time.perf_counter()
    renderer = PassRenderer(scene, width, height)
    with renderer:
        renderer.render(modality, frames)
    total = time.perf_counter() - started
    return {
        "total": total,
        "stages": dict(renderer.stage_seconds),
        "renders": list(renderer.seconds_per_keyframe),
    }


def _image_format(settings, multilayer: bool) -> None:
    if hasattr(settings, "media_type"):  # Blender 5.x
        settings.media_type = "MULTI_LAYER_IMAGE" if multilayer else "IMAGE"
    if multilayer:
        settings.file_format, settings.color_depth = "OPEN_EXR_MULTILAYER", "32"
    else:
        settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", "8"


def _bare_setup(copy, kind: str, width: int, height: int) -> None:
    """The copy set to render `kind` as Blender would by itself: the engine, size, one sample, the passes."""
    import bpy

    r = copy.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = width, height, 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.use_border = r.use_sequencer = r.use_compositing = r.use_multiview = False
    layer = copy.view_layers[0]
    for other in copy.view_layers:
        other.use = other == layer
    if kind == "rgb":
        r.engine = "BLENDER_WORKBENCH"
        _image_format(r.image_settings, multilayer=False)
        return
    r.engine = "CYCLES"
    copy.cycles.samples, copy.cycles.use_denoising, copy.cycles.device = 1, False, "CPU"
    if kind == FREESTYLE:
        r.use_freestyle = layer.use_freestyle = True
        settings = layer.freestyle_settings
        if not settings.linesets:
            settings.linesets.new("Lines")
        style = bpy.data.linestyles.new("SparseCtrl bench lines")  # the copy's own: the scene's are left alone
        style.color = (1.0, 1.0, 1.0)
        for lineset in settings.linesets:
            lineset.linestyle = style
        _image_format(r.image_settings, multilayer=False)
        return
    layer.use_pass_z = True
    if kind == "lineart":
        layer.use_pass_position = True
        layer.use_pass_cryptomatte_object = layer.use_pass_cryptomatte_material = True
        layer.pass_cryptomatte_depth = 2
    _image_format(r.image_settings, multilayer=True)


def time_bare(scene, kind: str, frames: list[int], width: int, height: int) -> dict:
    """Seconds per keyframe (frame_set and the render with its file written) of the bare render of `kind`."""
    import bpy

    folder = Path(tempfile.mkdtemp(prefix="sparsectrl_bare_"))
    copy = scene.copy()
    copy.name = "SparseCtrl bench (bare)"
    images_before, styles_before = set(bpy.data.images), set(bpy.data.linestyles)
    renders = []
    try:
        _bare_setup(copy, kind, width, height)
        for frame in frames:
            copy.render.filepath = str(folder / f"bare_{frame:05d}")
            started = time.perf_counter()
            copy.frame_set(frame)
            with bpy.context.temp_override(scene=copy):
                bpy.ops.render.render(write_still=True, scene=copy.name)
            renders.append(time.perf_counter() - started)
        if not any(folder.iterdir()):
            raise RuntimeError(f"the bare {kind} render wrote no file")
    finally:
        bpy.data.scenes.remove(copy)
        for image in set(bpy.data.images) - images_before:
            bpy.data.images.remove(image)
        for style in set(bpy.data.linestyles) - styles_before:
            bpy.data.linestyles.remove(style)
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
        scene.frame_set(scene.frame_current)
    return {"total": sum(renders), "renders": renders}


@contextlib.contextmanager
def blender_log_hidden():
    """Blender's own render log (a few lines per render, C-level prints) kept out of the output."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _median_run(runs: list[dict]) -> dict:
    """The run whose total is the median (the lower one of an even count): its stages add up to its total."""
    return sorted(runs, key=lambda r: r["total"])[(len(runs) - 1) // 2]


def _with_rest(run: dict, rest: str, per: int = 1) -> dict:
    stages = {stage: seconds / per for stage, seconds in run["stages"].items()}
    stages[rest] = max(0.0, run["total"] / per - sum(stages.values()))
    return stages


def measure_passes(scene, frames: list[int], width: int, height: int, repeats: int, kinds) -> dict:
    """Per pass: ours and bare, the first (cold) call of each apart, then `repeats` warm rounds, the two
    interleaved so that whatever else the machine runs weighs on both alike."""
    n = len(frames)
    results = {}
    for kind in kinds:
        modality = "lineart" if kind == FREESTYLE else kind
        with blender_log_hidden():
            cold_ours = time_ours(scene, modality, frames, width, height) if kind != FREESTYLE else None
            cold_bare = time_bare(scene, kind, frames, width, height)
            ours, bare = [], []
            for _ in range(repeats):
                if kind != FREESTYLE:
                    ours.append(time_ours(scene, modality, frames, width, height))
                bare.append(time_bare(scene, kind, frames, width, height))
        row = {
            "bare": _median([b["total"] / n for b in bare]),
            "bare_cold": cold_bare["total"] / n,
        }
        if kind == FREESTYLE:
            row["ours"] = results["lineart"]["ours"] if "lineart" in results else float("nan")
        else:
            row["ours"] = _median([o["total"] / n for o in ours])
            row["ours_cold"] = cold_ours["total"] / n
            middle = _median_run(ours)
            row["stages"] = _with_rest(middle, "other", per=n)
        row["ratio"] = row["ours"] / row["bare"]
        results[kind] = row
        print(f"{kind}: ours {row['ours']:.3f} s/keyframe, bare {row['bare']:.3f}, ratio {row['ratio']:.2f}")
    return results


def _dead_server() -> str:
    """An address on this machine that nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def measure_generate(
    scene, modality: str, frames: list[int], long_side: int, repeats: int, depth_frames: int = 0
) -> dict:
    """The panel's Generate operator, timed from call to return (the main thread: what blocks the UI), once
    cold and `repeats` times warm; each run's stages from its PreparedJob. `depth_frames`: Depth every frame
    alone (no keyframes) at that many generated frames instead."""
    import bpy

    from . import register, unregister

    register()
    ops = sys.modules[f"{__package__}.blender.operators"]
    try:
        props = scene.sparsectrl
        props.server_url, props.prompt, props.modality, props.size = _dead_server(), "benchmark", modality, long_side
        props.keyframe_source, props.frame_list = "LIST", ", ".join(map(str, frames))
        props.shot_range, props.frames_mode = "SCENE", "AUTO"
        props.depth_every_frame = bool(depth_frames)
        if depth_frames:
            props.keyframe_source, props.frames_mode, props.num_frames = "NONE", "FIXED", depth_frames
        runs = []
        for _ in range(repeats + 1):
            with blender_log_hidden(), contextlib.redirect_stdout(io.StringIO()):
                started = time.perf_counter()
                with bpy.context.temp_override(scene=scene):
                    result = bpy.ops.sparsectrl.generate()
                seconds = time.perf_counter() - started
            held = ops.STATUS.run or ops.STATUS.pending
            if held is None:
                raise RuntimeError(f"Generate returned {result}: {ops.STATUS.message}")
            if ops.STATUS.run is not None:  # the job thread: the dead server address fails it at once
                with blender_log_hidden(), contextlib.redirect_stdout(io.StringIO()):
                    ops.run_timers(30)
            ops.STATUS.run = ops.STATUS.pending = None
            prepared = held.prepared
            size = (prepared.body["width"], prepared.body["height"])
            encode = getattr(prepared, "encode_seconds", 0.0)  # the job thread's, done by now
            runs.append({"total": seconds, "stages": dict(prepared.stage_seconds), "size": size, "encode": encode})
            runs[-1].update(_stepped_generate(ops, scene))
    finally:
        unregister()
    warm = runs[1:]
    middle = _median_run(warm)
    stages = _with_rest(middle, "operator (rest)")
    return {
        "longest": _median([r["longest"] for r in warm]),
        "stepped": _median([r["stepped"] for r in warm]),
        "ticks": middle["ticks"],
        "render": _median([r["render"] for r in warm]),
        "total": middle["total"],
        "cold": runs[0]["total"],
        "stages": stages,
        "size": middle["size"],
        "frames": frames,
        "encode": middle["encode"],
        "depth_frames": len(prepared.dense_frames),
    }


def _stepped_generate(ops, scene) -> dict:
    """Generate as Blender with a UI runs it (operators.STEP_PASSES): the operator's call, then a timer tick per
    pass render until the job is sent; each call timed, as each blocks the UI. The longest, the total, the count."""
    import bpy

    blocks = []
    ops.STEP_PASSES = True
    try:
        with blender_log_hidden(), contextlib.redirect_stdout(io.StringIO()):
            started = time.perf_counter()
            with bpy.context.temp_override(scene=scene):
                bpy.ops.sparsectrl.generate()
            blocks.append(time.perf_counter() - started)
            while ops.STATUS.preparing is not None:
                started = time.perf_counter()
                ops._poll_prepare()
                blocks.append(time.perf_counter() - started)
            held = ops.STATUS.run or ops.STATUS.pending
            renders = list(held.prepared.pass_seconds) if held is not None else []
            if ops.STATUS.run is not None:
                ops.run_timers(30)
    finally:
        ops.STEP_PASSES = None
        ops.STATUS.run = ops.STATUS.pending = None
    return {"longest": max(blocks), "stepped": sum(blocks), "ticks": len(blocks), "render": max(renders, default=0.0)}


def _stepped_line(run: dict) -> str:
    return (
        f"Stepped, as Blender with a UI runs it (#29: a pass render per timer tick): the longest block "
        f"**{run['longest']:.3f} s** (its longest render {run['render']:.3f} s), all {run['ticks']} blocks "
        f"{run['stepped']:.2f} s; before, in one block: {run['total']:.2f} s."
    )


# --- the report --------------------------------------------------------------------------------------------


def cpu_name() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    model = model or platform.processor() or platform.machine()
    return f"CPU ({model}, {os.cpu_count()} cores)"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def section(
    args, scene_label: str, frames, size, passes: dict, generate: dict | None, command: str, depth: dict | None = None
) -> list[str]:
    import bpy

    width, height = size
    head = (
        f"### {datetime.date.today().isoformat()} · {cpu_name()} · Blender {bpy.app.version_string} · passes · "
        f"{width}×{height}, {_count(len(frames), 'keyframe')}, median of {args.repeats}"
    )
    before, after = args.load
    lines = [
        "",
        head,
        "",
        f"Command: `{command}`. Scene: {scene_label}; keyframes {frames}.",
        "",
        f"Load average (1 min) {before:.1f} before and {after:.1f} after on {os.cpu_count()} cores: above "
        "0.5, other work shared the CPU; ours and bare run interleaved, so it weighs on both.",
        "",
    ]
    lines += _passes_lines(passes) + (_generate_lines(args, generate) if generate else [])
    return lines + (_depth_every_frame_lines(args, depth, passes) if depth else [])


def _depth_every_frame_lines(args, depth: dict, passes: dict) -> list[str]:
    n, (gw, gh) = depth["depth_frames"], depth["size"]
    per_frame = depth["total"] / n
    lines = [
        "",
        f"Depth every frame ({n} generated frames at {gw}×{gh}, no keyframes): the Generate operator blocks "
        f"Blender's UI for {depth['total']:.2f} s (median of {args.repeats} warm; cold {depth['cold']:.2f} s), "
        f"**{per_frame:.3f} s per generated frame**, all main-thread stages included"
        + (f"; a depth keyframe above costs {passes['depth']['ours']:.3f} s." if "depth" in passes else "."),
        "",
        "| stage | seconds | per frame |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {stage} | {s:.3f} | {s / n:.3f} |" for stage, s in depth["stages"].items()]
    lines += ["", _stepped_line(depth)]
    if depth.get("encode"):
        lines += [
            "",
            f"Off the main thread: the {n} depth PNGs and the request {depth['encode']:.3f} s (the job thread).",
        ]
    return lines


def _passes_lines(passes: dict) -> list[str]:
    lines = [
        "ours = the add-on's render_passes (scene copy, compositor File Output, buffers read back, condition image) "
        "per keyframe, warm; bare = the same engine, size and one sample with the passes it is drawn from, "
        "rendered by bpy.ops.render.render(write_still=True) after frame_set, nothing else "
        "(sparsectrl_blender/bench_passes.py says exactly what).",
        "",
        "| pass | ours s/keyframe | bare s/keyframe | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {k} | {r['ours']:.3f} | {r['bare']:.3f} | {r['ratio']:.2f} |" for k, r in passes.items()]
    found = {s for r in passes.values() for s in r.get("stages", {})}
    stage_names = [s for s in STAGES if s in found] + sorted(found - set(STAGES))
    lines += [
        "",
        "Ours by stage, s/keyframe (the median run's); cold = the first call of each in the process, s/keyframe:",
        "",
        "| pass | " + " | ".join(stage_names) + " | cold ours | cold bare |",
        "| --- |" + " ---: |" * (len(stage_names) + 2),
    ]
    for kind, r in passes.items():
        if "stages" in r:
            cells = [f"{r['stages'].get(s, 0.0):.3f}" for s in stage_names]
        else:
            cells = ["–"] * len(stage_names)
        cells += [f"{r['ours_cold']:.3f}" if "ours_cold" in r else "–", f"{r['bare_cold']:.3f}"]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def _generate_lines(args, generate: dict) -> list[str]:
    gw, gh = generate["size"]
    lines = [
        "",
        f"Generate ({args.generate}, {_count(len(generate['frames']), 'keyframe')} at {gw}×{gh}): the operator "
        f"blocks Blender's UI for {generate['total']:.2f} s (median of {args.repeats} warm; the first, cold: "
        f"{generate['cold']:.2f} s). Its main-thread stages (the median run's):",
        "",
        "| stage | seconds | share |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {stage} | {s:.3f} | {100 * s / generate['total']:.0f} % |" for stage, s in generate["stages"].items()]
    lines += ["", _stepped_line(generate)]
    if generate.get("encode"):
        lines += [
            "",
            f"Off the main thread, after the operator returned: the passes' PNGs and the request "
            f"{generate['encode']:.3f} s (the job thread).",
        ]
    return lines


def append_section(path: Path, lines: list[str]) -> None:
    if not path.exists():
        path.write_text(
            "# Benchmarks\n\nWritten by `python -m server.bench` and `python -m sparsectrl_blender.bench_passes`; "
            "newest last.\n"
        )
    with path.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {path}")


# --- the command -------------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size {text!r}: write WIDTHxHEIGHT, e.g. 512x288") from None
    if width < 8 or height < 8:
        raise ValueError(f"--size {text!r}: at least 8x8")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparsectrl_blender.bench_passes", description=__doc__.split("\n\n")[0])
    p.add_argument("blend", nargs="?", metavar="SHOT.blend", help="a shot to measure (default: a scene built here)")
    p.add_argument("--scene", help="the shot scene in SHOT.blend (default: the active one)")
    p.add_argument("--frames", type=int, default=4, help="keyframes, spread over the shot's frame range")
    p.add_argument("--size", default="512x288", help="pass size WIDTHxHEIGHT (Generate: its long side)")
    p.add_argument("--repeats", type=int, default=3, help="warm rounds per measurement (the median is reported)")
    p.add_argument("--passes", default="depth,lineart,rgb,freestyle", help="which passes (freestyle: the reference)")
    p.add_argument("--generate", default="lineart", help="the modality of the timed Generate ('none': skip it)")
    p.add_argument(
        "--depth-every-frame",
        type=int,
        default=0,
        metavar="N",
        help="also time a Generate with Depth every frame alone at N generated frames (0: skip)",
    )
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the file the section is appended to")
    return p


def _open_scene(args):
    import bpy

    if not args.blend:
        return build_scene(), "built by the command (start frame 101, 29.97 fps, 4:3 pixels, 16:9)"
    path = Path(args.blend)
    if not path.is_file():
        raise ValueError(f"{path}: no such .blend file")
    with blender_log_hidden():
        bpy.ops.wm.open_mainfile(filepath=str(path.resolve()))
    scene = bpy.data.scenes.get(args.scene) if args.scene else bpy.context.scene
    if scene is None:
        raise ValueError(f"--scene {args.scene!r}: no such scene in {path}")
    return scene, f"{path.name}, scene '{scene.name}'"


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    size = parse_size(args.size)
    if args.frames < 1 or args.repeats < 1:
        raise ValueError("--frames and --repeats must be at least 1")
    if args.depth_every_frame < 0:
        raise ValueError("--depth-every-frame must be a number of generated frames (0: skip)")
    kinds = [FREESTYLE if k.strip() == "freestyle" else k.strip() for k in args.passes.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in (*MODALITY_ORDER, FREESTYLE)]
    if unknown or (args.generate != "none" and args.generate not in MODALITY_ORDER):
        raise ValueError(f"unknown pass {(unknown or [args.generate])[0]!r}: depth, lineart, rgb, freestyle")
    if FREESTYLE in kinds and "lineart" not in kinds:
        kinds.insert(kinds.index(FREESTYLE), "lineart")
    scene, label = _open_scene(args)
    frames = spread_frames(scene.frame_start, scene.frame_end, args.frames)
    if scene.camera is None:
        raise ValueError(f"the scene '{scene.name}' has no camera")
    load_before = os.getloadavg()[0]
    passes = measure_passes(scene, frames, *size, args.repeats, kinds)
    generate = None
    if args.generate != "none":
        generate = measure_generate(scene, args.generate, frames, max(size), args.repeats)
        print(f"Generate ({args.generate}): the UI is blocked {generate['total']:.2f} s", flush=True)
    depth = None
    if args.depth_every_frame:
        depth = measure_generate(scene, "depth", frames, max(size), args.repeats, depth_frames=args.depth_every_frame)
        print(f"Depth every frame: {depth['total'] / depth['depth_frames']:.3f} s per generated frame", flush=True)
    args.load = load_before, os.getloadavg()[0]
    command = "python -m sparsectrl_blender.bench_passes " + shlex.join(argv)
    lines = section(args, label, frames, size, passes, generate, command.strip(), depth)
    print("\n".join(lines))
    append_section(Path(args.out), lines)
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    from .blender.passes import PassError

    try:
        return run(argv)
    except (PassError, ValueError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from .core.shutdown import exit_process

    exit_process(main())  # reports, then exits with main's status: bpy 4.2/4.5 may crash or hang after
