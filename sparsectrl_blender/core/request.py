"""Generation settings and the job body sent to the server (docs/api.md). Pure Python: no bpy."""

from __future__ import annotations

import base64
from dataclasses import dataclass

from .client import server_problem

# The panel's choices, each (identifier, label, description) and defined once: the panel's EnumProperties take
# them as items (a .blend saves an enum as its index into these, which the batch command reads back), the
# batch's flags take the identifiers, the request sends them.
MODALITIES = (
    ("lineart", "Line art", "White lines on black from the geometry (the released scribble encoder)"),
    ("depth", "Depth", "Camera depth, near white; needs a depth encoder on the server"),
    ("rgb", "RGB", "A quick shaded render: animates the image"),
)
KEYFRAME_SOURCES = (
    ("MARKERS", "Timeline markers", "Every timeline marker in the shot"),
    ("SELECTED_MARKERS", "Selected markers", "Selected timeline markers"),
    ("CAMERA_KEYS", "Camera keyframes", "Keyframes of the active camera"),
    ("EVERY_N", "Every N frames", "Evenly spaced, plus the last frame"),
    ("LIST", "List", "Frame numbers typed in"),
    # Last: a .blend saves the choice as its index, so new choices go at the end.
    ("NONE", "None", "No keyframes: the structure comes from Depth every frame alone"),
)
# What image files (Images) are: the Condition's kind (in place of the render at their frame, as before), or a
# kind of their own, whose encoder runs beside the rendered keyframes' (RGB: the look beside line art).
IMAGE_KINDS = (
    ("CONDITION", "Condition", "The Condition's kind: each image replaces the render at its frame"),
    ("rgb", "RGB look", "The look (a storyboard panel, a concept painting) for the RGB encoder, beside the renders"),
    ("lineart", "Line art", "White lines on black for the line-art encoder, beside the renders"),
    ("depth", "Depth", "Near = white, for a depth encoder, beside the renders"),
)
RGB_LOOKS = (
    ("NONE", "None", "No render for the look: the prompt's (and any image files')"),
    (
        "FIRST",
        "First keyframe",
        "A quick RGB render of the first keyframe for the RGB encoder, beside the Condition's keyframes: the "
        "blocking's colours and shading set the look",
    ),
    ("EVERY", "Every keyframe", "A quick RGB render at every keyframe, beside the Condition's"),
)
SHOT_RANGES = (("SCENE", "Scene range", "Scene start to end"), ("PREVIEW", "Preview range", "The preview range"))
FRAMES_MODES = (
    ("AUTO", "Motion rate", "A number of frames per second of shot"),
    ("FIXED", "Fixed", "Exactly this many frames"),
)
QUALITIES = (
    ("final", "Final", "Full size and steps"),
    ("draft", "Draft", "Quick: the server generates smaller with fewer steps and scales it up"),
)
REGENERATE_MODES = (
    ("STACK", "Stack", "Add the new preview above the old one"),
    ("REPLACE", "Replace", "Replace the selected preview strip"),
)
# The saved settings' enum fields, by GenerationSettings field name.
ENUMS = {
    "modality": MODALITIES,
    "keyframe_images_as": IMAGE_KINDS,
    "rgb_look": RGB_LOOKS,
    "keyframe_source": KEYFRAME_SOURCES,
    "shot_range": SHOT_RANGES,
    "frames_mode": FRAMES_MODES,
    "quality": QUALITIES,
}


def identifiers(choices) -> tuple[str, ...]:
    return tuple(choice[0] for choice in choices)


MODALITY_LABELS = {identifier: label for identifier, label, _ in MODALITIES}
# The per-frame ControlNet "Depth every frame" asks the server for (a name in its [model.controlnets]).
DEPTH_CONTROLNET = "depth"
# The server's default limits.max_frames; a server configured lower answers with a clear error.
MAX_GENERATED_FRAMES = 256
# The long side of the generated video: the panel's limits (the model's latents need at least 64 px).
MIN_SIZE, MAX_SIZE = 64, 1024


