"""What a failed job's record says: an exception from run_job as an error code and a sentence for the artist.

Every runner (the local worker thread, a cluster worker) files failures through `describe_failure`, so a job
that runs out of memory reads the same wherever it ran.
"""

from __future__ import annotations

import errno

from ..engine.engine import ModalityUnavailable

OOM_HINT = (
    "out of memory: try fewer frames, a smaller width/height, or a lower-memory mode "
    "(see docs/troubleshooting.md); the server has freed the memory and takes the next job"
)
DISK_FULL_HINT = "the disk holding the data dir is full: free space or lower [retention] in the config"


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text


def describe_failure(error: BaseException) -> tuple[str, str]:
    """(error code, message) for a job's record; `generation_failed` carries the exception's own words."""
    if isinstance(error, ModalityUnavailable):
        return "modality_unavailable", str(error)
    if is_disk_full(error):
        return "disk_full", DISK_FULL_HINT
    if is_out_of_memory(error):
        return "out_of_memory", OOM_HINT
    return "generation_failed", f"{type(error).__name__}: {error}"
