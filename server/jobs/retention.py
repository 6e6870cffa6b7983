"""Pruning old results so a server running for weeks does not fill its disk.

Finished jobs older than [retention] max_age_hours, then the oldest finished jobs while all job files take
more than max_total_mb, lose their record and files (their id answers 404 afterwards). Queued and running
jobs are never touched.

Before that, a finished job's PNG frames (a lossless copy of every delivered frame, nearly all of a job's bytes:
750 MB for a 2,360-frame 512x288 job, beside its 15 MB video) are dropped once the job finished
`frames_max_age_hours` ago (1 h unless the config names it): the video, which the add-on downloads, stays, and
GET …/frames/{n}.png decodes the frame from it afterwards.
"""

from __future__ import annotations

import logging
import time

from ..config import Retention
from .files import JobFiles
from .store import JobStore

log = logging.getLogger(__name__)

FRAMES_MAX_AGE_HOURS = 1.0


def prune(store: JobStore, files: JobFiles, retention: Retention, now: float | None = None) -> list[str]:
    """Apply `retention`; returns the ids removed, oldest first."""
    now = time.time() if now is None else now
    finished = store.finished_oldest_first()
    removed = []
    if retention.max_age_hours > 0:
        cutoff = now - retention.max_age_hours * 3600
        for job in finished:
            if (job.finished_at or job.created_at) < cutoff:
                removed.append(job.id)
    frames_hours = getattr(retention, "frames_max_age_hours", FRAMES_MAX_AGE_HOURS)
    if frames_hours and frames_hours > 0:
        frames_cutoff = now - frames_hours * 3600
        freed = sum(
            files.remove_frames(job.id)
            for job in finished
            if job.id not in removed and (job.finished_at or job.created_at) < frames_cutoff
        )
        if freed:
            log.info(
                "retention: dropped %.1f MB of PNG frames older than %g h (videos kept)", freed / 2**20, frames_hours
            )
    if retention.max_total_mb > 0:
        budget = retention.max_total_mb * 2**20
        sizes = {job.id: files.size(job.id) for job in finished if job.id not in removed}
        total = sum(sizes.values())
        for job in finished:
            if total <= budget:
                break
            if job.id in sizes:
                removed.append(job.id)
                total -= sizes[job.id]
    for job_id in removed:
        if store.delete(job_id):
            files.remove(job_id)
    if removed:
        log.info("retention: removed %d old job(s)", len(removed))
    return removed