@dataclass(frozen=True)
class GenerationSettings:
    """What the panel (a PropertyGroup in the .blend) or the batch command's flags hold."""

    server_url: str = "http://127.0.0.1:8765"
    prompt: str = ""
    negative_prompt: str = ""
    modality: str = "lineart"
    keyframe_source: str = "MARKERS"  # MARKERS, SELECTED_MARKERS, CAMERA_KEYS, EVERY_N, LIST, NONE
    every_n: int = 12
    frame_list: str = ""
    shot_range: str = "SCENE"  # SCENE or PREVIEW
    frames_mode: str = "AUTO"  # AUTO: motion_rate frames per second of shot; FIXED: num_frames
    motion_rate: float = 8.0
    num_frames: int = 16
    size: int = 512  # the long side of the generated video, in pixels
    steps: int = 25
    guidance_scale: float = 8.5  # the official SparseCtrl demos (server/defaults.toml)
    conditioning_scale: float = 1.0
    # Blender's depth at every generated frame, through the server's "depth" ControlNet (a public SD1.5 depth
    # ControlNet: docs/weights.md), beside the keyframes or, with keyframe_source NONE, instead of them.
    depth_every_frame: bool = False
    depth_strength: float = 1.0
    # Finer control (docs/api.md): strengths of single keyframes by timeline frame ("1001:0.5, 1040:1.2"), and
    # the part of the denoising the keyframes and the depth steer, as fractions of the steps.
    keyframe_strengths: str = ""
    # Image files as keyframes at timeline frames ("1001: //boards/010.png"): a storyboard panel or a concept
    # painting as the look (RGB), a drawn sketch (Line art: white lines on black), in place of a render there.
    keyframe_images: str = ""
    # What the image files are (IMAGE_KINDS): the Condition's kind replaces the render at its frame (the default,
    # as before); another kind goes to its own encoder beside the rendered keyframes (RGB: the look), and a frame
    # may then have both.
    keyframe_images_as: str = "CONDITION"
    # The look from a render: an RGB keyframe (Workbench) at the first or every keyframe beside the Condition's
    # (Line art or Depth structure), for the server's RGB encoder; look_strength is that encoder's scale (image
    # files As RGB beside the renders take it too).
    rgb_look: str = "NONE"  # NONE, FIRST, EVERY
    look_strength: float = 1.0
    look_guidance_start: float = 0.0  # the look's own part of the denoising (Look steps), apart from Keyframe steps
    look_guidance_end: float = 1.0
    # Known frames (docs/api.md): the RGB keyframes (image files, the look) pinned: that generated frame is the
    # picture itself; colour lock: every frame's colours brought to the RGB keyframes'. Both need RGB keyframes.
    pin: bool = False
    color_lock: bool = False
    keyframe_guidance_start: float = 0.0
    keyframe_guidance_end: float = 1.0
    depth_guidance_start: float = 0.0
    depth_guidance_end: float = 1.0
    seed: int = 0
    quality: str = "final"  # "draft": the server generates smaller with fewer steps, for quick iteration
    loras: str = ""  # "ink:0.7, toon": LoRA names the server has configured (GET /v1/models), optional scales
    preview_scene: str = ""  # the edit scene the previews go to; empty: "<shot> previs"


def parse_loras(text: str) -> list[dict]:
    """ "ink:0.7, toon" -> [{"name": "ink", "scale": 0.7}, {"name": "toon", "scale": None}] (None: server default)."""
    out = []
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, scale = item.partition(":")
        name = name.strip()
        try:
            value = float(scale) if sep else None
        except ValueError:
            raise ValueError(f"LoRA {item!r}: write NAME or NAME:SCALE, e.g. ink:0.7") from None
        if not name:
            raise ValueError(f"LoRA {item!r}: the name is missing")
        out.append({"name": name, "scale": value})
    return out


STRENGTH_RANGE = (0.0, 4.0)  # the server's default max_conditioning_scale


