"""The sidebar panel (tab "SparseCtrl") in the Video Sequencer and the 3D Viewport (bpy)."""

from __future__ import annotations

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
    """The panel top to bottom: connection, prompt and condition, where the previews go, keyframes, the
    generation settings, then the job (progress, or Generate)."""
    from .strips import shot_scene_of

    scene = shot_scene_of(context.scene)  # shown in a previs scene, the panel works on its shot
    props = scene.sparsectrl
    _draw_connection(layout, props)
    _draw_prompt(layout, props)
    _draw_shot(layout, context, scene, props)
    _draw_generation(layout, scene, props)
    _draw_job(layout, scene, props, context.scene)


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
    elif c.error:
        box.label(text=c.error, icon="ERROR")
    else:
        box.label(text="Not checked yet", icon="UNLINKED")


def _draw_prompt(layout, props) -> None:
    col = layout.column()
    col.prop(props, "prompt")
    col.prop(props, "negative_prompt")
    sub = col.column()
    sub.active = uses_keyframes(props)  # the keyframes' kind: unused with Keyframes: None
    sub.prop(props, "modality")
    row = col.row(align=True)
    row.prop(props, "depth_every_frame")
    sub = row.row()
    sub.active = props.depth_every_frame
    sub.prop(props, "depth_strength", text="Strength")
    row = col.row(align=True)  # the depth's guidance window
    row.active = props.depth_every_frame
    row.label(text="Depth steps")
    row.prop(props, "depth_guidance_start")
    row.prop(props, "depth_guidance_end")
    health = STATUS.connection.health
    if health is not None and (why := unavailable(props, health)):
        for i, line in enumerate(why.split("; ")):  # a label does not wrap: one clause a line
            col.label(text=line, icon="ERROR" if i == 0 else "BLANK1")


def _draw_shot(layout, context, scene, props) -> None:
    from .strips import previs_scene_name

    col = layout.column()
    if scene != context.scene:
        col.label(text=f"Shot: {scene.name}", icon="SCENE_DATA")
    col.prop(props, "preview_scene", text="Previs", placeholder=previs_scene_name(scene))
    col = layout.column(heading="Keyframes")
    col.prop(props, "keyframe_source", text="")
    if props.keyframe_source == "EVERY_N":
        col.prop(props, "every_n")
    elif props.keyframe_source == "LIST":
        col.prop(props, "frame_list")
    col.prop(props, "keyframe_images")  # image files as keyframes, with any source (None: only them)
    if props.keyframe_images.strip():
        col.prop(props, "keyframe_images_as", text="As")
    row = col.row(align=True)  # the look beside the structure: an RGB render, image files As RGB
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
    sub = col.column(align=True)
    sub.active = uses_keyframes(props)
    sub.prop(props, "keyframe_strengths")
    row = sub.row(align=True)  # the keyframes' guidance window: line art's end at 0.2-0.4 (docs/api.md)
    row.label(text="Keyframe steps")
    row.prop(props, "keyframe_guidance_start")
    row.prop(props, "keyframe_guidance_end")
    col.prop(props, "shot_range")


def _draw_generation(layout, scene, props) -> None:
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


def _draw_job(layout, scene, props, shown_in) -> None:
    run, pending = STATUS.run, STATUS.pending
    if run is None and pending is not None and pending.scene_name == scene.name:
        box = layout.box()
        box.label(text=f"Empty passes at keyframes {', '.join(map(str, pending.prepared.empty_frames))}", icon="ERROR")
        row = box.row(align=True)
        row.operator("sparsectrl.generate", text="Send Anyway", icon="RENDER_ANIMATION").pending = "SEND"
        row.operator("sparsectrl.generate", text="Discard", icon="CANCEL").pending = "DISCARD"
    if run is not None:
        state = run.runner.state
        box = layout.box()
        text = f"{state.phase}: step {state.step}/{state.total}" if state.total else state.phase
        box.label(text=text, icon="RENDER_ANIMATION")
        if state.total:
            box.progress(factor=state.step / state.total, text=f"{state.step}/{state.total}")
        box.operator("sparsectrl.cancel", icon="CANCEL")
    else:
        row = layout.row(align=True)
        row.scale_y = 1.4
        row.operator(
            "sparsectrl.generate", text="Resubmit" if STATUS.can_resubmit else "Generate", icon="RENDER_ANIMATION"
        )
        sub = layout.row(align=True)
        sub.operator("sparsectrl.generate", text="Regenerate (new seed)").regenerate = True
        sub.prop(props, "regenerate_mode", text="")
        _draw_retake(layout, props, shown_in)
    if STATUS.message:
        layout.label(text=STATUS.message, icon="ERROR" if STATUS.message_is_error else "INFO")


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


class _SparseCtrlPanel:
    """The same panel in each editor that has a sidebar."""

    bl_label = "SparseCtrl Preview"
    bl_region_type = "UI"
    bl_category = "SparseCtrl"

    def draw(self, context):
        draw_panel(self.layout, context)


class SPARSECTRL_PT_sequencer(_SparseCtrlPanel, bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"


class SPARSECTRL_PT_view3d(_SparseCtrlPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"


CLASSES = (SPARSECTRL_PT_sequencer, SPARSECTRL_PT_view3d)
