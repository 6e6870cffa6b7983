"""The clip forming while a job runs (#29): the server's newest preview on the previs scene's Sequencer (bpy).

The server sends, at each denoising step, every generated frame side by side in one PNG (docs/api.md, GET
/v1/jobs/{id}/preview). Its tiles are written as small PNGs to a temporary folder and shown as an image strip at
the shot's span, where the final strip will be, each shot frame showing the generated frame the final shows
there (core/frame_mapping.output_positions: the server's retiming), on a free channel above the shot. A new
preview rebuilds the strip; the final strip replaces it, a cancel or a failure removes it (`clear`).

Nothing of it reaches a saved .blend: before a save the strip and the panel's image are removed, after it they
come back (save_pre / save_post), so no file refers to the temporary folder. Main thread only.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import bpy
import numpy as np

from ..core.frame_mapping import output_positions
from ..core.png import encode_png

LIVE_KEY = "sparsectrl_forming"  # on the placeholder strip
IMAGE_NAME = "SparseCtrl forming"  # the panel's image: the newest preview's middle frame


def decode_tiles(png: bytes, frames: int, folder: Path) -> list[np.ndarray]:
    """The preview PNG's `frames` equal tiles, left to right, as uint8 (h, w, 3) top row first (read by
    Blender: the add-on has no image library)."""
    path = folder / "preview.png"
    path.write_bytes(png)
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        image.colorspace_settings.name = "Non-Color"  # the PNG's bytes as they are
        width, height = image.size
        data = np.empty(width * height * image.channels, np.float32)
        image.pixels.foreach_get(data)
    finally:
        bpy.data.images.remove(image)
    pixels = np.flipud(data.reshape(height, width, -1))[:, :, :3]
    pixels = np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    if frames < 1 or width % frames:
        raise ValueError(f"a preview {width} px wide does not split into {frames} frames")
    tile = width // frames
    return [pixels[:, i * tile : (i + 1) * tile] for i in range(frames)]


def shown_frames(num_frames: int, start: int, end: int, mapping: dict[int, int]) -> list[int]:
    """The generated frame the final clip shows at each shot frame start..end (the nearest to its position)."""
    anchors = [(frame - start, index) for frame, index in mapping.items()]
    positions = output_positions(num_frames, end - start + 1, anchors)
    return [min(num_frames - 1, int(p + 0.5)) for p in positions]


class LivePreview:
    """The one clip forming (one job runs at a time): its tiles, where its strip goes, the step it shows."""

    def __init__(self):
        self.folder: Path | None = None
        self.step = self.total = 0
        self.files: list[str] = []  # per shot frame: the tile file shown there
        self.place: tuple[str, int, int] | None = None  # (previs scene, first frame there, lowest channel)
        self.middle: np.ndarray | None = None  # the newest preview's middle frame (the panel's image)

    def show(self, target, shot_offset: tuple[int, int], prepared, preview: tuple[int, int, bytes], total: int):
        """Show `preview` (step, frames, PNG) of the job `prepared` on `target` (its previs scene), shifted as
        the shot's Scene strip there (strips.shot_offset)."""
        step, frames, png = preview
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="sparsectrl_live_"))
        tiles = decode_tiles(png, frames, self.folder)
        names = []
        for i, tile in enumerate(tiles):
            names.append(f"s{step:04d}_f{i:03d}.png")
            (self.folder / names[-1]).write_bytes(encode_png(np.ascontiguousarray(tile)))
        sources = shown_frames(frames, prepared.start, prepared.end, prepared.mapping)
        self.files = [names[i] for i in sources]
        shift, lowest = shot_offset
        self.place = (target.name, prepared.start + shift, lowest)
        self.step, self.total = step, total
        self.middle = tiles[len(tiles) // 2]
        self._panel_image(self.middle)
        self._strip()
        for old in self.folder.glob("s*_f*.png"):  # the previous steps' tiles (the strip was rebuilt)
            if old.name not in names:
                old.unlink(missing_ok=True)

    def _panel_image(self, tile: np.ndarray) -> None:
        height, width, _ = tile.shape
        image = bpy.data.images.get(IMAGE_NAME)
        if image is not None and tuple(image.size) != (width, height):
            bpy.data.images.remove(image)
            image = None
        if image is None:
            image = bpy.data.images.new(IMAGE_NAME, width, height)  # generated: no file, no user, never saved
        rgba = np.concatenate([tile, np.full((height, width, 1), 255, np.uint8)], axis=2)
        image.pixels.foreach_set((np.flipud(rgba).astype(np.float32) / 255).ravel())
        image.update()
        if image.preview is not None:
            image.preview.reload()

    def panel_image(self):
        return bpy.data.images.get(IMAGE_NAME) if self.step else None

    def _strip(self) -> None:
        """The image strip, made anew: one element per shot frame."""
        from .strips import _strips, first_free_channel

        _remove_strips()
        target = bpy.data.scenes.get(self.place[0]) if self.place else None
        if target is None or not self.files:
            return
        first, lowest = self.place[1], self.place[2]
        channel = first_free_channel(target, first, first + len(self.files) - 1, lowest=lowest)
        path = str(self.folder / self.files[0])
        strips = _strips(target)
        try:
            strip = strips.new_image("SparseCtrl forming", path, channel, first, fit_method="FIT")
        except TypeError:  # a Blender without fit_method
            strip = strips.new_image("SparseCtrl forming", path, channel, first)
        for name in self.files[1:]:
            strip.elements.append(name)
        strip[LIVE_KEY] = True

    def clear(self) -> None:
        """Remove the strip, the panel's image and the tiles (the final strip came, or the job ended without)."""
        _remove_strips()
        image = bpy.data.images.get(IMAGE_NAME)
        if image is not None:
            bpy.data.images.remove(image)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.__init__()


def forming_strips() -> list:
    """The placeholder strips in every scene (one at most, unless a file was saved by an older version)."""
    from .strips import _all_strips

    return [s for scene in bpy.data.scenes for s in _all_strips(scene) if LIVE_KEY in s.keys()]


def _remove_strips() -> None:
    for strip in forming_strips():
        editor = strip.id_data.sequence_editor
        (editor.strips if hasattr(editor, "strips") else editor.sequences).remove(strip)


LIVE = LivePreview()


@bpy.app.handlers.persistent
def _save_pre(*_args) -> None:
    _remove_strips()  # nothing of the clip forming is saved: no reference to the temporary tiles
    image = bpy.data.images.get(IMAGE_NAME)
    if image is not None:
        bpy.data.images.remove(image)


@bpy.app.handlers.persistent
def _save_post(*_args) -> None:
    if LIVE.files:
        LIVE._strip()
        LIVE._panel_image(LIVE.middle)


@bpy.app.handlers.persistent
def _load_pre(*_args) -> None:
    LIVE.clear()  # another file: its scenes are not the job's


HANDLERS = (("save_pre", _save_pre), ("save_post", _save_post), ("load_pre", _load_pre))


def register() -> None:
    for name, handler in HANDLERS:
        if handler not in getattr(bpy.app.handlers, name):
            getattr(bpy.app.handlers, name).append(handler)


def unregister() -> None:
    for name, handler in HANDLERS:
        while handler in getattr(bpy.app.handlers, name):
            getattr(bpy.app.handlers, name).remove(handler)
    LIVE.clear()
