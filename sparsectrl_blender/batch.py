"""Headless batch: the panel's code path without UI, for one shot or a whole sequence.

    python -m sparsectrl_blender.batch SHOT.blend [SHOT2.blend ...] [--shots LIST.txt] --server URL
        [--scene NAME] [--modality lineart|depth|rgb] [--keyframes every:N|markers|camera|1,24,48|none] [--frames N]
        [--depth-every-frame [--depth-strength S]] [--keyframe-images FRAME:PATH,... [--keyframe-images-as rgb]]
        [--pin] [--color-lock] [--retake-of STRIP_OR_JOB --span START:END] [--prompt ...]
        [--reference FILE[,FILE...] [--reference-strength S] [--reference-guidance START:END]]
        [--passes-dir DIR] [--out OUT.blend] [--owner NAME] [--priority N]

Works with bpy from PyPI and inside Blender: `blender -b --python-expr "import sys; from
bl_ext.user_default.sparsectrl_previs import batch; sys.exit(batch.main())" -- ARGS` (arguments after `--`).
The result is saved in the running Blender's format: a shot last saved by a Blender that cannot open it (a 4.2
shot run by 5.x) is refused before anything renders, unless --allow-newer-format. Settings not given as flags
come from the panel settings saved in the .blend, then the defaults. --prompt is required unless one is saved.

Several shots (files named, or a shot list: core/shot_list.py) are all checked first, then each
is opened, its passes rendered and its job submitted at once, so the server's queue holds the whole sequence;
then each shot waits on its own job and, when that is done, its file is opened again and its result saved.
Lines are prefixed with the shot; a shot that fails says why and the others go on.

SHOT.blend is never written: the result goes to SHOT_previs.blend beside it (or --out), with the preview on
the "<shot> previs" edit scene; the shot scene and its render settings stay as they were. A file that is
overwritten (--out naming an existing file, or SHOT.blend itself) is first copied byte for byte to FILE.blend1
(earlier backups move up to .blend2, .blend3, ...; none is deleted).
The result keeps the original's compression (none, gzip or zstd).
Exit 0 when every shot succeeded; otherwise one line `error: reason` per failure and exit 1 (2 for a bad flag).
Ctrl-C (SIGINT) or SIGTERM cancels the jobs sent on the server, says so in one line and exits 130 or 143.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gzip
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from .core.request import ENUMS, MODALITIES, GenerationSettings, identifiers, login_name, owner_name, parse_window
from .core.retake import parse_span
from .core.shot_list import plan_shots

SETTINGS_PROP = "sparsectrl"  # where the panel's PropertyGroup lives on the scene
POLL_SECONDS = 0.25  # between looks at the jobs
POLLS_PER_SECOND = 20  # at most, over all of a sequence's jobs: 100 shots are looked at every 5 s
# How long the server may be unreachable before the shots waiting on it fail: long enough for a head restart
# (its running jobs are requeued, docs/cluster.md), so an overnight sequence outlives one.
SERVER_LOST_AFTER = 120.0

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_OTHER_FORMATS = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"OpenEXR": "an EXR image",
    b"\x76\x2f\x31\x01": "an EXR image",
    b"PK\x03\x04": "a zip archive",
    b"%PDF": "a PDF",
}


# The oldest Blender that opens a file with this header (a .blend's first bytes). The 12-byte header before it
# ("BLENDER-v402") is opened by every Blender the manifest supports. Blender 5.0's header: 4.5 opens it, 4.4 and
# older answer "not a blend file". Which header this Blender writes is found by writing one (written_header).
HEADER_READERS = {b"BLENDER17-01": (4, 5)}
SUPPORTED_FROM = (4, 2)  # blender_version_min in addon_manifest.toml


class BatchError(ValueError):
    """A problem with the command line or the files; the message is the `error:` line."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM while the batch runs. Not an Exception, so no shot's error handling swallows it: it
    unwinds to Sequence.run, which cancels the jobs sent."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def blend_compression(path: Path) -> str:
    """'none', 'gzip' or 'zstd', from the file's first bytes; BatchError if it is no .blend file."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as e:
        raise BatchError(f"cannot read {path}: {e.strerror or e}") from None
    if head.startswith(b"BLENDER"):
        return "none"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    for magic, what in _OTHER_FORMATS.items():
        if head.startswith(magic):
            raise BatchError(f"{path} is {what}, not a .blend file")
    if not head:
        raise BatchError(f"{path} is empty, not a .blend file")
    raise BatchError(f"{path} is not a .blend file (it does not start like one)")


def check_complete(path: Path, compression: str) -> None:
    """A .blend ends with an ENDB block; a file cut short (an interrupted copy or sync) does not. Said plainly
    before Blender tries (its own words: 'Missing DNA block'). Uncompressed and gzip files; zstd: Blender's."""
    try:
        if compression == "none":
            with open(path, "rb") as f:
                f.seek(max(0, path.stat().st_size - 64))
                tail = f.read()
        elif compression == "gzip":
            tail = b""
            with gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    tail = (tail + chunk)[-64:]
        else:
            return
    except (OSError, EOFError) as e:
        raise BatchError(f"cannot open {path}: it is cut short or damaged ({e})") from None
    if b"ENDB" not in tail:
        raise BatchError(f"cannot open {path}: it is cut short (no end block; an interrupted copy?)")


