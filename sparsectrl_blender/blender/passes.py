"""Rendering passes at keyframes, in a temporary copy of the user's scene.

The copy (Scene.copy(): a linked copy sharing objects, with its own render settings, view layers and
compositor) is what gets the low-sample engine, the passes, the File Output node and the output paths; it is
removed afterwards, also when a render fails. The user's scene is never written to. Works with Blender 4.2+
(node_tree / file_slots) and 5.x (compositing_node_group / file_output_items), by feature detection.

Everything here runs on Blender's main thread, reading and processing a keyframe's files included: a Python
thread that runs Python code while bpy.ops.render.render renders crashes the bpy module (segfault, 4.2.23 and
5.0.1; docs/troubleshooting.md), so they are not overlapped with the next keyframe's render. So that Blender's UI
answers between renders, `PassRenderer.render_steps` is a generator that pauses (yields) after each render: the
panel runs one step per timer tick, `render` runs them all in a loop (`run_steps`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import bpy
import numpy as np

from sparsectrl_passes.process import RenderBuffers, depth_images, lineart_image

from ..core.exr import ExrUnsupported, read_exr_rgba
from ..core.render_guard import GUARD
from ..core.request import MODALITIES, identifiers

log = logging.getLogger(__name__)


class PassError(RuntimeError):
    """A pass could not be rendered; the message is for the artist."""


def run_steps(steps):
    """Run a step generator (render_steps, generation.prepare_steps) to its end in one go; its return value."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def _read_image(path: Path) -> np.ndarray:
    """Pixels of an image file as float (h, w, channels), top row first."""
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        img.colorspace_settings.name = "Non-Color"
        w, h = img.size
        data = np.empty(w * h * img.channels, np.float32)
        img.pixels.foreach_get(data)
        return np.flipud(data.reshape(h, w, img.channels))
    finally:
        bpy.data.images.remove(img)


def _read_pass(path: Path) -> np.ndarray:
    """A pass the File Output node wrote, float (h, w, 4) top row first: read directly (core/exr.py: these
    files are uncompressed float scanlines), or through Blender for a file that reader does not handle."""
    try:
        return read_exr_rgba(path)
    except ExrUnsupported as e:
        log.debug("%s read through Blender: %s", path.name, e)
        return _read_image(path)


def _compositor_tree(scene):
    """A fresh compositor node tree owned by `scene` (5.x: a node group; 4.x: scene.node_tree)."""
    if hasattr(scene, "compositing_node_group"):
        tree = bpy.data.node_groups.new("SparseCtrl passes", "CompositorNodeTree")
        scene.compositing_node_group = tree
        return tree
    scene.use_nodes = True
    tree = scene.node_tree
    tree.nodes.clear()
    return tree


def _file_output(tree, render_layers, directory: Path, sockets: dict[str, str]):
    node = tree.nodes.new("CompositorNodeOutputFile")
    fmt = node.format
    if hasattr(fmt, "media_type"):
        fmt.media_type = "IMAGE"
    fmt.file_format = "OPEN_EXR"
    fmt.color_depth = "32"
    fmt.exr_codec = "NONE"  # written and read back at once: compressing them only costs time
    if hasattr(node, "file_output_items"):  # Blender 5.x
        node.directory = str(directory) + "/"
        node.file_name = ""
        for name, socket in sockets.items():
            kind = "VECTOR" if socket == "Position" else "RGBA" if socket.startswith("Crypto") else "FLOAT"
            node.file_output_items.new(kind, name)
            tree.links.new(render_layers.outputs[socket], node.inputs[name])
    else:  # Blender 4.x
        node.base_path = str(directory)
        node.file_slots.clear()
        for name, socket in sockets.items():
            node.file_slots.new(name)
            tree.links.new(render_layers.outputs[socket], node.inputs[name])
    return node


def check_camera(scene) -> None:
    """PassError naming the scene when it has no camera to render the passes from."""
    if scene.camera is None:
        raise PassError(f"the scene '{scene.name}' has no camera: set one (Scene properties > Camera) to render passes")