def parse_keyframe_strengths(text: str) -> dict[int, float]:
    """ "1001:0.5, 1040:1.2" -> {1001: 0.5, 1040: 1.2} (timeline frame -> strength); a clear ValueError naming
    the entry for anything else."""
    out: dict[int, float] = {}
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        frame, sep, value = (part.strip() for part in item.partition(":"))
        try:
            number, strength = int(frame), float(value)
        except ValueError:
            raise ValueError(f"keyframe strength {item!r}: write FRAME:STRENGTH, e.g. 1001:0.5") from None
        if not sep or not STRENGTH_RANGE[0] <= strength <= STRENGTH_RANGE[1]:
            raise ValueError(
                f"keyframe strength {item!r}: the strength must be {STRENGTH_RANGE[0]:g} to {STRENGTH_RANGE[1]:g}"
            )
        if number in out:
            raise ValueError(f"keyframe strengths name frame {number} twice")
        out[number] = strength
    return out


def check_window(what: str, start: float, end: float) -> None:
    """A guidance window (fractions of the denoising steps) the server takes: 0 <= start < end <= 1."""
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(
            f"{what} guidance: start {start:g} and end {end:g} must be fractions of the steps with start below end "
            "(0 = the first step, 1 = the last)"
        )


def parse_window(text: str, what: str) -> tuple[float, float]:
    """ "0:0.3" -> (0.0, 0.3); a clear ValueError for anything else."""
    start, sep, end = text.partition(":")
    try:
        window = float(start), float(end)
    except ValueError:
        raise ValueError(f"{what} guidance {text!r}: write START:END, e.g. 0:0.3") from None
    if not sep:
        raise ValueError(f"{what} guidance {text!r}: write START:END, e.g. 0:0.3")
    check_window(what, *window)
    return window


def generation_size(scene_width: float, scene_height: float, long_side: int) -> tuple[int, int]:
    """The scene's aspect ratio at `long_side` pixels on its longer side, both multiples of 8 (at least 64)."""
    if scene_width <= 0 or scene_height <= 0:
        raise ValueError("the scene's resolution must be positive")
    scale = long_side / max(scene_width, scene_height)

    def snap(v: float) -> int:
        return max(64, int(round(v * scale / 8)) * 8)

    return snap(scene_width), snap(scene_height)


def job_body(
    settings: GenerationSettings,
    num_frames: int,
    width: int,
    height: int,
    fps: int,
    output_frames: int,
    keyframes: list[tuple[int, int, bytes]],
    retake: dict | None = None,
    reference: dict | None = None,
) -> dict:
    """The POST /v1/jobs body. `keyframes` are (generated index, output index, PNG bytes); the server
    retimes the clip to `output_frames` with each keyframe's generated frame on its output frame. Built with
    no keyframes first (the prompt and LoRAs checked before anything is rendered), `keyframe_entries` fill them
    in once the passes are PNGs. `retake`: the body's "retake" (core/retake.Retake.entry); `reference`: the body's
    "reference" (core/reference.entry), sent only when given, which steers a job alone too. Colour lock is sent
    only with RGB keyframes (the panel offers it only then; a setting left on is not an error)."""
    if not settings.prompt.strip():
        raise ValueError("write a prompt first: it says what the preview should look like")
    if not uses_keyframes(settings) and not settings.depth_every_frame and reference is None:
        raise ValueError(
            "nothing steers the preview: choose where the keyframes come from, turn on Depth every frame, or give "
            "a Look reference"
        )
    extra = {}
    if uses_keyframes(settings):
        parse_keyframe_strengths(settings.keyframe_strengths)  # said before anything is rendered
        parse_keyframe_images(settings.keyframe_images)
        window = (settings.keyframe_guidance_start, settings.keyframe_guidance_end)
        check_window("keyframe", *window)
        if window != (0.0, 1.0):  # sent only when set: servers before guidance windows take the body as before
            extra = {"keyframe_guidance_start": fraction(window[0]), "keyframe_guidance_end": fraction(window[1])}
    if settings.depth_every_frame:
        check_window("depth", settings.depth_guidance_start, settings.depth_guidance_end)
    if "rgb" in further_modalities(settings):
        check_window("look", settings.look_guidance_start, settings.look_guidance_end)
    if settings.color_lock and rgb_keyframes(settings):  # sent only when on: the body is as before otherwise
        extra["color_lock"] = True
    if retake is not None:
        extra["retake"] = retake
    if reference is not None:  # sent only when on: the body is as before otherwise
        extra["reference"] = reference
    return {
        "prompt": settings.prompt,
        "negative_prompt": settings.negative_prompt or None,
        "modality": keyframe_modality(settings),
        "num_frames": num_frames,
        "width": width,
        "height": height,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "conditioning_scale": settings.conditioning_scale,
        "seed": settings.seed,
        "fps": fps,
        "output_frames": output_frames,
        "quality": settings.quality,
        "loras": parse_loras(settings.loras) or None,
        "keyframes": keyframe_entries(keyframes),
        **extra,
    }


