"""Live previews (#29): the step hook (engine/previews.py) on the tiny model, the store (jobs/previews.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from server.engine.previews import (
    SD15_LATENT_RGB_FACTORS,
    PreviewHook,
    estimate_x0,
    find_preview_decoder,
    load_taesd,
)
from server.engine.step_hooks import StepState
from server.engine.tiny import build_tiny_taesd
from server.jobs.files import JobFiles
from server.jobs.previews import Previews, read_preview
from server.weights.locate import SearchFolders
from tests.server.test_engine import make_request


def _state(latents, x0=None, noise_pred=None, next_timestep=None, scheduler=None, step=0, steps=4) -> StepState:
    noise = torch.zeros_like(latents) if noise_pred is None else noise_pred
    return StepState(step, steps, torch.tensor(999), next_timestep, latents, noise, x0, scheduler)


def test_the_linear_approximation_is_comfyuis_formula_frame_by_frame():
    x0 = torch.randn(1, 4, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    got = []
    PreviewHook(lambda step, image: got.append((step, image)))(_state(torch.zeros_like(x0), x0=x0, step=2))
    ((step, image),) = got
    assert step == 3 and image.dtype == np.uint8 and image.shape == (5, 3 * 7, 3)  # frames side by side
    factors = np.array(SD15_LATENT_RGB_FACTORS, dtype=np.float64)
    for f in range(3):
        rgb = np.einsum("chw,cr->hwr", x0[0, :, f].double().numpy(), factors)
        expected = np.round(np.clip((rgb + 1) / 2, 0, 1) * 255)
        tile = image[:, f * 7 : (f + 1) * 7].astype(np.float64)
        assert np.abs(tile - expected).max() <= 1  # float32 rounding at the .5 edges


def test_x0_from_the_noise_prediction_matches_ddims_own():
    """Where the step gives no x0 (DPM++ multistep, PNDM) it is computed from the noise prediction and the
    scheduler's alphas; on DDIM, which gives one, the two agree."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(set_alpha_to_one=False)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    sample, noise = torch.randn(1, 4, 2, 8, 8, generator=g), torch.randn(1, 4, 2, 8, 8, generator=g)
    t, following = scheduler.timesteps[3], scheduler.timesteps[4]
    out = scheduler.step(noise, t, sample)
    estimated = estimate_x0(_state(out.prev_sample, noise_pred=noise, next_timestep=following, scheduler=scheduler))
    torch.testing.assert_close(estimated, out.pred_original_sample, rtol=1e-4, atol=1e-4)
    clean = torch.randn(1, 4, 2, 8, 8)
    assert estimate_x0(_state(clean, noise_pred=noise, next_timestep=None, scheduler=scheduler)) is clean


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++ 2m"])
def test_a_job_with_previews_makes_the_same_frames_and_a_preview_per_step(engine, scheduler):
    request = make_request(steps=3, scheduler=scheduler)
    plain = engine.generate(request).frames
    previews = []
    hook = PreviewHook(lambda step, image: previews.append((step, image)))
    previewed = engine.generate(request, hooks=[hook]).frames
    np.testing.assert_array_equal(previewed, plain)  # bit for bit
    assert [s for s, _ in previews] == [1, 2, 3]
    assert all(image.shape == (64 // 8, 8 * 64 // 8, 3) for _, image in previews)
    assert not np.array_equal(previews[0][1], previews[-1][1])  # the estimate moves as the clip forms


def test_a_retake_previews_too(engine):
    """A retake's kept frames are set by the known-frames hook before the preview sees the step."""
    from server.jobs.execute import take_files
    from server.request.model import TAKE_FRAMES, TAKE_LATENTS, Retake

    take = take_files(engine.generate(make_request(steps=2)))
    retake = Retake("0" * 32, 2, 5, take[TAKE_LATENTS], take[TAKE_FRAMES])
    previews = []
    engine.generate(make_request(steps=2, retake=retake), hooks=[PreviewHook(lambda s, i: previews.append(s))])
    assert previews == [1, 2]


def test_taesd_tiny_from_the_released_file_layout(tmp_path, engine):
    """A tiny AutoencoderTiny written as ComfyUI's models/vae_approx/taesd_decoder is found there, loads back
    into diffusers' class with the same weights, and previews 8x larger in the same layout."""
    from diffusers import AutoencoderTiny

    root = tmp_path / "ComfyUI"
    path = build_tiny_taesd(root / "models" / "vae_approx")
    decoder = find_preview_decoder(SearchFolders(comfyui=str(root)), "cpu", torch.float32)
    assert decoder is not None
    with torch.random.fork_rng():
        torch.manual_seed(11)
        reference = AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4)
    latents = torch.randn(1, 4, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference.decode(latents[0].permute(1, 0, 2, 3)).sample.permute(0, 2, 3, 1)
    torch.testing.assert_close(decoder(latents), expected)
    assert load_taesd(path).model.decoder.state_dict().keys() == reference.decoder.state_dict().keys()
    pth = build_tiny_taesd(tmp_path / "pth", suffix=".pth")
    torch.testing.assert_close(load_taesd(pth)(latents), expected)

    request = make_request(steps=2)
    previews = []
    frames = engine.generate(request, hooks=[PreviewHook(lambda s, i: previews.append(i), decoder)]).frames
    np.testing.assert_array_equal(frames, engine.generate(request).frames)
    assert [i.shape for i in previews] == [(64, 8 * 64, 3)] * 2


def test_no_taesd_file_means_the_linear_approximation(tmp_path):
    assert find_preview_decoder(SearchFolders(folders=[str(tmp_path)]), "cpu", torch.float32) is None
    (tmp_path / "taesd_decoder.safetensors").write_bytes(b"not weights")
    assert find_preview_decoder(SearchFolders(folders=[str(tmp_path)]), "cpu", torch.float32) is None


def test_the_store_keeps_the_newest_preview_in_memory_and_in_the_jobs_folder(tmp_path):
    files = JobFiles(tmp_path)
    previews = Previews(files)
    job = "a" * 32
    assert previews.latest(job) is None and previews.step(job) is None
    sink = previews.sink(job, 4)
    for step in (1, 2, 3):
        sink(step, np.full((8, 32, 3), step * 40, dtype=np.uint8))
    previews.finish(job)
    latest = previews.latest(job)  # from the file now
    assert latest is not None and (latest.step, latest.frames) == (3, 4) and previews.step(job) == 3
    image = np.asarray(Image.open(io.BytesIO(latest.png)))
    assert image.shape == (8, 32, 3) and (image == 120).all()
    assert read_preview(files.folder(job) / "preview.png") == latest
    files.remove(job)
    assert previews.latest(job) is None