class PassRenderer:
    """Use as a context manager: `with PassRenderer(scene, w, h) as r: images = r.render(modality, frames)`."""

    def __init__(self, scene, width: int, height: int, view_layer_name: str | None = None):
        check_camera(scene)
        self.scene, self.width, self.height = scene, width, height
        self.view_layer_name = view_layer_name or scene.view_layers[0].name
        self.seconds_per_keyframe: list[float] = []
        # Where the time went, summed over keyframes: scene copy, frame_set, render, read, process, cleanup.
        self.stage_seconds: dict[str, float] = {}
        self.renders_done = 0  # counted across render_steps calls: the panel's progress

    @contextmanager
    def timed(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + time.perf_counter() - started

    def __enter__(self):
        with self.timed("scene copy"):
            return self._enter()

    def _enter(self):
        self._dir = Path(tempfile.mkdtemp(prefix="sparsectrl_passes_"))
        self._copy = self.scene.copy()
        self._copy.name = "SparseCtrl passes (temporary)"
        self._trees = []
        self._images_before = set(bpy.data.images)
        r = self._copy.render
        r.resolution_x, r.resolution_y, r.resolution_percentage = self.width, self.height, 100
        r.pixel_aspect_x = r.pixel_aspect_y = 1.0
        r.use_border = False
        r.use_sequencer = False  # the previews this add-on puts on the Sequencer must not replace the render
        r.use_multiview = False
        for layer in self._copy.view_layers:
            layer.use = layer.name == self.view_layer_name
        return self

    def __exit__(self, *exc):
        with self.timed("cleanup"):
            self._exit()
        return False

    def _exit(self) -> None:
        for tree in self._trees:
            if tree.name in bpy.data.node_groups:
                bpy.data.node_groups.remove(tree)
        bpy.data.scenes.remove(self._copy)
        for image in set(bpy.data.images) - self._images_before:  # the "Render Result" our renders made
            bpy.data.images.remove(image)
        shutil.rmtree(self._dir, ignore_errors=True)
        # Objects are shared with the copy, whose frames were evaluated last: evaluate the user's frame again.
        self.scene.frame_set(self.scene.frame_current, subframe=self.scene.frame_subframe)

    def _render(self, frame: int) -> None:
        with self.timed("frame_set"):
            self._copy.frame_set(frame)
        started = time.perf_counter()
        try:
            # The render operator takes its frame from the context's scene: without the override every keyframe
            # came out at the user's current frame (animation and camera keys ignored).
            # The guard: the add-on's threads run no Python during the render (core/render_guard.py).
            with GUARD.render(), bpy.context.temp_override(scene=self._copy):
                bpy.ops.render.render(write_still=self._copy.render.filepath != "", scene=self._copy.name)
        except RuntimeError as e:
            raise PassError(f"rendering frame {frame} failed: {e}") from None
        seconds = time.perf_counter() - started
        self.renders_done += 1
        self.seconds_per_keyframe.append(seconds)
        self.stage_seconds["render"] = self.stage_seconds.get("render", 0.0) + seconds

    def _geometry_buffers(self, frames: list[int], ids: bool = False) -> list[RenderBuffers]:
        return run_steps(self._geometry_steps(frames, ids))

    def _geometry_steps(self, frames: list[int], ids: bool = False):
        """Camera Z and alpha at each frame (and, with `ids`, line art's: world positions and per-object and
        per-material ids from Cryptomatte): Cycles at one sample through the pixel centre, passes through a File
        Output node. A generator: yields after each frame, returns the list of RenderBuffers."""
        tree, render_layers, sockets = self._geometry_setup(ids)
        scene = self._copy
        buffers = []
        self.orthographic = []
        for frame in frames:
            # A folder of its own per render: one frame may be rendered twice in one copy (a line-art keyframe
            # and its depth every frame).
            out_dir = Path(tempfile.mkdtemp(prefix=f"frame_{frame:05d}_", dir=self._dir))
            node = _file_output(tree, render_layers, out_dir, sockets)
            self._render(frame)
            camera = scene.camera  # markers bound to cameras switch it on frame_set
            self.orthographic.append(camera is not None and getattr(camera.data, "type", "") == "ORTHO")
            tree.nodes.remove(node)
            files = {name: next(out_dir.glob(f"{name}*.exr"), None) for name in sockets}
            missing = [name for name, path in files.items() if path is None]
            if missing:
                raise PassError(f"the compositor wrote no {', '.join(missing)} pass for frame {frame}")
            with self.timed("read"):
                extra = {}
                if ids:  # rank 0 of each Cryptomatte layer: the id hash of what covers the pixel
                    extra = {f"{k}_id": _read_pass(files[k])[:, :, 0] for k in ("object", "material")}
                    extra["position"] = _read_pass(files["position"])[:, :, :3]
                z, alpha = _read_pass(files["z"])[:, :, 0], _read_pass(files["alpha"])[:, :, 0]
                buffers.append(RenderBuffers(z=z, alpha=alpha, **extra))
            yield
        return buffers

    def _geometry_setup(self, ids: bool):
        """The copy set up for the geometry passes: its engine, view layer passes and compositor."""
        scene = self._copy
        scene.render.engine = "CYCLES"
        scene.cycles.samples = 1
        scene.cycles.use_denoising = False
        scene.cycles.device = "CPU"
        scene.cycles.filter_width = 0.01  # one ray through each pixel's centre: depth exact, planes stay planes
        # Z, positions, alpha and Cryptomatte ids are all of the camera ray's first hit: light bouncing further
        # only shades the Combined image, which is not used (the passes come out the same, bit for bit).
        scene.cycles.max_bounces = 0
        scene.render.film_transparent = True
        scene.render.use_compositing = True
        scene.render.filepath = ""
        layer = scene.view_layers[self.view_layer_name]
        layer.use_pass_z = True
        sockets = {"z": "Depth", "alpha": "Alpha"}
        if ids:  # line art's (positions: the geometry's folds, not the shading normals'); depth needs neither
            layer.use_pass_position = True
            layer.use_pass_cryptomatte_object = layer.use_pass_cryptomatte_material = True
            layer.pass_cryptomatte_depth = 2
            sockets.update(position="Position", object="CryptoObject00", material="CryptoMaterial00")
        tree = _compositor_tree(scene)
        if tree.name in bpy.data.node_groups:
            self._trees.append(tree)
        render_layers = tree.nodes.new("CompositorNodeRLayers")
        render_layers.scene = scene
        render_layers.layer = self.view_layer_name
        return tree, render_layers, sockets

    def _png_frames(self, frames: list[int], prefix: str):
        """Render `frames` with the copy's current engine to PNG; uint8 (h, w, 3) each. A generator: yields after
        each frame, returns the list."""
        scene = self._copy
        scene.render.film_transparent = False
        scene.render.use_compositing = False
        scene.render.dither_intensity = 0.0  # no noise: a flat image stays flat (an empty pass is told apart)
        settings = scene.render.image_settings
        if hasattr(settings, "media_type"):
            settings.media_type = "IMAGE"
        settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", "8"
        images = []
        for frame in frames:
            path = self._dir / f"{prefix}_{frame:05d}.png"
            scene.render.filepath = str(path)
            self._render(frame)
            with self.timed("read"):
                pixels = _read_image(path)[:, :, :3]
                images.append(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8))
            yield
        return images

    def _rgb(self, frames: list[int]):
        """A quick shaded render: Workbench, as the scene's viewport shading settings describe it (steps)."""
        self._copy.render.engine = "BLENDER_WORKBENCH"
        return (yield from self._png_frames(frames, "rgb"))

    def render_shaded(self, frames: list[int], samples: int) -> dict[int, np.ndarray]:
        """Cycles RGB at `samples` samples (training images closer to real footage than Workbench's)."""
        scene = self._copy
        scene.render.engine = "CYCLES"
        scene.cycles.samples = samples
        scene.cycles.device = "CPU"
        return dict(zip(frames, run_steps(self._png_frames(frames, "shaded")), strict=True))

    def render(self, modality: str, frames: list[int]) -> dict[int, np.ndarray]:
        """Condition images (uint8 (h, w, 3)) for `modality` at each timeline frame, all in one go."""
        return run_steps(self.render_steps(modality, frames))

    def render_steps(self, modality: str, frames: list[int]):
        """`render` as steps: a generator that yields after each frame's render (and once before the images are
        made from the buffers), so that no step blocks the UI longer than one render; returns what `render` does.
        Closing it between steps leaves nothing behind once the renderer's `with` ends."""
        if modality not in identifiers(MODALITIES):
            raise PassError(f"unknown pass {modality!r}")
        if modality == "rgb":
            images = yield from self._rgb(frames)
        else:
            buffers = yield from self._geometry_steps(frames, ids=modality == "lineart")
            with self.timed("process"):
                if modality == "depth":
                    images = depth_images(buffers, frames)
                else:
                    orthographic = self.orthographic
                    images = [lineart_image(b, orthographic=o) for b, o in zip(buffers, orthographic, strict=True)]
            if len(frames) > 1:
                yield  # the condition images of many frames (depth's ranges follow them) are a step of their own
        for frame, seconds in zip(frames, self.seconds_per_keyframe[-len(frames) :], strict=True):
            log.info("%s pass at frame %d: %.2f s", modality, frame, seconds)
        return dict(zip(frames, images, strict=True))


def render_passes(scene, modality: str, frames: list[int], width: int, height: int) -> dict[int, np.ndarray]:
    """Render `modality` at `frames`; the user's scene is left exactly as it was."""
    with PassRenderer(scene, width, height) as renderer:
        return renderer.render(modality, frames)