def fraction(value: float) -> float:
    return round(value, 4)  # a panel FloatProperty is single precision: 0.8 is 0.800000011920929


def keyframe_entries(
    keyframes: list[tuple[int, int, bytes]],
    strengths: dict[int, float] | None = None,
    modality: str = "",
    pin: bool = False,
) -> list[dict]:
    """The body's "keyframes": (generated index, output index, PNG bytes) each, in index order; `strengths` by
    generated index, sent only where not 1 (servers before per-keyframe strength take the body as before);
    `modality`: keyframes for another encoder than the request's modality (image files as the look); `pin`:
    each of them pinned (RGB keyframes only: the caller's to choose), sent only when on."""
    entries = []
    for index, output_index, png in sorted(keyframes):
        entry = {"index": index, "output_index": output_index, "image": base64.b64encode(png).decode("ascii")}
        if modality:
            entry["modality"] = modality
        if pin:
            entry["pin"] = True
        if (strengths or {}).get(index, 1.0) != 1.0:
            entry["strength"] = fraction(strengths[index])
        entries.append(entry)
    return entries


def dense_entries(
    strength: float, frames: list[tuple[int, bytes]], guidance: tuple[float, float] = (0.0, 1.0)
) -> list[dict]:
    """The body's "controlnets" for Depth every frame: one group, (generated index, PNG bytes) per frame; its
    guidance window sent only when set."""
    if not frames:
        return []
    group = {
        "name": DEPTH_CONTROLNET,
        "strength": fraction(strength),
        "frames": [{"index": i, "image": base64.b64encode(png).decode("ascii")} for i, png in sorted(frames)],
    }
    if tuple(guidance) != (0.0, 1.0):
        group["guidance_start"], group["guidance_end"] = fraction(guidance[0]), fraction(guidance[1])
    return [group]


def uses_keyframes(settings: GenerationSettings) -> bool:
    """Keyframes from the scene (any source but None) or from image files."""
    return settings.keyframe_source != "NONE" or bool(settings.keyframe_images.strip())


def _images_kind(settings: GenerationSettings) -> str:
    return settings.modality if settings.keyframe_images_as == "CONDITION" else settings.keyframe_images_as


def keyframe_modality(settings: GenerationSettings) -> str | None:
    """The request's modality: the rendered keyframes' (the Condition), or the images' when they are the only
    keyframes (Keyframes: None); None without keyframes."""
    if settings.keyframe_source != "NONE":
        return settings.modality
    return _images_kind(settings) if settings.keyframe_images.strip() else None


def images_modality(settings: GenerationSettings) -> str | None:
    """The modality of the image files' own group of keyframes, when they go to another encoder than the rendered
    keyframes' (an RGB painting beside line art); None when they replace the renders at their frames."""
    separate = settings.keyframe_source != "NONE" and _images_kind(settings) != settings.modality
    return _images_kind(settings) if separate and settings.keyframe_images.strip() else None


