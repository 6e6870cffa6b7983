"""The sidebar panel (tab "SparseCtrl") in the Video Sequencer and the 3D Viewport (bpy), built as Blender's own:
the common path on top (server, prompt, Generate with its progress and the clip forming), the rest in sub-panels
(bl_parent_id) below it, the rarely changed ones closed by default (SECTIONS)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import bpy

from ..core.request import (
    MODALITY_LABELS,
    further_modalities,
    generation_size,
    rgb_keyframes,
    unavailable,
    uses_keyframes,
)
from .operators import STATUS


def draw_panel(layout, context) -> None:
    """Every part of the panel top to bottom, sub-panels opened (scripts and the panel-drawing test)."""
    draw_main(layout, context)
    for section in SECTIONS:
        if section.draw_header is not None:
            section.draw_header(layout.row(), context)
        section.draw(layout.column(), context)


def _shot(context):
    from .strips import shot_scene_of

    return shot_scene_of(context.scene)  # shown in a previs scene, the panel works on its shot


def draw_main(layout, context) -> None:
    """The common path, on top without scrolling: the server, the prompt, Generate with its progress and the
    clip forming."""
    scene = _shot(context)
    props = scene.sparsectrl
    _draw_connection(layout, props)
    _draw_prompt(layout, props)
    _draw_job(layout, scene, props)


def _draw_connection(layout, props) -> None:
    box = layout.box()
    row = box.row(align=True)
    row.prop(props, "server_url", text="")
    row.operator("sparsectrl.check_connection", text="", icon="FILE_REFRESH")
    from ..core.client import server_problem  # the draw code's only use of the client module

    c = STATUS.connection
    if c.checking:
        box.label(text="Checking…", icon="SORTTIME")
    elif c.health is not None and c.url == props.server_url:
        model = c.health["model"]
        tiny = " (tiny random model: noise)" if model.get("tiny") else ""
        if problem := server_problem(c.health):  # another API version, or a cluster's workers still starting
            for i, line in enumerate(problem.split(": ")):  # a label does not wrap: one clause a line
                box.label(text=line[:1].upper() + line[1:], icon="ERROR" if i == 0 else "BLANK1")
            return
        box.label(text=f"Connected: {model['name']}{tiny}", icon="LINKED")
        box.label(text="Modalities: " + (", ".join(MODALITY_LABELS[m] for m in c.health["modalities"]) or "none"))
        if c.health.get("loras"):  # servers before LoRAs did not say
            box.label(text="LoRAs: " + ", ".join(c.health["loras"]))
        if c.health.get("controlnets"):  # per-frame ControlNets (servers before them did not say)
            box.label(text="ControlNets: " + ", ".join(c.health["controlnets"]))
        if adapter := (c.models or {}).get("ip_adapter"):  # the Look reference's (GET /v1/models)
            box.label(text=f"IP-Adapter: {adapter.get('name', '')} ({adapter.get('kind', '')})")
    elif c.error:
        box.label(text=c.error, icon="ERROR")
    else:
        box.label(text="Not checked yet", icon="UNLINKED")


def _draw_prompt(layout, props) -> None:
    col = layout.column()
    col.prop(props, "prompt")
    col.prop(props, "negative_prompt")
    health = STATUS.connection.health
    if health is not None and (why := unavailable(props, health)):
        for i, line in enumerate(why.split("; ")):  # a label does not wrap: one clause a line
            col.label(text=line, icon="ERROR" if i == 0 else "BLANK1")


def draw_keyframes(layout, context) -> None:
    """Which frames steer the clip, and how: their kind, image files, strengths and guidance window."""
    scene = _shot(context)
    props = scene.sparsectrl
    col = layout.column()
    if scene != context.scene:
        col.label(text=f"Shot: {scene.name}", icon="SCENE_DATA")
    col.prop(props, "keyframe_source", text="Keyframes")
    if props.keyframe_source == "EVERY_N":
        col.prop(props, "every_n")
    elif props.keyframe_source == "LIST":
        col.prop(props, "frame_list")
    sub = col.column()
    sub.active = uses_keyframes(props)  # the keyframes' kind: unused with Keyframes: None
    sub.prop(props, "modality")
    col.prop(props, "keyframe_images")  # image files as keyframes, with any source (None: only them)
    if props.keyframe_images.strip():
        col.prop(props, "keyframe_images_as", text="As")
    sub = col.column(align=True)
    sub.active = uses_keyframes(props)
    sub.prop(props, "keyframe_strengths")
    row = sub.row(align=True)  # the keyframes' guidance window: line art's end at 0.2-0.4 (docs/api.md)
    row.label(text="Keyframe steps")
    row.prop(props, "keyframe_guidance_start")
    row.prop(props, "keyframe_guidance_end")
    col.prop(props, "shot_range")


def draw_depth_header(layout, context) -> None:
    layout.prop(_shot(context).sparsectrl, "depth_every_frame", text="")


def draw_depth(layout, context) -> None:
    """Depth every frame: its strength and guidance window (the checkbox is in the sub-panel's header)."""
    props = _shot(context).sparsectrl
    col = layout.column(align=True)
    col.active = props.depth_every_frame
    col.prop(props, "depth_strength", text="Strength")
    row = col.row(align=True)
    row.label(text="Depth steps")
    row.prop(props, "depth_guidance_start")
    row.prop(props, "depth_guidance_end")


def draw_look(layout, context) -> None:
    """The look beside the structure: an RGB render or image files As RGB; Pin and Colour lock where RGB."""
    props = _shot(context).sparsectrl
    col = layout.column()
    row = col.row(align=True)
    sub = row.row(align=True)
    sub.active = props.keyframe_source != "NONE" and props.modality != "rgb"
    sub.prop(props, "rgb_look", text="Look")
    sub = row.row(align=True)
    sub.active = "rgb" in further_modalities(props)
    sub.prop(props, "look_strength", text="Strength")
    row = col.row(align=True)  # the look's own guidance window, apart from the structure's
    row.active = "rgb" in further_modalities(props)
    row.label(text="Look steps")
    row.prop(props, "look_guidance_start")
    row.prop(props, "look_guidance_end")
    if rgb_keyframes(props):  # known frames: offered only where the keyframes are RGB
        row = col.row(align=True)
        row.prop(props, "pin", icon="PINNED" if props.pin else "UNPINNED")
        row.prop(props, "color_lock")


def draw_reference(layout, context) -> None:
    """The Look reference: the sequence's (every shot cut into its edit inherits it) and the shot's own; greyed
    out, with the reason, when the server has no IP-Adapter (GET /v1/models)."""
    from ..core.reference import unavailable as reference_unavailable
    from .look_operators import look_scene
    from .strips import PlacementError

    shot = _shot(context)
    col = layout.column()
    if why := reference_unavailable(STATUS.connection.models):
        for i, line in enumerate(why.split("; ")):  # a label does not wrap: one clause a line
            col.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
        col = col.column()
        col.active = False
    try:
        sequence = look_scene(context, "SEQUENCE")
    except PlacementError:
        sequence = None
    own = shot.sparsectrl_look.own
    box = col.box()
    if sequence is None:
        box.label(text="Sequence: none yet (made by the first Generate)", icon="SEQUENCE")
        box.operator("sparsectrl.reference_add", text="Add Images", icon="ADD").which = "SEQUENCE"
    else:
        sub = box.column()
        sub.active = not own
        sub.label(text=f"Sequence '{sequence.name}'" + (": not used by this shot" if own else ""), icon="SEQUENCE")
        _draw_look(sub, sequence.sparsectrl_look, "SEQUENCE", context)
    box = col.box()
    box.prop(shot.sparsectrl_look, "own", text=f"Own reference for '{shot.name}'")
    if own:
        _draw_look(box, shot.sparsectrl_look, "SHOT", context)


def _draw_look(layout, look, which: str, context) -> None:
    """One reference's images (each removable), Add and Use This Frame, strength and window."""
    for index, image in enumerate(look.images):
        row = layout.row(align=True)
        row.prop(image, "filepath", text="")
        remove = row.operator("sparsectrl.reference_remove", text="", icon="X")
        remove.which, remove.index = which, index
    if which == "SHOT" and not len(look.images):
        layout.label(text="No images: this shot has no reference", icon="INFO")
    row = layout.row(align=True)
    row.operator("sparsectrl.reference_add", text="Add Images", icon="ADD").which = which
    from .look_operators import selected_take

    sub = row.row(align=True)
    sub.active = selected_take(context)[1] is not None  # a take selected on the sequence's Sequencer
    sub.operator("sparsectrl.reference_from_frame", text="Use This Frame", icon="SEQUENCE").which = which
    layout.prop(look, "strength")
    row = layout.row(align=True)
    row.label(text="Reference steps")
    row.prop(look, "guidance_start")
    row.prop(look, "guidance_end")


def draw_generation(layout, context) -> None:
    """How the clip is generated: frame count, size, quality, steps, guidance, LoRAs, seed."""
    scene = _shot(context)
    props = scene.sparsectrl
    col = layout.column(align=True)
    col.prop(props, "frames_mode")
    col.prop(props, "motion_rate" if props.frames_mode == "AUTO" else "num_frames")
    col.prop(props, "size")
    r = scene.render
    try:
        w, h = generation_size(r.resolution_x * r.pixel_aspect_x, r.resolution_y * r.pixel_aspect_y, props.size)
        col.label(text=f"{w} × {h} px (scene aspect)")
    except ValueError:
        pass
    col.prop(props, "quality", expand=True)
    col.prop(props, "steps")
    col.prop(props, "guidance_scale")
    col.prop(props, "conditioning_scale")
    col.prop(props, "loras")
    row = col.row(align=True)
    row.prop(props, "seed")
    row.operator("sparsectrl.randomize_seed", text="", icon="FILE_REFRESH")


def _draw_job(layout, scene, props) -> None:
    """Generate, or the passes' progress, or the job's progress with the clip forming; then the last message."""
    run, pending, preparing = STATUS.run, STATUS.pending, STATUS.preparing
    if run is None and pending is not None and pending.scene_name == scene.name:
        box = layout.box()
        box.label(text=f"Empty passes at keyframes {', '.join(map(str, pending.prepared.empty_frames))}", icon="ERROR")
        row = box.row(align=True)
        row.operator("sparsectrl.generate", text="Send Anyway", icon="RENDER_ANIMATION").pending = "SEND"
        row.operator("sparsectrl.generate", text="Discard", icon="CANCEL").pending = "DISCARD"
    if preparing is not None:
        box = layout.box()
        done, total = preparing.progress.done, preparing.progress.total
        box.label(text=f"rendering passes: {done}/{total}", icon="RENDER_STILL")
        box.progress(factor=done / total if total else 0.0, text=f"passes {done}/{total}")
        box.operator("sparsectrl.cancel", icon="CANCEL")
    elif run is not None:
        state = run.runner.state
        box = layout.box()
        text = f"{state.phase}: step {state.step}/{state.total}" if state.total else state.phase
        box.label(text=text, icon="RENDER_ANIMATION")
        if state.total:
            box.progress(factor=state.step / state.total, text=f"{state.step}/{state.total}")
        _draw_forming(box)
        box.operator("sparsectrl.cancel", icon="CANCEL")
    else:
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator(
            "sparsectrl.generate", text="Resubmit" if STATUS.can_resubmit else "Generate", icon="RENDER_ANIMATION"
        )
    if STATUS.message:
        layout.label(text=STATUS.message, icon="ERROR" if STATUS.message_is_error else "INFO")


def _draw_forming(layout) -> None:
    """The newest preview's middle frame beside its step (live_preview.py), once the server sent one."""
    from .live_preview import LIVE

    image = LIVE.panel_image()
    if image is None:
        return
    row = layout.row()
    row.template_icon(icon_value=layout.icon(image), scale=5.0)
    row.label(text=f"step {LIVE.step}/{LIVE.total}")


def draw_takes(layout, context) -> None:
    """Where the takes go (the previs scene), and new takes of them: Regenerate, Retake."""
    from .strips import previs_scene_name

    scene = _shot(context)
    props = scene.sparsectrl
    layout.prop(props, "preview_scene", text="Previs", placeholder=previs_scene_name(scene))
    if STATUS.run is not None or STATUS.preparing is not None:
        return
    sub = layout.row(align=True)
    sub.operator("sparsectrl.generate", text="Regenerate (new seed)").regenerate = True
    sub.prop(props, "regenerate_mode", text="")
    _draw_retake(layout, props, context.scene)


def _draw_retake(layout, props, scene) -> None:
    """Retake the selected take over the preview range of the scene shown (the previs), else In/Out."""
    row = layout.row(align=True)
    row.operator("sparsectrl.generate", text="Retake", icon="SEQ_STRIP_DUPLICATE").retake = True
    row.prop(props, "retake_new_seed")
    if scene.use_preview_range:
        layout.label(text=f"Retake range: preview range {scene.frame_preview_start}-{scene.frame_preview_end}")
    else:
        row = layout.row(align=True)
        row.prop(props, "retake_in")
        row.prop(props, "retake_out")


@dataclass(frozen=True)
class Section:
    """A sub-panel of the SparseCtrl panel (bl_parent_id), the same in each editor."""

    key: str
    label: str
    draw: Callable
    draw_header: Callable | None = None
    closed: bool = False  # closed by default: the rarely changed ones


SECTIONS = (
    Section("keyframes", "Keyframes", draw_keyframes),
    Section("depth", "Depth every frame", draw_depth, draw_depth_header, closed=True),
    Section("look", "Look", draw_look, closed=True),
    Section("reference", "Look Reference", draw_reference, closed=True),
    Section("generation", "Generation", draw_generation, closed=True),
    Section("takes", "Takes", draw_takes),
)


class _SparseCtrlPanel:
    """The same panel in each editor that has a sidebar."""

    bl_label = "SparseCtrl Preview"
    bl_region_type = "UI"
    bl_category = "SparseCtrl"

    def draw(self, context):
        draw_main(self.layout, context)


class SPARSECTRL_PT_sequencer(_SparseCtrlPanel, bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"


class SPARSECTRL_PT_view3d(_SparseCtrlPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"


def _sub_panel(parent, section: Section):
    """The sub-panel class for `section` under `parent` (its space): e.g. SPARSECTRL_PT_sequencer_keyframes."""
    attributes = {
        "bl_idname": f"{parent.__name__}_{section.key}",
        "bl_label": section.label,
        "bl_parent_id": parent.__name__,
        "bl_space_type": parent.bl_space_type,
        "bl_region_type": "UI",
        "bl_category": "SparseCtrl",
        "bl_options": {"DEFAULT_CLOSED"} if section.closed else set(),
        "draw": lambda self, context: section.draw(self.layout, context),
    }
    if section.draw_header is not None:
        attributes["draw_header"] = lambda self, context: section.draw_header(self.layout, context)
    return type(attributes["bl_idname"], (bpy.types.Panel,), attributes)


SUB_PANELS = tuple(
    _sub_panel(parent, s) for parent in (SPARSECTRL_PT_sequencer, SPARSECTRL_PT_view3d) for s in SECTIONS
)
CLASSES = (SPARSECTRL_PT_sequencer, SPARSECTRL_PT_view3d, *SUB_PANELS)  # parents before their sub-panels
