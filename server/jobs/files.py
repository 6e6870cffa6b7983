"""Where a job's files live under the data dir. Job ids are checked before any path is built from them.

A succeeded job holds its keyframes (the PNGs sent, a few kB), `video.mp4` (what the add-on downloads) and
`frames/NNNN.png`, every delivered frame losslessly: nearly all of the space (a 2,360-frame 512x288 job: 750 MB
of frames beside a 15 MB video). Retention drops the frames once a job is an hour old (server/jobs/retention.py);
a frame asked for afterwards is decoded from the video once and kept.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_JOB_ID = re.compile(r"[0-9a-f]{32}")


def is_job_id(value: str) -> bool:
    """32 lowercase hex digits and nothing else (a full match: `$` would let a trailing newline through)."""
    return isinstance(value, str) and _JOB_ID.fullmatch(value) is not None


class JobFiles:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def image(self, job_id: str, path: str) -> Path:
        """A condition image of the job (its relative path as request.model.image_paths names it)."""
        relative = Path(path)
        if relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"not a path inside a job's folder: {path!r}")
        return self.folder(job_id) / relative

    def read_image(self, job_id: str, path: str) -> bytes:
        return self.image(job_id, path).read_bytes()

    def video(self, job_id: str) -> Path:
        return self.folder(job_id) / "video.mp4"

    def frames(self, job_id: str) -> Path:
        return self.folder(job_id) / "frames"

    def frame(self, job_id: str, n: int) -> Path:
        """Frame n's PNG; when the frames were pruned, decoded from the video (once, then kept)."""
        path = self.frames(job_id) / f"{n:04d}.png"
        if not path.exists() and self.video(job_id).exists():
            self._frame_from_video(job_id, n, path)
        return path

    def _frame_from_video(self, job_id: str, n: int, path: Path) -> None:
        import av
        from PIL import Image

        with av.open(str(self.video(job_id))) as container:
            for i, decoded in enumerate(container.decode(video=0)):
                if i == n:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(f".{path.name}.partial")
                    Image.fromarray(decoded.to_ndarray(format="rgb24")).save(tmp, format="PNG")
                    tmp.replace(path)
                    return

    def remove_frames(self, job_id: str) -> int:
        """Drop a job's PNG frames (the video stays; frames are decoded from it on request). Returns bytes freed."""
        folder = self.frames(job_id)
        if not folder.exists():
            return 0
        freed = _total_size(folder.iterdir() if folder.exists() else ())
        shutil.rmtree(folder, ignore_errors=True)
        return freed

    def save_images(self, job_id: str, pngs: dict[str, bytes]) -> None:
        """The request's condition images, by their relative paths (GenerationRequest.to_record)."""
        for relative, data in pngs.items():
            path = self.image(job_id, relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def write_outputs(
        self, job_id: str, video: bytes, frames: dict[str, bytes], take: dict[str, bytes] | None = None
    ) -> None:
        """A job's results that came as bytes (from a cluster worker), written as run_job writes them: the take
        (request.model.TAKE_LATENTS, TAKE_FRAMES), frames, then the video, each under a partial name and renamed
        when whole, so no reader sees half a file."""
        folder = self.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        for relative, data in (take or {}).items():
            path = self.image(job_id, relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f".{path.name}.partial")
            partial.write_bytes(data)
            partial.replace(path)
        if frames:
            partial = folder / ".frames.partial"
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
            for name, data in frames.items():
                if Path(name).name != name or not name.endswith(".png"):
                    raise ValueError(f"not a frame file name: {name!r}")
                (partial / name).write_bytes(data)
            shutil.rmtree(self.frames(job_id), ignore_errors=True)
            partial.rename(self.frames(job_id))
        partial_video = folder / ".video.mp4.partial"
        partial_video.write_bytes(video)
        partial_video.replace(self.video(job_id))

    def remove_outputs(self, job_id: str) -> None:
        """Drop a job's video and frames (kept: its keyframes, to look at or resubmit)."""
        shutil.rmtree(self.frames(job_id), ignore_errors=True)
        for path in self.folder(job_id).glob("*.mp4*"):
            path.unlink(missing_ok=True)
        for path in self.folder(job_id).glob(".*.partial"):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def size(self, job_id: str) -> int:
        folder = self.folder(job_id)
        return _total_size(folder.rglob("*")) if folder.exists() else 0


def _total_size(paths) -> int:
    """The bytes of the files among `paths`; a file deleted meanwhile (a frame pruned, a partial file renamed)
    counts as 0 rather than raising."""
    total = 0
    try:
        for path in paths:
            try:
                if path.is_file():
                    total += path.stat().st_size
            except FileNotFoundError:
                continue
    except FileNotFoundError:  # the folder itself went while it was listed
        pass
    return total