def look_group(settings: GenerationSettings) -> dict:
    """The body's "keyframe_groups" entry for the RGB look beside the request's keyframes: its strength and its
    own guidance window (docs/api.md); sent only with the look's keyframes (PreparedJob.encode)."""
    return {
        "modality": "rgb",
        "strength": fraction(settings.look_strength),
        "guidance_start": fraction(settings.look_guidance_start),
        "guidance_end": fraction(settings.look_guidance_end),
    }


def rgb_look(settings: GenerationSettings) -> bool:
    """An RGB render as the look beside the Condition's keyframes (Line art or Depth: the structure)."""
    return settings.rgb_look != "NONE" and settings.keyframe_source != "NONE" and settings.modality != "rgb"


def further_modalities(settings: GenerationSettings) -> list[str]:
    """The SparseCtrl encoders beside the request's modality: RGB for the look (a render, image files As RGB),
    and the image files' kind when it is another."""
    out = ["rgb"] if rgb_look(settings) else []
    images = images_modality(settings)
    return out + ([images] if images and images not in out else [])


def rgb_keyframes(settings: GenerationSettings) -> bool:
    """The job has RGB keyframes (the Condition RGB, image files of the RGB kind, the look): Pin and Colour lock
    apply to them, and are offered only then."""
    return keyframe_modality(settings) == "rgb" or "rgb" in further_modalities(settings)


def parse_keyframe_images(text: str) -> dict[int, str]:
    """ "1001: //boards/010.png, 1040: /art/key.jpg" -> {1001: "//boards/010.png", 1040: "/art/key.jpg"}
    (timeline frame -> path as written; "//" is Blender's relative to the .blend). Entries are separated by
    commas or new lines; a clear ValueError naming the entry for anything else."""
    out: dict[int, str] = {}
    for item in text.replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        frame, sep, path = (part.strip() for part in item.partition(":"))
        try:
            number = int(frame)
        except ValueError:
            number = None
        if number is None or not sep or not path:
            raise ValueError(f"keyframe image {item!r}: write FRAME: PATH, e.g. 1001: //boards/010.png")
        if number in out:
            raise ValueError(f"keyframe images name frame {number} twice")
        out[number] = path
    return out


def unavailable(settings: GenerationSettings, health: dict) -> str | None:
    """Why the server (its GET /v1/health) cannot run these settings, as a sentence; None when it can."""
    if problem := server_problem(health):  # another API version, or its workers still starting
        return problem[:1].upper() + problem[1:]
    needed = [(keyframe_modality(settings), "keyframes")]
    needed += [
        (m, "keyframe images" if m == images_modality(settings) else "look") for m in further_modalities(settings)
    ]
    for modality, what in needed:
        if modality is None or modality in health["modalities"]:
            continue
        available = ", ".join(health["modalities"]) or "none"
        why = f"{MODALITY_LABELS.get(modality, modality)} {what} unavailable: the server has "
        why += f"no {modality} encoder (it has: {available})"
        if modality == "depth":
            why += "; none was released: train one (docs/training.md), or use Depth every frame"
        return why
    # Servers from before per-frame ControlNets do not list them: they have none.
    if settings.depth_every_frame and DEPTH_CONTROLNET not in health.get("controlnets", []):
        available = ", ".join(health.get("controlnets", [])) or "none"
        return (
            f"Depth every frame unavailable: the server has no '{DEPTH_CONTROLNET}' ControlNet (it has: "
            f"{available}); add one under [model.controlnets] (docs/weights.md)"
        )
    return None


OWNER_MAX_CHARS = 64  # the server's limit (server/request/schema.py)


def owner_name(name: str) -> str | None:
    """The request's "owner": who submitted the job, as the server's fair queue takes owners in turn. Control
    characters dropped, cut to the server's limit; None when nothing is left."""
    cleaned = "".join(c for c in name if c.isprintable()).strip()[:OWNER_MAX_CHARS].strip()
    return cleaned or None


def login_name() -> str:
    """The user's login name, the owner when none is given; empty where there is none (some containers)."""
    import getpass

    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return ""
