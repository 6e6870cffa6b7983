"""The panel's draw code against a recording layout: every property it shows and operator it offers exists,
in each state (not connected, connected with depth missing, running, failed with resubmit)."""

from __future__ import annotations

import sys

import pytest

bpy = pytest.importorskip("bpy")

from tests.addon.scenes import build_shot  # noqa: E402


class Layout:
    """Stands in for bpy.types.UILayout: records what is drawn, checks what is referenced."""

    def __init__(self, log):
        self.log = log
        self.scale_y = 1.0

    def _sub(self, *args, **kwargs):
        return Layout(self.log)

    row = column = box = _sub

    def prop(self, data, name, **kwargs):
        assert hasattr(data, name), f"the panel shows a missing property {name!r}"
        self.log.append(("prop", name))

    def operator(self, idname, **kwargs):
        category, _, name = idname.partition(".")
        assert hasattr(getattr(bpy.ops, category), name), f"the panel offers a missing operator {idname!r}"
        self.log.append(("operator", idname, kwargs.get("text")))

        class Props:
            pass

        return Props()

    def label(self, text="", **kwargs):
        self.log.append(("label", text))

    def progress(self, factor=0.0, text=""):
        self.log.append(("progress", text))

    def template_icon(self, icon_value=0, scale=1.0):
        assert icon_value, "an icon for nothing"
        self.log.append(("icon", icon_value))

    def icon(self, data):
        # Not UILayout.icon: its preview of an image made in the background crashed bpy at exit (5.0.1).
        assert isinstance(data, bpy.types.ID), f"an icon of {data!r}"
        return 1


@pytest.fixture
def addon():
    import sys

    import sparsectrl_blender

    sparsectrl_blender.register()
    ops = sys.modules["sparsectrl_blender.blender.operators"]
    yield ops, sys.modules["sparsectrl_blender.blender.panels"]
    sparsectrl_blender.unregister()
    ops.STATUS.__init__()  # runtime state is module-level: leave none to other tests


def draw(panels):
    log = []
    panels.draw_panel(Layout(log), bpy.context)
    return log


def test_the_panel_in_each_state(addon):
    ops, panels = addon
    scene = build_shot()
    props = scene.sparsectrl

    idle = draw(panels)
    assert ("label", "Not checked yet") in idle and ("operator", "sparsectrl.generate", "Generate") in idle
    assert {
        "prompt",
        "negative_prompt",
        "modality",
        "keyframe_source",
        "shot_range",
        "frames_mode",
        "size",
        "steps",
        "guidance_scale",
        "conditioning_scale",
        "loras",
        "seed",
        "server_url",
    } <= {e[1] for e in idle if e[0] == "prop"}
    assert ("label", "1920 × 1080 px (scene aspect)") not in idle and ("label", "512 × 288 px (scene aspect)") in idle

    ops.STATUS.connection = ops.Connection(
        health={"model": {"name": "sd15", "tiny": False}, "modalities": ["lineart", "rgb"], "loras": ["ink", "toon"]},
        url=props.server_url,
    )
    props.modality = "depth"
    connected = draw(panels)
    assert ("label", "Connected: sd15") in connected and ("label", "Modalities: Line art, RGB") in connected
    assert ("label", "LoRAs: ink, toon") in connected
    assert ("label", "Depth keyframes unavailable: the server has no depth encoder (it has: lineart, rgb)") in connected
    assert ("label", "none was released: train one (docs/training.md), or use Depth every frame") in connected

    # Depth every frame alone (Keyframes: None) on a server without a depth ControlNet: said, not the encoder.
    props.keyframe_source, props.depth_every_frame = "NONE", True
    alone = draw(panels)
    assert {"depth_every_frame", "depth_strength"} <= {e[1] for e in alone if e[0] == "prop"}
    assert ("label", "Depth every frame unavailable: the server has no 'depth' ControlNet (it has: none)") in alone
    assert not any("keyframes unavailable" in e[1] for e in alone if e[0] == "label")
    ops.STATUS.connection.health["controlnets"] = ["depth"]
    ready = draw(panels)
    assert ("label", "ControlNets: depth") in ready and not any("unavailable" in e[1] for e in ready if e[0] == "label")
    props.keyframe_source, props.depth_every_frame = "MARKERS", False
    # The look beside the structure (an RGB render, or image files As RGB) and its strength; what files are for.
    shown = {e[1] for e in ready if e[0] == "prop"}
    assert {"rgb_look", "look_strength"} <= shown and "keyframe_images_as" not in shown
    props.modality, props.keyframe_images = "lineart", "1001: //boards/010.png"
    assert "keyframe_images_as" in {e[1] for e in draw(panels) if e[0] == "prop"}
    props.keyframe_images, props.rgb_look = "", "FIRST"
    look = draw(panels)
    assert ("label", "RGB look unavailable: the server has no rgb encoder (it has: lineart)") not in look
    # Pin and Colour lock beside the look: offered only where the keyframes are RGB (#28).
    assert {"pin", "color_lock"} <= {e[1] for e in look if e[0] == "prop"}
    props.rgb_look = "NONE"
    assert not {"pin", "color_lock"} & {e[1] for e in draw(panels) if e[0] == "prop"}
    props.keyframe_images, props.keyframe_images_as = "1001: //boards/010.png", "rgb"
    assert {"pin", "color_lock"} <= {e[1] for e in draw(panels) if e[0] == "prop"}
    props.keyframe_images, props.keyframe_images_as = "", "CONDITION"

    # Retake: the selected take over the preview range, else In/Out.
    retake = draw(panels)
    assert ("operator", "sparsectrl.generate", "Retake") in retake
    assert {"retake_in", "retake_out", "retake_new_seed"} <= {e[1] for e in retake if e[0] == "prop"}
    scene.use_preview_range, scene.frame_preview_start, scene.frame_preview_end = True, 10, 20
    ranged = draw(panels)
    assert ("label", "Retake range: preview range 10-20") in ranged
    assert not {"retake_in", "retake_out"} & {e[1] for e in ranged if e[0] == "prop"}
    scene.use_preview_range = False

    # A server of another API version, then a cluster whose workers are still loading: said in the connection box.
    ops.STATUS.connection.health["api_version"] = 99
    newer = [e[1] for e in draw(panels) if e[0] == "label"]
    assert "The server speaks API version 99, this add-on version 1" in newer and "Connected: sd15" not in newer
    ops.STATUS.connection.health.update(api_version=1, status="starting", starting="1 worker(s) loading the model")
    starting = [e[1] for e in draw(panels) if e[0] == "label"]
    assert ["The server is starting", "1 worker(s) loading the model"] == starting[:2]
    ops.STATUS.connection.health.update(status="ok", starting=None)

    ops.STATUS.can_resubmit = True
    assert ("operator", "sparsectrl.generate", "Resubmit") in draw(panels)
    ops.STATUS.can_resubmit = False


