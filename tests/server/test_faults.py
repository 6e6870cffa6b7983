"""Faults lose nothing: out of memory, exceptions and a full disk fail one job; the worker takes the next.

A real JobService on the tiny engine; the faults are raised at the edges we cannot reach here (the GPU's
allocator, the disk), by patching the engine call or the file writer.
"""

from __future__ import annotations

import base64
import errno
import time

import pytest
import torch

import server.jobs.execute as execute_module
from server.jobs.service import JobService
from tests.conftest import png_bytes, sketch


def fields(**changes):
    body = {
        "prompt": "x",
        "modality": "lineart",
        "num_frames": 4,
        "steps": 2,
        "seed": 1,
        "keyframes": [{"index": 0, "image": base64.b64encode(png_bytes(sketch())).decode()}],
    }
    body.update(changes)
    return body


def wait(service, job_id, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = service.get(job_id)
        if job.finished:
            return job
        time.sleep(0.02)
    raise TimeoutError(job_id)


@pytest.fixture
def service(engine, tiny_config, tmp_path):
    svc = JobService(tiny_config, engine, tmp_path, progress_bar=False)
    svc.start()
    yield svc
    svc.stop()


def fail_once(monkeypatch, target, name, error):
    real = getattr(target, name)
    calls = []

    def patched(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, patched)


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        MemoryError(),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes"),
    ],
    ids=["cuda", "python", "cpu-allocator"],
)
def test_out_of_memory_fails_the_job_with_a_hint_and_the_next_runs(service, engine, monkeypatch, error):
    fail_once(monkeypatch, engine, "generate", error)
    first, second = (service.submit(fields()).id for _ in range(2))
    failed = wait(service, first)
    assert (failed.status, failed.error_code) == ("failed", "out_of_memory")
    assert "fewer frames" in failed.error_message
    assert wait(service, second).status == "succeeded"


def test_an_exception_fails_only_its_job_with_its_message(service, engine, monkeypatch):
    fail_once(monkeypatch, engine, "generate", ValueError("scheduler exploded at step 3"))
    first, second = (service.submit(fields()).id for _ in range(2))
    failed = wait(service, first)
    assert failed.error_code == "generation_failed"
    assert failed.error_message == "ValueError: scheduler exploded at step 3"
    assert wait(service, second).status == "succeeded"


def test_disk_full_while_writing_fails_the_job_and_serves_no_partial_file(service, monkeypatch):
    real = execute_module.write_mp4

    def disk_full(frames, fps, path):
        tmp = path.with_name(f".{path.name}.partial")
        tmp.write_bytes(b"\x00" * 1000)  # half-written when the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(execute_module, "write_mp4", disk_full)  # the executor writes (jobs/execute.py)
    job_id = service.submit(fields()).id
    failed = wait(service, job_id)
    assert (failed.status, failed.error_code) == ("failed", "disk_full")
    folder = service.files.folder(job_id)
    assert not service.files.video(job_id).exists() and not service.files.frames(job_id).exists()
    assert not list(folder.glob("*.partial")) and not list(folder.glob(".*.partial"))
    assert service.files.image(job_id, "keyframes/0000.png").exists()  # the inputs are kept

    monkeypatch.setattr(execute_module, "write_mp4", real)
    assert wait(service, service.submit(fields()).id).status == "succeeded"


def test_retention_prunes_by_age_then_by_size_and_never_touches_queued_jobs(service, tiny_config):
    import dataclasses

    from server.jobs.retention import prune

    done = [service.submit(fields(seed=i)).id for i in range(3)]
    for job_id in done:
        wait(service, job_id)
    service.worker.stop()
    queued = service.submit(fields()).id
    size = service.files.size(done[0])
    assert size > 0

    keep_all = dataclasses.replace(tiny_config.retention, max_age_hours=0, max_total_mb=0)
    assert prune(service.store, service.files, keep_all) == []

    by_size = dataclasses.replace(keep_all, max_total_mb=(2.5 * size) / 2**20)
    assert prune(service.store, service.files, by_size) == [done[0]]  # oldest first, until it fits
    assert service.store.get(done[0]) is None and not service.files.folder(done[0]).exists()

    by_age = dataclasses.replace(keep_all, max_age_hours=1)
    assert prune(service.store, service.files, by_age, now=time.time() + 7200) == done[1:]
    assert service.store.get(queued).status == "queued"