def _saved_settings(scene) -> dict:
    """The panel's settings saved in the .blend (ID properties, readable even when the add-on is not enabled)."""
    system = getattr(scene, "bl_system_properties_get", None)  # Blender 5.0 keeps bpy.props values there
    container = system() if system is not None else scene
    saved = container.get(SETTINGS_PROP) if container is not None else None
    if saved is None:
        return {}
    fields = {f.name for f in dataclasses.fields(GenerationSettings)}
    out = {k: saved[k] for k in saved.keys() if k in fields}
    # Enum properties are stored as their index into the items (core/request.py); map them back to identifiers.
    for key, choices in ENUMS.items():
        names = identifiers(choices)
        if isinstance(out.get(key), int):
            out[key] = names[out[key]] if 0 <= out[key] < len(names) else names[0]
    for f in dataclasses.fields(GenerationSettings):  # a BoolProperty is saved as 0 or 1
        if f.type == "bool" and f.name in out:
            out[f.name] = bool(out[f.name])
    return out


def build_parser() -> argparse.ArgumentParser:
    """The batch's flags, in the groups `--help` shows: what to run, where to send it, which keyframes, what
    to generate, what to write."""
    p = argparse.ArgumentParser(
        prog="python -m sparsectrl_blender.batch",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_shot_flags(p.add_argument_group("shots"))
    _add_server_flags(p.add_argument_group("server"))
    _add_keyframe_flags(p.add_argument_group("keyframes"))
    _add_generation_flags(p.add_argument_group("generation"))
    _add_retake_flags(p.add_argument_group("retake"))
    _add_reference_flags(p.add_argument_group("look reference"))
    _add_output_flags(p.add_argument_group("output"))
    return p


def _add_shot_flags(p) -> None:
    """Which files and scenes are the shots."""
    p.add_argument("shots", nargs="*", metavar="SHOT.blend", help="one shot, or several: each gets its own job")
    p.add_argument(
        "--shots",
        dest="shots_file",
        metavar="LIST",
        help="a shot list: one .blend per line, each with its own flags if any (e.g. sh010.blend --seed 7); "
        "relative paths are relative to the list",
    )
    p.add_argument("--scene", metavar="NAME", help="the shot scene (default: the scene active when the file was saved)")
    p.add_argument("--preview-range", action="store_true", help="use the scene's preview range as the shot")


def _add_server_flags(p) -> None:
    """Where the job goes and how the shared queue treats it."""
    p.add_argument(
        "--server", help="server URL, its root (default: the one saved in the .blend, else http://127.0.0.1:8765)"
    )
    p.add_argument(
        "--token", help="your own token ([auth]) or the server's shared one, if it has one (default: SPARSECTRL_TOKEN)"
    )
    p.add_argument(
        "--owner",
        help="who the job is from, for a shared server's fair queue (default: your login name + ' (batch)'; with "
        "your own token, the name it carries)",
    )
    p.add_argument(
        "--priority",
        type=int,
        default=0,
        help="-10 to 10, higher runs first (default 0); e.g. -1 for an overnight farm run, so that artists' "
        "previews go ahead of it",
    )


def _add_keyframe_flags(p) -> None:
    """Which frames steer the generation, with what, and how strongly."""
    p.add_argument("--modality", choices=identifiers(MODALITIES))
    p.add_argument(
        "--keyframes",
        help="'markers' (default), 'camera', 'every:N', a list like 1,24,48, or 'none' (with --depth-every-frame)",
    )
    p.add_argument(
        "--depth-every-frame",
        action=argparse.BooleanOptionalAction,
        help="render depth at every generated frame for the server's depth ControlNet (docs/weights.md), beside "
        "the keyframes or alone (--keyframes none); default: as saved in the .blend",
    )
    p.add_argument("--depth-strength", type=float, help="the depth ControlNet's strength (default 1.0)")
    p.add_argument(
        "--keyframe-strengths",
        metavar="FRAME:S,...",
        help="strengths of single keyframes by timeline frame, e.g. 1001:0.5,1040:1.2 (others 1)",
    )
    p.add_argument(
        "--keyframe-images",
        metavar="FRAME:PATH,...",
        help="image files as keyframes at timeline frames (a storyboard panel, a painting: the look), e.g. "
        "1001://boards/010.png; // is beside the .blend",
    )
    p.add_argument(
        "--keyframe-images-as",
        choices=("condition", *identifiers(MODALITIES)),
        help="what the image files are: condition (default: --modality's kind, each in place of the render at its "
        "frame), or rgb (the look) / lineart / depth, on that encoder beside the rendered keyframes",
    )
    p.add_argument(
        "--rgb-look",
        choices=("none", "first", "every"),
        help="a quick RGB render at the first or every keyframe for the RGB encoder, beside the --modality "
        "keyframes (line art or depth: the structure; this: the look)",
    )
    p.add_argument(
        "--look-strength", type=float, help="the RGB encoder's strength for the look beside the keyframes (1.0)"
    )
    p.add_argument(
        "--keyframe-guidance",
        metavar="START:END",
        help="the part of the denoising the keyframes steer, fractions of the steps (default 0:1; line art: "
        "an end of 0.2-0.4 avoids the scribble encoder's stock-footage watermark)",
    )
    p.add_argument("--depth-guidance", metavar="START:END", help="the part of the denoising the depth steers")
    p.add_argument(
        "--look-guidance", metavar="START:END", help="the part of the denoising the RGB look steers (its own window)"
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        help="pin the RGB keyframes (image files, the RGB look): each one's generated frame is the picture itself",
    )
    p.add_argument(
        "--color-lock",
        action=argparse.BooleanOptionalAction,
        help="bring every frame's colours to the RGB keyframes' (needs RGB keyframes)",
    )


def _add_retake_flags(p) -> None:
    """Regenerate a span of an earlier take, keeping the rest of it frame for frame."""
    p.add_argument(
        "--retake-of",
        metavar="STRIP_OR_JOB",
        help="regenerate only --span of a take: a preview strip's name on the previs scene, or a job id; the rest "
        "of the take is kept frame for frame, the new take stacked above it (a new seed unless --seed)",
    )
    p.add_argument(
        "--span",
        metavar="START:END",
        help="with --retake-of: the timeline frames to retake (the previs scene's; for a job id, the shot's)",
    )


def _add_reference_flags(p) -> None:
    """The Look reference: images that keep a character and a style from shot to shot (the server's IP-Adapter)."""
    p.add_argument(
        "--reference",
        metavar="FILE[,FILE...]",
        help="reference images (PNG, JPEG, WebP; up to 8: a character sheet's views) in place of the one saved in "
        "the .blend (the shot's own, else its sequence's); 'none': no reference; // is beside the .blend",
    )
    p.add_argument(
        "--reference-strength",
        type=float,
        metavar="S",
        help="the IP-Adapter's scale, 0-2 (default: as saved, else 1.0; 0: the reference is not sent)",
    )
    p.add_argument("--reference-guidance", metavar="START:END", help="the part of the denoising the reference steers")


def _add_generation_flags(p) -> None:
    """What the server generates: length, size, steps, seed, prompt."""
    p.add_argument("--frames", type=int, help="generated frames, 1-256 (default: --motion-rate per second of shot)")
    p.add_argument("--motion-rate", type=float, help="generated frames per second of shot (default 8)")
    p.add_argument("--size", type=int, help="long side of the generated video in pixels, 64-1024")
    p.add_argument("--steps", type=int)
    p.add_argument("--draft", action="store_true", help="a quick draft (smaller, fewer steps, scaled up)")
    p.add_argument("--seed", type=int)
    p.add_argument("--loras", metavar="NAME[:SCALE],...", help="LoRAs the server has configured, e.g. ink:0.7")
    p.add_argument("--prompt")
    p.add_argument("--negative-prompt")


def _add_output_flags(p) -> None:
    """What is written, where, and what is refused."""
    p.add_argument(
        "--preview-scene", metavar="NAME", help="the edit scene the preview goes to (default: '<shot> previs')"
    )
    p.add_argument("--passes-dir", metavar="DIR", help="write the passes sent, as frame_NNNN.png")
    p.add_argument(
        "--refuse-empty",
        action="store_true",
        help="stop (exit 1) when a keyframe's pass (or a depth every frame pass) is empty",
    )
    p.add_argument(
        "--allow-newer",
        action="store_true",
        help="overwrite a .blend saved by a newer Blender than this one (it may lose what that Blender added)",
    )
    p.add_argument(
        "--allow-newer-format",
        action="store_true",
        help="write the result even when the Blender that last saved the shot cannot open what this one writes "
        "(e.g. a 4.2 shot run by Blender 5.x); without it such a shot is refused before anything renders",
    )
    p.add_argument(
        "--out",
        metavar="OUT.blend",
        help="where to save the result (default: SHOT_previs.blend beside SHOT.blend; SHOT.blend itself is never "
        "written unless named here, and then its bytes are kept as SHOT.blend1 first)",
    )


KEYFRAME_FORMS = "markers, camera, every:N, none or a list like 1,24,48"


def parse_keyframes(spec: str) -> dict:
    """--keyframes as panel settings; BatchError with the accepted forms for anything else."""
    text = spec.strip().lower()
    if text == "markers":
        return {"keyframe_source": "MARKERS"}
    if text == "camera":
        return {"keyframe_source": "CAMERA_KEYS"}
    if text == "none":
        return {"keyframe_source": "NONE"}
    if text.startswith("every:") or text.startswith("every"):
        n = text.partition(":")[2].strip()
        if not n.isdigit() or int(n) < 1:
            raise BatchError(f"--keyframes {spec}: write every:N with N a whole number of frames, e.g. every:12")
        return {"keyframe_source": "EVERY_N", "every_n": int(n)}
    from .core.frame_mapping import parse_frame_list

    try:
        frames = parse_frame_list(spec)
    except ValueError as e:
        raise BatchError(f"--keyframes {spec}: {e}; use {KEYFRAME_FORMS}") from None
    if not frames:
        raise BatchError(f"--keyframes is empty; use {KEYFRAME_FORMS}")
    return {"keyframe_source": "LIST", "frame_list": spec}


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
        "preview_scene": getattr(args, "preview_scene", None),
        "depth_every_frame": getattr(args, "depth_every_frame", None),
        "pin": getattr(args, "pin", None),
        "color_lock": getattr(args, "color_lock", None),
        "depth_strength": getattr(args, "depth_strength", None),
        "keyframe_images_as": {"condition": "CONDITION"}.get(args.keyframe_images_as, args.keyframe_images_as)
        if getattr(args, "keyframe_images_as", None)
        else None,
        "look_strength": getattr(args, "look_strength", None),
        "rgb_look": args.rgb_look.upper() if getattr(args, "rgb_look", None) else None,
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
        values.update(parse_keyframes(args.keyframes))
    for flag in ("keyframe_strengths", "keyframe_images"):
        if getattr(args, flag, None) is not None:
            values[flag] = getattr(args, flag)
    for flag, what in (("keyframe_guidance", "keyframe"), ("depth_guidance", "depth"), ("look_guidance", "look")):
        if (text := getattr(args, flag, None)) is not None:
            try:
                values[f"{flag}_start"], values[f"{flag}_end"] = parse_window(text, what)
            except ValueError as e:
                raise BatchError(f"--{flag.replace('_', '-')}: {e}") from None
    return GenerationSettings(**values)


def reference_from(args: argparse.Namespace, scene, settings: GenerationSettings):
    """The shot's Look reference (core/reference.LookReference, or None): --reference's files, else the one saved
    in the .blend (the shot's own, else its sequence's: blender/look.py), with --reference-strength and
    --reference-guidance over it. BatchError for settings the server would refuse."""
    from .blender.look import reference_for
    from .core.reference import LookReference, LookReferenceError, check, is_on, parse_files

    if args.reference is not None:
        reference = LookReference(parse_files(args.reference), source="--reference")
    else:
        reference = reference_for(scene, settings.preview_scene)
    if reference is None:
        return None
    changes = {}
    if args.reference_strength is not None:
        changes["strength"] = args.reference_strength
    if args.reference_guidance is not None:
        try:
            changes["guidance_start"], changes["guidance_end"] = parse_window(args.reference_guidance, "reference")
        except ValueError as e:
            raise BatchError(f"--reference-guidance: {e}") from None
    reference = dataclasses.replace(reference, **changes)
    try:
        check(reference)
    except LookReferenceError as e:
        raise BatchError(str(e)) from None
    return reference if is_on(reference) else None


def server_root(url: str) -> tuple[str, str]:
    """The server's root URL and a note when the URL named an API path (…/v1) instead."""
    stripped = url.strip().rstrip("/")
    for suffix in ("/v1/health", "/v1", "/docs"):
        if stripped.endswith(suffix):
            root = stripped[: -len(suffix)]
            return root, f"the server URL should be its root, without {suffix}: using {root}"
    return url, ""


def default_out(shot: Path) -> Path:
    return shot.with_name(f"{shot.stem}_previs.blend")


def check_out(out: Path) -> None:
    """Before anything is rendered or generated: OUT must be a file we can write."""
    if out.is_dir():
        raise BatchError(f"--out {out} is a folder; name the .blend file to write, e.g. {out / 'shot_previs.blend'}")
    if out.suffix.lower() != ".blend":
        raise BatchError(f"--out {out} should end in .blend")
    folder = out.parent
    if not folder.exists():  # a mistyped path is not made into folders
        missing = folder
        while not missing.parent.exists():
            missing = missing.parent
        raise BatchError(f"cannot write {out}: there is no folder {missing} (make it first, or check the path)")
    if not folder.is_dir():
        raise BatchError(f"cannot write {out}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise BatchError(f"cannot write {out}: permission denied")


def _quietly(action):
    """Run `action` with the process's stdout/stderr (Blender's C-level prints) captured; returns (result or
    exception, captured text)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            result = action()
        except Exception as e:  # noqa: BLE001 - handed back to the caller
            result = e
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        log.seek(0)
        return result, log.read().decode(errors="replace")


def open_blend(shot: Path) -> None:
    import bpy

    result, captured = _quietly(lambda: bpy.ops.wm.open_mainfile(filepath=str(shot)))
    if isinstance(result, Exception):
        reason = str(result).strip().splitlines()[-1] if str(result).strip() else type(result).__name__
        reason = reason.removeprefix("Error: ").strip()
        if "failed:" in reason:
            reason = reason.split("failed:", 1)[1].strip()
        raise BatchError(f"cannot open {shot}: {reason} (is the file complete?)")
    if not bpy.data.scenes:
        raise BatchError(f"cannot open {shot}: it holds no scene")


def pick_scene(name: str | None):
    """The shot scene: --scene NAME, else the active one (a previs scene stands for its shot)."""
    import bpy

    from .blender.strips import shot_scene_of

    if name:
        scene = bpy.data.scenes.get(name)
        if scene is None:
            names = ", ".join(repr(s.name) for s in bpy.data.scenes)
            raise BatchError(f"--scene {name!r}: no such scene; the file has {names}")
        return shot_scene_of(scene)
    return shot_scene_of(bpy.context.scene)


def missing_files() -> list[str]:
    """Linked libraries and images whose files are not there (passes then lack those objects or textures)."""
    import bpy

    out = []
    libs = [lib.filepath for lib in bpy.data.libraries if not os.path.exists(bpy.path.abspath(lib.filepath))]
    if libs:
        out.append(f"linked libraries not found (their objects are missing from the passes): {', '.join(libs)}")
    images = [
        img.filepath
        for img in bpy.data.images
        if img.source in {"FILE", "SEQUENCE", "MOVIE"}
        and img.packed_file is None
        and img.library is None
        and img.filepath
        and not os.path.exists(bpy.path.abspath(img.filepath))
    ]
    if images:
        out.append(
            f"images not found (RGB passes lack these textures): {', '.join(images[:5])}"
            + (f" and {len(images) - 5} more" if len(images) > 5 else "")
        )
    return out


def keep_backup(path: Path) -> Path:
    """Copy `path`'s bytes to PATH1 first, earlier backups moved up (PATH1 -> PATH2, ...; none deleted), as
    Blender numbers them: every version ever overwritten by this command survives. Returns PATH1."""
    n = 1
    while path.with_name(f"{path.name}{n}").exists():
        n += 1
    for k in range(n - 1, 0, -1):
        os.replace(path.with_name(f"{path.name}{k}"), path.with_name(f"{path.name}{k + 1}"))
    backup = path.with_name(f"{path.name}1")
    shutil.copy2(path, backup)
    return backup


def save_result(out: Path, compression: str) -> list[str]:
    """Save the open file as OUT once, keeping `compression`; an existing OUT is first copied byte for byte to
    OUT.blend1 (Blender's own backup, which would be of our save, is not made). Returns notes."""
    import bpy

    notes = []
    if out.exists():
        backup = keep_backup(out)
        notes.append(f"the earlier {out.name} is kept as {backup.name}")
    prefs = bpy.context.preferences.filepaths
    versions = prefs.save_version
    prefs.save_version = 0  # no OUT.blend1 of Blender's own
    try:
        bpy.ops.wm.save_as_mainfile(filepath=str(out), compress=compression == "zstd", relative_remap=True)
    finally:
        prefs.save_version = versions
    if compression == "gzip":  # Blender writes zstd only; a gzip original stays gzip (every Blender reads both)
        tmp = out.with_name(out.name + ".gz.partial")
        with open(out, "rb") as src, gzip.open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, out)
    return notes


@dataclasses.dataclass
class ShotRun:
    """One shot of the run, from its checked flags to its saved result."""

    args: argparse.Namespace
    shot: Path
    out: Path
    compression: str
    notes: list[str]
    label: str  # what its lines begin with: "" when the run has one shot, else "sh010.blend: "
    scene_name: str = ""
    settings: GenerationSettings | None = None
    reference: object = None  # core.reference.LookReference, when the shot has one
    prepared: object = None  # core.job.PreparedJob
    runner: object = None  # core.job.JobRunner, once submitted
    stamp: tuple[int, int] = (0, 0)  # the shot file's (mtime_ns, size) when its passes were rendered
    client: object = None  # core.client.Client of its server, once checked
    said: str = ""  # the job's phase last said

    def say(self, text: str, error: bool = False) -> None:
        stream = sys.stderr if error else sys.stdout
        print(("error: " if error else "") + self.label + text, file=stream, flush=True)

    def warn(self, text: str) -> None:
        print(f"warning: {self.label}{text}", file=sys.stderr, flush=True)


def run(argv: list[str]) -> int:
    """The batch's stages in order; everything that can be refused is, before anything is rendered or sent:
    for several shots, every file and flag first; then each shot's own checks before its passes."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.shots and not args.shots_file:
        parser.error("name a .blend file, several, or a shot list (--shots LIST)")  # exit 2, as for any flag
    plans = plan_shots(build_parser, args)
    several = len(plans) > 1
    shots = [_checked(plan, several) for plan in plans]
    _check_distinct(shots)
    return Sequence(shots).run()


def _checked(args, several: bool) -> ShotRun:
    notes: list[str] = []
    try:
        shot, out, compression = _check_arguments(args, notes)
    except BatchError as e:
        raise BatchError(f"{args.where}: {e}" if several else str(e)) from None
    return ShotRun(args, shot, out, compression, notes, f"{args.where}: " if several else "")


def _check_distinct(shots: list[ShotRun]) -> None:
    """No two shots of a run may write the same result, nor one the file another reads."""
    inputs = {s.shot: s for s in shots}
    outs: dict[Path, ShotRun] = {}
    for s in shots:
        if s.out in outs:
            raise BatchError(
                f"{outs[s.out].args.where} and {s.args.where} would both be saved as {s.out}: give one of them "
                "its own --out in the shot list"
            )
        outs[s.out] = s
        if s.out in inputs and inputs[s.out] is not s:
            raise BatchError(f"{s.args.where}: its result {s.out} is another shot of this run")


class Sequence:
    """Every shot submitted, then each waits on its own job; one shot's failure is said and the rest go on.
    The open file: bpy holds one; a shot's result is made in its own file, reopened if another was opened since."""

    def __init__(self, shots: list[ShotRun]):
        self.shots = shots
        self.several = len(shots) > 1
        self.loaded: Path | None = None  # the shot file open as read (no result added yet)
        self.failed: list[ShotRun] = []

    def run(self) -> int:
        try:
            for shot in self.shots:  # everything that can fail without rendering, for every shot, first
                self._step(shot, self._check)
            for shot in self.shots:
                if shot not in self.failed:
                    self._step(shot, self._submit)
            self._wait([s for s in self.shots if s.runner is not None and s not in self.failed])
        except Interrupted as stop:
            return self._interrupted(stop.signum)
        if not self.several:
            return 1 if self.failed else 0
        done = len(self.shots) - len(self.failed)
        if self.failed:
            names = ", ".join(s.args.where for s in self.failed)
            print(f"error: {len(self.failed)} of {len(self.shots)} shots failed: {names}", file=sys.stderr)
            return 1
        print(f"{done} shots done", flush=True)
        return 0

    def _step(self, shot: ShotRun, step) -> None:
        """One shot's step; for a run of one shot its error ends the command as before (main says it)."""
        if not self.several:
            try:
                step(shot)
            except BaseException:
                self.failed.append(shot)
                raise
            return
        try:
            step(shot)
        except Exception as e:  # noqa: BLE001 - said as the shot's error line; the other shots go on
            self.failed.append(shot)
            shot.say(error_text(e), error=True)

    def _open(self, shot: ShotRun) -> None:
        if self.loaded != shot.shot:
            self.loaded = None
            open_blend(shot.shot)
            self.loaded = shot.shot

    def _interrupted(self, signum: int) -> int:
        """SIGINT (Ctrl-C) or SIGTERM (a farm's timeout): the jobs sent are cancelled on the server, said in
        one line; exit 128 + the signal's number (130, 143), as a shell reports a process it stopped."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the cancelling short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        name = signal.Signals(signum).name
        running = [s for s in self.shots if s.runner is not None and s.runner.state.job_id and not s.runner.over]
        cancelled = [s.runner.state.job_id for s in running if s.runner.cancel_now()]
        left = [s.runner.state.job_id for s in running if s.runner.state.job_id not in cancelled]
        said = []
        if cancelled:
            said.append(f"cancelled job{'s' if len(cancelled) > 1 else ''} {', '.join(cancelled)} on the server")
        if left:
            said.append(f"could not reach the server to cancel job{'s' if len(left) > 1 else ''} {', '.join(left)}")
        said.append("nothing saved for them" if running else "no job was left running")
        print(f"interrupted ({name}): " + "; ".join(said), file=sys.stderr, flush=True)
        return 128 + signum

    def _check(self, shot: ShotRun) -> None:
        """The shot's file opened and everything checked that can fail without rendering: its format, scene,
        camera, keyframes, settings and what the server offers."""
        from .blender.generation import check
        from .blender.strips import check_target
        from .core.client import Client, ServerError
        from .core.reference import unavailable as reference_unavailable
        from .core.request import unavailable

        args = shot.args
        self._open(shot)
        _check_version(shot.shot, shot.out, args.allow_newer, shot.notes)
        _check_format(shot.shot, args.allow_newer_format, shot.warn)
        scene = pick_scene(args.scene)
        shot.scene_name = scene.name
        settings = settings_from(args, _saved_settings(scene))
        if not args.server:
            settings = dataclasses.replace(settings, server_url=server_root(settings.server_url)[0])
        _check_known_frames(args, settings)
        if args.retake_of and args.seed is None:  # a retake is another roll of the span
            settings = dataclasses.replace(settings, seed=random.randrange(0, 2**31 - 1))
        shot.settings = settings
        check_target(scene, settings.preview_scene)
        shot.reference = reference_from(args, scene, settings)
        check(scene, settings, shot.reference)
        shot.client = Client(settings.server_url, token=args.token or os.environ.get("SPARSECTRL_TOKEN", ""))
        if why := unavailable(settings, shot.client.health()):
            raise ServerError(why)
        if shot.reference is not None and (why := reference_unavailable(_models(shot.client))):
            raise ServerError(why)

    def _submit(self, shot: ShotRun) -> None:
        from .core.job import JobRunner

        args = shot.args
        self._open(shot)
        stat = shot.shot.stat()
        shot.stamp = (stat.st_mtime_ns, stat.st_size)
        scene = bpy_scene(shot.scene_name)
        settings = shot.settings
        prepared, client = _prepare(scene, settings, args, shot.notes, shot.label, shot.reference)
        prepared.images = {}  # sent as PNGs (prepared.passes); a sequence's frames are not held meanwhile
        prepared.body["priority"] = args.priority
        if args.owner is not None and (owner := owner_name(args.owner)):
            prepared.body["owner"] = owner
        default_owner = owner_name(f"{login_name() or 'farm'} (batch)")  # not sent where the token names an artist
        shot.prepared = prepared
        shot.runner = JobRunner(
            client, prepared.body, poll_seconds=POLL_SECONDS, lost_after=SERVER_LOST_AFTER, default_owner=default_owner
        )
        state = shot.runner.submit()
        if state.phase == "failed":
            from .core.client import ServerError

            raise ServerError(state.error or "the job was not accepted")
        if self.several:
            shot.said = state.phase
            shot.say(f"job {state.job_id} {state.phase}")

    def _wait(self, waiting: list[ShotRun]) -> None:
        while waiting:
            for shot in list(waiting):
                if shot.runner.poll():
                    waiting.remove(shot)
                    self._step(shot, self._finish)
                elif self.several and shot.runner.state.phase != shot.said:
                    shot.said = shot.runner.state.phase
                    worker = shot.runner.state.job.get("worker")
                    shot.say(f"job {shot.runner.state.job_id} {shot.said}" + (f" on {worker}" if worker else ""))
            if waiting:
                time.sleep(max(POLL_SECONDS, len(waiting) / POLLS_PER_SECOND))

    def _finish(self, shot: ShotRun) -> None:
        """The video in: the shot's file as read (reopened if need be), the strip added, the result saved."""
        import bpy

        from .blender.generation import import_result
        from .core.client import ServerError

        state = shot.runner.state
        if state.phase == "cancelled":
            raise ServerError(f"job {state.job_id} was cancelled on the server (not by this batch); nothing saved")
        if state.phase != "done":
            raise ServerError(state.error or f"the job ended {state.phase}")
        if self.loaded != shot.shot:
            stat = shot.shot.stat()
            if (stat.st_mtime_ns, stat.st_size) != shot.stamp:
                shot.warn(
                    f"{shot.shot.name} was saved again since its passes were rendered: the preview shows the "
                    "blocking as it was then, and goes into the file as it is now"
                )
            self._open(shot)
        scene = bpy.data.scenes.get(shot.scene_name)
        if scene is None:
            raise BatchError(f"the scene {shot.scene_name!r} is no longer in {shot.shot.name}")
        self.loaded = None  # the open file gets the result: not the shot as read any more
        # The strip's path is relative to the file as it is now (the shot); saving as OUT remaps it with the
        # shot's own relative paths.
        strip = import_result(
            scene, shot.prepared, state, shot.settings, blend_path=bpy.data.filepath, video_beside=str(shot.out)
        )
        state.video = None  # saved beside the result: not held while the others wait
        target = strip.id_data
        for note in save_result(shot.out, shot.compression):
            shot.say(note)
        shot.say(
            f"strip '{strip.name}' on scene '{target.name}' channel {strip.channel}, frames {strip.frame_final_start}-"
            f"{strip.frame_final_end - 1}, video {strip.filepath}; saved {shot.out}"
        )


def _models(client) -> dict:
    """GET /v1/models; {} from a server without it (older than its models listing: no reference either)."""
    from .core.client import ServerError

    try:
        return client.models()
    except ServerError as e:
        if e.status == 404:
            return {}
        raise


def _check_arguments(args, notes: list[str]) -> tuple[Path, Path, str]:
    """(the shot, the result file, the shot's compression): flags and files checked before Blender reads any."""
    if not -10 <= args.priority <= 10:
        raise BatchError(f"--priority must be between -10 and 10 (got {args.priority})")
    for flag in ("frames", "size", "steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise BatchError(f"--{flag} must be at least 1 (got {value})")
    if args.keyframes:
        parse_keyframes(args.keyframes)
    if (args.retake_of is None) != (args.span is None):
        raise BatchError("--retake-of and --span go together: the take (a strip or job id) and START:END to retake")
    if args.span is not None:
        try:
            parse_span(args.span)
        except ValueError as e:
            raise BatchError(str(e)) from None
    if args.server:
        args.server, note = server_root(args.server)
        notes.append(note)
    if args.reference_strength is not None and not 0.0 <= args.reference_strength <= 2.0:
        raise BatchError(f"--reference-strength must be 0 to 2 (got {args.reference_strength:g})")
    if args.reference is not None:  # relative to where the command runs (a shot list's lines: to the list)
        from .core.reference import parse_files

        files = parse_files(args.reference)
        args.reference = ",".join(f if f.startswith("//") else str(Path(f).expanduser().absolute()) for f in files)
    shot = Path(args.shot).expanduser()
    if not shot.exists():
        raise BatchError(f"no such .blend file: {shot}")
    if shot.is_dir():
        raise BatchError(f"{shot} is a folder, not a .blend file")
    shot = shot.resolve()
    compression = blend_compression(shot)
    check_complete(shot, compression)
    out = Path(args.out).expanduser().resolve() if args.out else default_out(shot)
    check_out(out)
    return shot, out, compression


def _check_version(shot: Path, out: Path, allow_newer: bool, notes: list[str]) -> None:
    """A file saved by a newer Blender is never overwritten without --allow-newer; otherwise it is said."""
    import bpy

    newer = tuple(bpy.data.version) > tuple(bpy.app.version_file)
    saved_by = ".".join(map(str, tuple(bpy.data.version)[:2]))
    this = ".".join(map(str, tuple(bpy.app.version)[:3]))
    if newer and out == shot and not allow_newer:
        raise BatchError(
            f"{shot.name} was saved by a newer Blender ({saved_by}) than this one ({this}); overwriting it may lose "
            f"what {saved_by} added: write to a new --out file, or pass --allow-newer"
        )
    if newer:
        notes.append(
            f"{shot.name} was saved by Blender {saved_by}, newer than this {this}: what {saved_by} added may be "
            f"missing from {out.name} (the original is not touched)"
        )


def _check_known_frames(args, settings: GenerationSettings) -> None:
    """--pin and --color-lock act on RGB keyframes: without any, said before anything renders."""
    from .core.request import rgb_keyframes

    for flag in ("pin", "color_lock"):
        if getattr(args, flag, None) and not rgb_keyframes(settings):
            raise BatchError(
                f"--{flag.replace('_', '-')} needs RGB keyframes: --modality rgb, --keyframe-images-as rgb or "
                "--rgb-look first|every"
            )


def resolve_retake(scene, settings: GenerationSettings, spec: str, span: tuple[int, int], client):
    """--retake-of and --span as a Retake: a preview strip of that name (or showing that job) on the previs
    scene, else the job of that id on the server. BatchError with a sentence otherwise."""
    from .blender.scene_keyframes import shot_range
    from .blender.strips import check_target, job_of, preview_strips, previs_scene_name, take_of_strip
    from .core.client import ServerError
    from .core.retake import plan_retake, take_from_job

    target = check_target(scene, settings.preview_scene)
    strips = preview_strips(target) if target is not None else []
    strip = next((s for s in strips if s.name == spec), None) or next((s for s in strips if job_of(s) == spec), None)
    try:
        if strip is not None:
            take = take_of_strip(strip, scene)
        else:
            try:
                job = client.job(spec)
            except ServerError as e:
                if e.status != 404:
                    raise
                where = target.name if target is not None else previs_scene_name(scene)
                raise BatchError(
                    f"--retake-of {spec}: no preview strip of that name on '{where}', nor a job of that id on the "
                    "server"
                ) from None
            take = take_from_job(job, shot_range(scene, settings)[0])
        return plan_retake(take, *span)
    except ValueError as e:
        raise BatchError(f"--retake-of {spec}: {e}") from None


@functools.cache
def written_header() -> bytes:
    """The header this Blender writes .blend files with: a library file of one new, empty text written and read
    back (a feature check, not a version table; bpy 4.2 crashes writing an empty set). The text is removed."""
    import bpy

    text = bpy.data.texts.new("sparsectrl header probe")
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "header.blend")
            bpy.data.libraries.write(path, {text}, compress=False)
            with open(path, "rb") as f:
                return f.read(17)
    finally:
        bpy.data.texts.remove(text)


def oldest_reader(header: bytes, running: tuple[int, int]) -> tuple[int, int] | None:
    """The oldest Blender that opens files with `header`; None: any Blender the manifest supports."""
    if header.startswith(b"BLENDER") and header[7:8] in (b"-", b"_"):
        return None
    for prefix, version in HEADER_READERS.items():
        if header.startswith(prefix):
            return version
    return running  # a header newer than this table: only this Blender's line is known to open it


def _check_format(shot: Path, allow: bool, warn) -> None:
    """Before anything renders: a shot whose Blender cannot open what this one writes is refused unless
    `allow` (then said); a shot from before the supported Blenders is said (`warn`, one line)."""
    import bpy

    saved, running = tuple(bpy.data.version)[:2], tuple(bpy.app.version)[:2]
    reader = oldest_reader(written_header(), running)
    dotted = ".".join
    saved_by, this = dotted(map(str, saved)), dotted(map(str, tuple(bpy.app.version)[:3]))
    supported = dotted(map(str, SUPPORTED_FROM))
    unreadable = reader is not None and saved < reader
    if saved < SUPPORTED_FROM:
        warn(
            f"{shot.name} was last saved by Blender {saved_by}, older than the {supported} the add-on supports"
            f": the result is a Blender {this} file" + (f", which {saved_by} cannot open" if unreadable else "")
        )
    elif unreadable and not allow:
        raise BatchError(
            f"{shot.name} was last saved by Blender {saved_by}, which cannot open what this Blender {this} writes "
            f"(only {dotted(map(str, reader))} and later do): run the batch in the artist's Blender (README), or pass "
            "--allow-newer-format; nothing was written"
        )
    elif unreadable:
        warn(f"--allow-newer-format: the result is a Blender {this} file, which {saved_by} cannot open")


def bpy_scene(name: str):
    """The scene checked before, in the file as opened again."""
    import bpy

    scene = bpy.data.scenes.get(name)
    if scene is None:
        raise BatchError(f"the scene {name!r} is no longer in the file")
    return scene


def _prepare(scene, settings: GenerationSettings, args, notes: list[str], label: str = "", reference=None):
    """(the passes and request, a client of the server): the target and the server checked first, the passes
    rendered, every warning said once. `reference`: the shot's Look reference (reference_from)."""
    from .blender.generation import prepare
    from .blender.strips import check_target
    from .core.client import Client, ServerError
    from .core.job import write_passes
    from .core.request import unavailable

    check_target(scene, settings.preview_scene)  # a target that cannot be: said before rendering
    notes.extend(missing_files())
    client = Client(settings.server_url, token=args.token or os.environ.get("SPARSECTRL_TOKEN", ""))
    health = client.health()
    if why := unavailable(settings, health):
        raise ServerError(why)
    retake = None
    if args.retake_of:
        retake = resolve_retake(scene, settings, args.retake_of, parse_span(args.span), client)
        first, last = retake.timeline
        print(
            f"{label}retake of {retake.take.name}: frames {first}-{last} (generated {retake.frames[0]}-"
            f"{retake.frames[1]} of {retake.take.num_frames}), seed {settings.seed}",
            flush=True,
        )
    # Blender's own render log repeats per keyframe (a missing texture: one line per render); ours is kept.
    prepared, captured = _quietly(lambda: prepare(scene, settings, retake, reference))
    for line in captured.splitlines():
        if line.startswith(("INFO ", "WARNING ", "ERROR ")):
            print(label + line, file=sys.stderr)
    if isinstance(prepared, Exception):
        raise prepared
    for message in [n for n in notes if n] + prepared.messages:
        print(f"warning: {label}{message}", file=sys.stderr, flush=True)
    if (prepared.empty_frames or prepared.empty_dense_frames) and args.refuse_empty:
        raise BatchError(f"nothing sent (--refuse-empty): {prepared.empty_message or prepared.empty_dense_message}")
    prepared.encode()
    if args.passes_dir:
        write_passes(prepared, Path(args.passes_dir))
    sent = []
    if prepared.passes:  # the request's modality's keyframes only: an image file beside them is the look's
        frames = sorted(prepared.passes)
        sent.append(
            f"{len(frames)} {prepared.body['modality']} keyframes {frames} -> generated frames "
            f"{[prepared.mapping[f] for f in frames]}"
        )
    for modality, passes in prepared.further_passes.items():  # the look's group, beside the keyframes
        sent.append(f"{len(passes)} {modality} keyframes {sorted(passes)} beside them")
    if prepared.reference:  # files and hashes, as the strip records them
        files = prepared.reference["files"]
        sent.append(f"the Look reference of {prepared.reference['source']} ({', '.join(files)})")
    if prepared.dense_frames:
        sent.append(
            f"depth at {len(prepared.dense_frames)} generated frames (timeline {prepared.dense_frames[0]}-"
            f"{prepared.dense_frames[-1]})"
        )
    print(
        f"{label}scene '{scene.name}': {' and '.join(sent)} (passes rendered in {sum(prepared.pass_seconds):.2f} s)",
        flush=True,
    )
    return prepared, client


def error_text(e: Exception) -> str:
    """What follows `error: ` for a failure: its own message for the failures we expect, else its type too
    (SPARSECTRL_DEBUG=1 raises it instead, for the traceback)."""
    from .blender.passes import PassError
    from .blender.scene_keyframes import KeyframeError
    from .core.client import ServerError

    if isinstance(e, (ServerError, PassError, KeyframeError, ValueError, OSError, RuntimeError)):
        return str(e)
    if os.environ.get("SPARSECTRL_DEBUG"):
        raise e
    return f"unexpected {type(e).__name__}: {e} (SPARSECTRL_DEBUG=1 shows where)"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    handlers = {}
    if threading.current_thread() is threading.main_thread():  # Ctrl-C and a farm's `timeout` cancel the jobs
        handlers = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run(argv)
    except Interrupted as stop:  # before any job was sent
        print(f"interrupted ({signal.Signals(stop.signum).name}): no job was sent", file=sys.stderr, flush=True)
        return 128 + stop.signum
    except Exception as e:  # noqa: BLE001 - one line, as promised
        print(f"error: {error_text(e)}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    from .core.shutdown import exit_process

    exit_process(main())  # reports, then exits with main's status: bpy 4.2/4.5 may crash or hang after
