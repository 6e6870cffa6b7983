"""The panel's settings: a PropertyGroup on the scene, saved in the .blend (bpy)."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from ..core.request import (
    FRAMES_MODES,
    IMAGE_KINDS,
    KEYFRAME_SOURCES,
    MODALITIES,
    QUALITIES,
    REGENERATE_MODES,
    RGB_LOOKS,
    SHOT_RANGES,
    GenerationSettings,
)

_DEFAULTS = GenerationSettings()


def fraction_of_steps(default: float, name: str, what: str):
    """A guidance window's start or end: a fraction of the denoising steps (docs/api.md). The panel's and the Look
    reference's (look.py)."""
    return FloatProperty(
        name=name,
        default=default,
        min=0.0,
        max=1.0,
        subtype="FACTOR",
        description=f"The part of the denoising {what}",
    )


class SparseCtrlSettings(bpy.types.PropertyGroup):
    server_url: StringProperty(
        name="Server", default=_DEFAULTS.server_url, description="URL of the SparseCtrl server (python -m server)"
    )
    prompt: StringProperty(name="Prompt", description="What the preview should look like")
    negative_prompt: StringProperty(name="Negative", description="What it should not look like")
    modality: EnumProperty(name="Condition", items=MODALITIES, default=_DEFAULTS.modality)
    keyframe_source: EnumProperty(name="Keyframes", items=KEYFRAME_SOURCES, default=_DEFAULTS.keyframe_source)
    every_n: IntProperty(name="N", default=_DEFAULTS.every_n, min=1)
    frame_list: StringProperty(name="Frames", description="Frame numbers, e.g. 1, 24, 48")
    shot_range: EnumProperty(name="Shot", items=SHOT_RANGES, default=_DEFAULTS.shot_range)
    frames_mode: EnumProperty(name="Generated frames", items=FRAMES_MODES, default=_DEFAULTS.frames_mode)
    motion_rate: FloatProperty(
        name="Frames per second",
        default=_DEFAULTS.motion_rate,
        min=1.0,
        max=24.0,
        description="Generated frames per second of shot; the server retimes them to the shot",
    )
    num_frames: IntProperty(
        name="Generated frames",
        default=_DEFAULTS.num_frames,
        min=1,
        max=256,
        description="Frames the model generates; the server retimes them to the shot",
    )
    size: IntProperty(
        name="Size",
        default=_DEFAULTS.size,
        min=64,
        max=1024,
        step=8,
        subtype="PIXEL",
        description="Long side of the generated video; the scene's aspect, multiples of 8",
    )
    steps: IntProperty(name="Steps", default=_DEFAULTS.steps, min=1, max=150)
    guidance_scale: FloatProperty(name="Guidance", default=_DEFAULTS.guidance_scale, min=0.0, max=30.0)
    conditioning_scale: FloatProperty(name="Condition strength", default=_DEFAULTS.conditioning_scale, min=0.0, max=4.0)
    depth_every_frame: BoolProperty(
        name="Depth every frame",
        default=_DEFAULTS.depth_every_frame,
        description=(
            "Render the scene's depth at every generated frame and steer each frame with it through the server's "
            "depth ControlNet: the preview follows the camera and the blocking. With the keyframes, or alone "
            "(Keyframes: None)"
        ),
    )
    depth_strength: FloatProperty(
        name="Depth strength",
        default=_DEFAULTS.depth_strength,
        min=0.0,
        max=4.0,
        description="The depth ControlNet's conditioning scale",
    )
    keyframe_strengths: StringProperty(
        name="Strengths",
        default=_DEFAULTS.keyframe_strengths,
        description=(
            "Strength of single keyframes, by timeline frame: 1001:0.5, 1040:1.2 (others 1; between keyframes "
            "the strength is interpolated)"
        ),
    )
    keyframe_images: StringProperty(
        name="Images",
        default=_DEFAULTS.keyframe_images,
        description=(
            "Image files as keyframes at timeline frames: 1001: //boards/010.png, 1040: //art/key.jpg (// is "
            "beside the .blend). As the Condition's kind each replaces the render there (a sketch for Line art: "
            "white lines on black); As RGB look, a storyboard panel or concept painting gives the look beside the "
            "rendered keyframes"
        ),
    )
    keyframe_images_as: EnumProperty(
        name="Images as",
        items=IMAGE_KINDS,
        default=_DEFAULTS.keyframe_images_as,
        description=(
            "What the image files are: the Condition's kind replaces the render at its frame; another kind runs "
            "beside the rendered keyframes on its own encoder (RGB look: a painting's look with line-art structure)"
        ),
    )
    rgb_look: EnumProperty(
        name="RGB look",
        items=RGB_LOOKS,
        default=_DEFAULTS.rgb_look,
        description=(
            "A quick RGB render (Workbench: the blocking's colours and shading) at the first or every keyframe "
            "for the server's RGB encoder, beside the Line art or Depth keyframes: structure from those, look "
            "from this"
        ),
    )
    look_strength: FloatProperty(
        name="Look strength",
        default=_DEFAULTS.look_strength,
        min=0.0,
        max=4.0,
        description="The RGB encoder's conditioning scale for the look (a render, or image files As RGB) beside "
        "the Condition's keyframes",
    )
    keyframe_guidance_start: fraction_of_steps(
        _DEFAULTS.keyframe_guidance_start, "Start", "before the keyframes start to steer"
    )
    keyframe_guidance_end: fraction_of_steps(
        _DEFAULTS.keyframe_guidance_end,
        "End",
        "after which the keyframes stop steering. Line art: 0.2-0.4 keeps the layout and avoids the scribble "
        "encoder's stock-footage watermark",
    )
    look_guidance_start: fraction_of_steps(
        _DEFAULTS.look_guidance_start, "Start", "before the RGB look starts to steer"
    )
    look_guidance_end: fraction_of_steps(_DEFAULTS.look_guidance_end, "End", "after which the RGB look stops steering")
    depth_guidance_start: fraction_of_steps(_DEFAULTS.depth_guidance_start, "Start", "before the depth starts to steer")
    depth_guidance_end: fraction_of_steps(_DEFAULTS.depth_guidance_end, "End", "after which the depth stops steering")
    pin: BoolProperty(
        name="Pin",
        default=_DEFAULTS.pin,
        description=(
            "Pin the RGB keyframes (image files, the RGB look): each one's generated frame is the picture itself "
            "(its VAE round trip) whatever the seed; the shot starts on the storyboard panel or painting"
        ),
    )
    color_lock: BoolProperty(
        name="Colour lock",
        default=_DEFAULTS.color_lock,
        description=(
            "Bring every generated frame's colours (CIELAB mean and spread) to the RGB keyframes', interpolated "
            "between them: the clip no longer drifts away from the look"
        ),
    )
    seed: IntProperty(name="Seed", default=_DEFAULTS.seed, min=0)
    quality: EnumProperty(name="Quality", items=QUALITIES, default=_DEFAULTS.quality)
    loras: StringProperty(
        name="LoRAs",
        default=_DEFAULTS.loras,
        description="LoRAs the server has configured, by name with optional strength: ink:0.7, toon",
    )
    preview_scene: StringProperty(
        name="Previs scene",
        description=(
            "The edit scene the previews go to, above a Scene strip of this shot (created if missing); empty: "
            "'<shot> previs'. Never the shot itself: its render stays the shot's"
        ),
    )
    regenerate_mode: EnumProperty(name="Regenerate", items=REGENERATE_MODES, default="STACK")
    # Retake: the range of the selected take to regenerate, when the previs scene has no preview range.
    retake_in: IntProperty(
        name="In",
        default=0,
        description="First timeline frame (of the previs scene) to retake, used when it has no preview range",
    )
    retake_out: IntProperty(
        name="Out",
        default=0,
        description="Last timeline frame to retake, used when the previs scene has no preview range (In and Out "
        "both 0: none chosen)",
    )
    retake_new_seed: BoolProperty(
        name="New seed",
        default=True,
        description="Retake with a new seed (else the panel's: change the prompt, keyframes or strengths instead)",
    )
    # No methods here: Blender 4.2's bpy module segfaults at exit once a PropertyGroup with a Python method
    # was registered, even after unregister_class (docs/troubleshooting.md). Helpers are module functions.


def to_settings(props: SparseCtrlSettings) -> GenerationSettings:
    """The panel's settings as the plain dataclass the request is built from."""
    return GenerationSettings(**{f: getattr(props, f) for f in GenerationSettings.__dataclass_fields__})


CLASSES = (SparseCtrlSettings,)


def register() -> None:
    bpy.types.Scene.sparsectrl = bpy.props.PointerProperty(type=SparseCtrlSettings)


def unregister() -> None:
    del bpy.types.Scene.sparsectrl
