"""Training clips on disk, and turning videos into them with estimated depth.

A clip is a folder: rgb/0000.png … (the frames), cond/0000.png … (the condition images, for depth exactly what
the add-on's depth pass makes) and caption.txt. `python -m sparsectrl_blender.dataset` renders them from .blend
files; `prepare_videos` cuts videos into them, estimating depth with a transformers model loaded from disk and
normalising it with the add-on's own function (sparsectrl_passes/process.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..engine.conditions import fit_to_size

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi")


class DataError(ValueError):
    """Training data that cannot be used; the message names the folder or file."""


@dataclass(frozen=True)
class Clip:
    folder: Path
    rgb: list[Path]
    cond: list[Path]
    caption: str


def find_clips(root: Path, min_frames: int, default_caption: str = "") -> list[Clip]:
    clips = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        rgb, cond = sorted((folder / "rgb").glob("*.png")), sorted((folder / "cond").glob("*.png"))
        if not rgb:
            continue
        if len(rgb) != len(cond):
            raise DataError(f"{folder}: {len(rgb)} rgb frames but {len(cond)} cond frames")
        if len(rgb) < min_frames:
            log.warning("skipping %s: %d frames, fewer than [data] frames = %d", folder, len(rgb), min_frames)
            continue
        caption_file = folder / "caption.txt"
        caption = caption_file.read_text().strip() if caption_file.is_file() else default_caption
        clips.append(Clip(folder, rgb, cond, caption))
    if not clips:
        raise DataError(f"no usable clips in {root} (folders with rgb/ and cond/ PNGs, >= {min_frames} frames)")
    return clips


def _load(paths: list[Path], width: int, height: int) -> torch.Tensor:
    """(frames, 3, height, width) in [0, 1], each image fitted like a keyframe (engine/conditions.py: the
    official code's centre crop to the aspect ratio, then a bilinear resize), so training sees what jobs see."""
    images = []
    for path in paths:
        with Image.open(path) as img:
            images.append(np.asarray(fit_to_size(img.convert("RGB"), width, height)))
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


def sample_clip(clip: Clip, frames: int, width: int, height: int, generator: torch.Generator):
    """`frames` consecutive frames from a random start: (rgb, cond) each (frames, 3, H, W) in [0, 1]."""
    start = int(torch.randint(0, len(clip.rgb) - frames + 1, (1,), generator=generator))
    window = slice(start, start + frames)
    return _load(clip.rgb[window], width, height), _load(clip.cond[window], width, height)


class Batches(torch.utils.data.Dataset):
    """Micro-batch number i = (step, micro) of a run, drawn only from a generator seeded with (seed, step, micro):
    clips, windows, masks, caption dropout, noise, timesteps. Any worker, in any order, after any resume, draws the
    same batch for the same i, so data loading can run ahead in worker processes without changing the run."""

    def __init__(
        self,
        clips: list[Clip],
        data: dict,
        masks: dict,
        batch_size: int,
        accumulation: int,
        seed: int,
        timesteps: int,
        steps: int,
    ):
        self.clips, self.data, self.masks = clips, data, masks
        self.batch_size, self.accumulation, self.seed = batch_size, accumulation, seed
        self.timesteps, self.steps = timesteps, steps

    def __len__(self) -> int:
        return self.steps * self.accumulation

    def __getitem__(self, i: int) -> dict:
        return self.draw(*divmod(i, self.accumulation))

    def draw(self, step: int, micro: int = 0) -> dict:
        from .masks import sample_mask

        data, masks = self.data, self.masks
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step * 1_009 + micro)
        rgbs, conds, ms, captions = [], [], [], []
        for _ in range(self.batch_size):
            clip = self.clips[int(torch.randint(0, len(self.clips), (1,), generator=g))]
            rgb, cond = sample_clip(clip, data["frames"], data["width"], data["height"], g)
            mask = sample_mask(data["frames"], masks, masks["max_random"], g)
            dropped = float(torch.rand(1, generator=g)) < data["caption_dropout"]
            rgbs.append(rgb), conds.append(cond), ms.append(mask), captions.append("" if dropped else clip.caption)
        rgb, cond, mask = torch.stack(rgbs), torch.stack(conds), torch.stack(ms)  # (B, F, 3, H, W), (B, F)
        b, f = mask.shape
        return {
            "rgb": rgb,
            "cond": cond,
            "mask": mask,
            "captions": captions,
            "noise": torch.randn((b, 4, f, data["height"] // 8, data["width"] // 8), generator=g),
            "timesteps": torch.randint(0, self.timesteps, (b,), generator=g),
        }


def write_synthetic_clips(root: Path, clips: int = 2, frames: int = 8, size: int = 64) -> Path:
    """Clips of an orange box sliding over blue with a depth-like condition (the box white on black): for
    benchmarks and smoke runs, where only the shapes matter."""
    for c in range(clips):
        for i in range(frames):
            x = (6 + i * 4 + c * 10) * size // 64
            box = (slice(20 * size // 64, 40 * size // 64), slice(x, x + 16 * size // 64))
            rgb = np.zeros((size, size, 3), np.uint8)
            rgb[:] = (30, 60, 90)
            rgb[box] = (220, 120, 40)
            cond = np.zeros((size, size, 3), np.uint8)
            cond[box] = 255
            for kind, pixels in (("rgb", rgb), ("cond", cond)):
                (root / f"clip{c}" / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / f"clip{c}" / kind / f"{i:04d}.png")
        (root / f"clip{c}" / "caption.txt").write_text("an orange box sliding")
    return root


# ---------------------------------------------------------------------------------------------------------------
# Videos -> clips with estimated depth


def depth_frames_from_inverse_depth(inverse_depth: list[np.ndarray]) -> list[np.ndarray]:
    """Estimated (relative) inverse depth of a clip's consecutive frames -> condition images through the add-on's
    own depth function (near = white, linear in inverse depth, each frame's range following the clip's frames
    slowly: what the add-on's pass makes from camera Z)."""
    from sparsectrl_passes.process import RenderBuffers, depth_images

    buffers = []
    for inv in inverse_depth:
        z = 1.0 / np.maximum(inv.astype(np.float64), 1e-6)  # any scale: the clip's own range normalises it
        buffers.append(RenderBuffers(z=z, alpha=np.ones(z.shape)))
    return depth_images(buffers)


def load_depth_estimator(path: str, device: torch.device):
    """A transformers depth-estimation pipeline from a local folder (never the hub)."""
    from transformers import pipeline

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"[data] depth_model {folder} is not a folder (a transformers depth-estimation model)")
    try:
        return pipeline("depth-estimation", model=str(folder), device=device, local_files_only=True)
    except Exception as e:
        raise DataError(f"could not load the depth model in {folder}: {type(e).__name__}: {e}") from e


def prepare_videos(
    videos: Path, clips: Path, depth_model: str, frames: int, stride: int, device: torch.device, caption: str = ""
) -> list[Path]:
    """Cut each video into clips of `frames` kept frames (every `stride`-th) with estimated depth, cached:
    a video already prepared with the same model and settings is skipped. Returns the clip folders."""
    import av

    videos, clips = Path(videos).expanduser(), Path(clips).expanduser()
    files = sorted(p for p in videos.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise DataError(f"no videos ({', '.join(VIDEO_SUFFIXES)}) in {videos}")
    estimator = None
    out = []
    for video in files:
        stamp = {
            "video": str(video.resolve()),
            "mtime_ns": video.stat().st_mtime_ns,
            "depth_model": str(Path(depth_model).expanduser().resolve()),
            "frames": frames,
            "stride": stride,
        }
        existing = sorted(clips.glob(f"{video.stem}-*/source.json"))
        if existing and all(json.loads(p.read_text()) == stamp for p in existing):
            out += [p.parent for p in existing]
            continue
        estimator = estimator or load_depth_estimator(depth_model, device)
        try:
            with av.open(str(video)) as container:
                decoded = [f.to_image() for f in container.decode(container.streams.video[0])]
        except (av.error.FFmpegError, OSError) as e:
            raise DataError(f"{video}: cannot be decoded ({e})") from e
        kept = decoded[::stride]
        text = caption
        if video.with_suffix(".txt").is_file():
            text = video.with_suffix(".txt").read_text().strip()
        made = 0
        for n, first in enumerate(range(0, len(kept) - frames + 1, frames)):
            chunk = kept[first : first + frames]
            inverse = [np.asarray(estimator(img)["predicted_depth"], dtype=np.float32).squeeze() for img in chunk]
            inverse = [
                np.asarray(Image.fromarray(d).resize(img.size, Image.Resampling.BILINEAR))
                for d, img in zip(inverse, chunk, strict=True)
            ]
            folder = clips / f"{video.stem}-{n:04d}"
            (folder / "rgb").mkdir(parents=True, exist_ok=True)
            (folder / "cond").mkdir(exist_ok=True)
            for i, (img, depth) in enumerate(zip(chunk, depth_frames_from_inverse_depth(inverse), strict=True)):
                img.convert("RGB").save(folder / "rgb" / f"{i:04d}.png")
                Image.fromarray(depth).save(folder / "cond" / f"{i:04d}.png")
            (folder / "caption.txt").write_text(text)
            (folder / "source.json").write_text(json.dumps(stamp))
            out.append(folder)
            made += 1
        log.info("prepared %s: %d clips of %d frames with estimated depth", video.name, made, frames)
    return out