def test_every_sub_panel_is_registered_under_its_parent_and_draws(addon):
    """The panel as Blender's own: the common path in the parent, the rest in sub-panels (bl_parent_id), the
    rarely changed ones closed, Depth every frame's checkbox in its header; each one drawn, in both editors."""
    ops, panels = addon
    build_shot()
    parents = {"SPARSECTRL_PT_sequencer": "SEQUENCE_EDITOR", "SPARSECTRL_PT_view3d": "VIEW_3D"}
    subs = [cls for cls in panels.CLASSES if getattr(cls, "bl_parent_id", "")]
    assert len(subs) == 2 * len(panels.SECTIONS) == 12
    for cls in subs:
        assert getattr(bpy.types, cls.__name__, None) is cls, f"{cls.__name__} not registered"
        assert parents[cls.bl_parent_id] == cls.bl_space_type
        log = []
        panel = type("Self", (), {"layout": Layout(log)})()
        if hasattr(cls, "draw_header"):
            cls.draw_header(panel, bpy.context)
        cls.draw(panel, bpy.context)
        assert log, f"{cls.__name__} draws nothing"
    labels = {cls.bl_label: cls for cls in subs if cls.bl_space_type == "SEQUENCE_EDITOR"}
    assert list(labels) == ["Keyframes", "Depth every frame", "Look", "Look Reference", "Generation", "Takes"]
    closed = {label for label, cls in labels.items() if "DEFAULT_CLOSED" in cls.bl_options}
    assert closed == {"Depth every frame", "Look", "Look Reference", "Generation"}
    header = []
    labels["Depth every frame"].draw_header(type("Self", (), {"layout": Layout(header)})(), bpy.context)
    assert header == [("prop", "depth_every_frame")]
    # The parent: the common path only (server, prompt, Generate), nothing that belongs to a sub-panel.
    main = []
    panels.draw_main(Layout(main), bpy.context)
    assert {e[1] for e in main if e[0] == "prop"} == {"server_url", "prompt", "negative_prompt"}
    assert ("operator", "sparsectrl.generate", "Generate") in main


def test_the_panel_while_passes_render_and_while_the_clip_forms(addon):
    import numpy as np

    from sparsectrl_blender.blender.generation import PassProgress
    from sparsectrl_blender.blender.live_preview import LIVE

    ops, panels = addon
    build_shot()
    ops.STATUS.preparing = ops.Preparing("Scene", iter(()), PassProgress(3, 8), None, None, "")
    rendering = draw(panels)
    assert ("label", "rendering passes: 3/8") in rendering and ("progress", "passes 3/8") in rendering
    assert ("operator", "sparsectrl.cancel", None) in rendering
    assert ("operator", "sparsectrl.generate", "Generate") not in rendering
    ops.STATUS.preparing = None

    class Runner:
        state = sys.modules["sparsectrl_blender.core.job"].RunnerState(phase="running", step=2, total=25)

    ops.STATUS.run = ops.ActiveRun("Scene", None, Runner(), None, None)
    running = draw(panels)
    assert ("label", "running: step 2/25") in running and not any(e[0] == "icon" for e in running)
    LIVE.step, LIVE.total = 2, 25
    LIVE._panel_image(np.full((8, 12, 3), 200, np.uint8))
    forming = draw(panels)
    assert any(e[0] == "icon" for e in forming) and ("label", "step 2/25") in forming
    LIVE.clear()
    ops.STATUS.run = None
