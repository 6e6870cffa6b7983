"""The executor seam (server/jobs/execute.py): generate, deliver, write — what the worker and the CLI both run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from server.engine.engine import JobCancelled
from server.jobs.execute import JobOutputs, run_job
from server.request.model import Keyframe
from server.video.encode import read_video
from tests.conftest import sketch
from tests.server.test_engine import make_request


def test_run_job_writes_the_delivered_clip_and_its_frames(engine, tmp_path):
    keyframes = [Keyframe.of_image(0, sketch(), 0), Keyframe.of_image(7, sketch(shift=9), 20)]
    request = make_request(steps=2, keyframes=keyframes, output_frames=24, output_width=96, output_height=80)
    outputs = JobOutputs(video=tmp_path / "clip.mp4", frames=tmp_path / "frames")
    steps = []
    result = run_job(engine, request, outputs, on_step=lambda s, t: steps.append((s, t)))
    assert steps == [(1, 2), (2, 2)]
    assert result.frames.shape == (24, 80, 96, 3)  # delivered: retimed to 24 frames, scaled to 96x80
    pngs = sorted(outputs.frames.glob("*.png"))
    assert len(pngs) == 24
    np.testing.assert_array_equal(np.asarray(Image.open(pngs[20]).convert("RGB")), result.frames[20])
    video, fps = read_video(outputs.video)
    assert video.shape == (24, 80, 96, 3) and fps == request.fps


def test_run_job_without_frames_folder_writes_only_the_video(engine, tmp_path):
    run_job(engine, make_request(steps=1), JobOutputs(video=tmp_path / "clip.mp4"))
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_a_cancel_passes_through_and_writes_nothing(engine, tmp_path):
    outputs = JobOutputs(video=tmp_path / "clip.mp4", frames=tmp_path / "frames")
    with pytest.raises(JobCancelled):
        run_job(engine, dataclasses.replace(make_request(), steps=3), outputs, should_cancel=lambda: True)
    assert list(tmp_path.iterdir()) == []