def test_retention_drops_png_frames_after_an_hour_and_frames_come_back_from_the_video(service, tiny_config):
    """Frames are nearly all of a job's bytes (#15 item 7): after frames_max_age_hours (1 h) only the video and
    keyframes stay; GET …/frames/{n}.png then decodes the frame from the video."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from server.jobs.retention import prune

    job_id = service.submit(fields(num_frames=8, output_frames=24, fps=24, width=64, height=64)).id
    assert wait(service, job_id).status == "succeeded"
    files = service.files
    original = np.asarray(Image.open(files.frame(job_id, 5)), np.float32)
    other = np.asarray(Image.open(files.frame(job_id, 20)), np.float32)
    before = files.size(job_id)
    keep_all = dataclasses.replace(tiny_config.retention, max_age_hours=0, max_total_mb=0)

    assert prune(service.store, files, keep_all) == [] and files.frames(job_id).exists()  # fresh: kept
    assert prune(service.store, files, keep_all, now=time.time() + 3700) == []  # the job stays
    assert not files.frames(job_id).exists() and files.video(job_id).exists()
    after = files.size(job_id)
    assert after < before and service.store.get(job_id).status == "succeeded"

    decoded = np.asarray(Image.open(files.frame(job_id, 5)), np.float32)  # from the MP4, once, then kept
    assert decoded.shape == original.shape
    assert np.abs(decoded - original).mean() < np.abs(decoded - other).mean()
    assert sorted(p.name for p in files.frames(job_id).iterdir()) == ["0005.png"]


def test_a_failure_in_after_job_work_is_logged_and_the_next_job_runs(service, monkeypatch, caplog):
    """#32 item 8: retention's pruning once met a frame deleted under it; the exception ended the only worker
    thread and the server kept accepting jobs it would never run."""
    calls = []

    def failing_prune():
        calls.append(1)
        raise FileNotFoundError("frames/0003.png vanished")

    monkeypatch.setattr(service.worker, "after_job", failing_prune)
    first = service.submit(fields(seed=1)).id
    assert wait(service, first).status == "succeeded"
    second = service.submit(fields(seed=2)).id
    assert wait(service, second).status == "succeeded"
    deadline = time.monotonic() + 10
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(calls) == 2 and service.worker.alive
    assert "bookkeeping failed" in caplog.text
    assert service.health()["status"] == "ok"


def test_health_says_degraded_once_the_worker_is_gone(service):
    assert service.health()["status"] == "ok" and service.health()["problem"] is None
    service.worker.stop()
    health = service.health()
    assert health["status"] == "degraded" and "restart the server" in health["problem"]
    assert health["workers"][0]["state"] == "failed"


def test_job_sizes_tolerate_files_that_vanish_while_counted(service, tmp_path):
    """The size and frame pruning that retention runs count a file deleted under them as 0 bytes."""
    from server.jobs import files as files_module

    folder = tmp_path / "job"
    folder.mkdir()
    for i in range(4):
        (folder / f"{i:04d}.png").write_bytes(b"x" * 100)

    def vanishing(paths):
        for path in paths:
            path.unlink()  # deleted between the listing and the stat, as a concurrent prune does
            yield path

    assert files_module._total_size(vanishing(folder.iterdir())) == 0
    job_id = service.submit(fields()).id
    wait(service, job_id)
    frames = service.files.frames(job_id)
    assert service.files.size(job_id) > 0
    for path in list(frames.iterdir()):
        path.unlink()
    frames.rmdir()
    assert service.files.remove_frames(job_id) == 0 and service.files.size(job_id) > 0
