"""Where a job's files live under the data dir. Job ids are checked before any path is built from them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value))


class JobFiles:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        return self.root / job_id

    def keyframe(self, job_id: str, index: int) -> Path:
        return self.folder(job_id) / "keyframes" / f"{index:04d}.png"

    def video(self, job_id: str) -> Path:
        return self.folder(job_id) / "video.mp4"

    def frames(self, job_id: str) -> Path:
        return self.folder(job_id) / "frames"

    def frame(self, job_id: str, n: int) -> Path:
        return self.frames(job_id) / f"{n:04d}.png"

    def save_keyframes(self, job_id: str, pngs: dict[int, bytes]) -> None:
        for index, data in pngs.items():
            path = self.keyframe(job_id, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def remove_outputs(self, job_id: str) -> None:
        """Drop a job's video and frames (kept: its keyframes, to look at or resubmit)."""
        shutil.rmtree(self.frames(job_id), ignore_errors=True)
        for path in self.folder(job_id).glob("*.mp4*"):
            path.unlink(missing_ok=True)
        for path in self.folder(job_id).glob(".*.partial"):
            path.unlink(missing_ok=True)

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def size(self, job_id: str) -> int:
        folder = self.folder(job_id)
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0
