"""The generation engine: one loaded model, a SparseCtrl encoder per modality, one request at a time.

Generation is diffusers' AnimateDiffSparseControlNetPipeline, built per request around the already-loaded
components (cheap: no weights are copied), so the encoder and scheduler can change between requests without
reloading the base. The engine adds what a server needs around it: image fitting, determinism, progress,
cancellation between steps, and giving memory back after every job. It stops at the generated frames, as
diffusers' pipelines do: scaling drafts up and retiming to the shot is delivery (video/deliver.py), and
jobs/execute.py runs the two in order.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import LongVideo, Performance
from .conditions import fit_to_size
from .models import LoadedModel
from .motion_modules import use_motion_modules
from .performance import apply_performance
from .request import GenerationRequest
from .schedulers import build_scheduler
from .windowed import generate_windowed

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


class JobCancelled(Exception):
    """Raised from the step callback when the job was cancelled; the pipeline unwinds through it."""


class ModalityUnavailable(ValueError):
    def __init__(self, modality: str, available: list[str]):
        self.modality, self.available = modality, available
        super().__init__(
            f"no condition encoder is configured for modality '{modality}'; "
            f"available: {', '.join(available) if available else 'none'}"
        )


@dataclass(frozen=True)
class GenerationResult:
    frames: np.ndarray  # uint8, (num_frames, height, width, 3): generated (run_job: delivered)
    seed: int
    seconds: float
    peak_memory_bytes: int | None  # accelerator peak during the job; None on CPU


def random_seed() -> int:
    return random.SystemRandom().randrange(0, 2**32)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class Engine:
    def __init__(
        self,
        model: LoadedModel,
        scheduler_overrides: dict[str, Any],
        long_video: LongVideo,
        keep_encoders_on_device: bool = False,
        performance: Performance | None = None,
        compile_cache: Path | None = None,
    ):
        self.model = model
        self.scheduler_overrides = dict(scheduler_overrides)
        self.long_video = long_video
        if performance is not None:
            apply_performance(model, performance, compile_cache)
        self.keep_encoders_on_device = keep_encoders_on_device
        self._active_modality: str | None = None

    @property
    def modalities(self) -> list[str]:
        return self.model.modalities

    @property
    def device(self) -> torch.device:
        return self.model.device

    def _activate_encoder(self, modality: str):
        """The encoder for `modality` on the device; unless all are kept there, the previous one leaves it."""
        encoders = self.model.encoders
        if modality not in encoders:
            raise ModalityUnavailable(modality, self.modalities)
        if self.model.offload != "none":  # diffusers' offload hooks move it for the job
            return encoders[modality]
        previous = self._active_modality
        if previous not in (None, modality) and not self.keep_encoders_on_device:
            encoders[previous].to("cpu")
        self._active_modality = modality
        return encoders[modality].to(self.device)

    def build_pipeline(self, modality: str, scheduler: str):
        """diffusers' SparseCtrl pipeline around the loaded components, with this request's encoder and scheduler."""
        from diffusers import AnimateDiffSparseControlNetPipeline

        m = self.model
        pipe = AnimateDiffSparseControlNetPipeline(
            vae=m.vae,
            text_encoder=m.text_encoder,
            tokenizer=m.tokenizer,
            unet=m.unet,
            motion_adapter=None,  # already merged into m.unet (a UNetMotionModel)
            controlnet=self._activate_encoder(modality),
            scheduler=build_scheduler(scheduler, m.scheduler_config, self.scheduler_overrides),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _use_loras(self, pipe, loras) -> None:
        """Turn on exactly this request's LoRAs (peft adapters loaded at start) at their scales."""
        if not self.model.loras:
            return
        if not loras:
            pipe.disable_lora()
            return
        pipe.enable_lora()
        pipe.set_adapters([name for name, _ in loras], [float(scale) for _, scale in loras])

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        should_cancel: CancelCheck | None = None,
    ) -> GenerationResult:
        """Run one request to frames. Raises JobCancelled if `should_cancel()` turns true between steps."""
        started = time.perf_counter()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

        # 1. Pipeline with this request's encoder, scheduler and LoRAs (and the draft motion module, copied into the
        #    UNet's motion layers for this job, before any offload hooks take the weights).
        draft_motion = request.quality == "draft" and self.model.has_draft_adapter
        if draft_motion:
            use_motion_modules(self.model.unet, self.model.motion_adapters["draft"])
        try:
            pipe = self.build_pipeline(request.modality, request.scheduler)
            self._use_loras(pipe, request.loras)
            if self.model.offload == "model":
                pipe.enable_model_cpu_offload(device=self.device)
            elif self.model.offload == "sequential":
                pipe.enable_sequential_cpu_offload(device=self.device)
        except BaseException:
            if draft_motion:
                use_motion_modules(self.model.unet, self.model.motion_adapters["final"])
            raise

        # 2. Keyframes in index order, each fitted to the generation size.
        keyframes = sorted(request.keyframes, key=lambda k: k.index)
        images = [fit_to_size(k.image, request.width, request.height) for k in keyframes]
        indices = [k.index for k in keyframes]

        # 3. Progress and cancellation between denoising steps.
        def step_end(_pipe, step: int, _timestep, callback_kwargs):
            if on_step is not None:
                on_step(step + 1, request.steps)
            if should_cancel is not None and should_cancel():
                raise JobCancelled()
            return callback_kwargs

        # 4. Denoise and decode: diffusers' pipeline as it is for one window's worth of frames; longer clips in
        #    context windows. The seed drives the request's generator and, isolated by fork_rng, the global RNG
        #    too: the RGB encoder's VAE encoding samples from it, and it must repeat as well.
        lv = self.long_video
        try:
            with torch.random.fork_rng(devices=[self.device] if cuda else []):
                torch.manual_seed(request.seed)
                generator = torch.Generator(device=self.device).manual_seed(request.seed)
                if request.num_frames <= lv.window_length:
                    output = pipe(
                        prompt=request.prompt,
                        negative_prompt=request.negative_prompt or None,
                        num_frames=request.num_frames,
                        width=request.width,
                        height=request.height,
                        num_inference_steps=request.steps,
                        guidance_scale=request.guidance_scale,
                        conditioning_frames=images,
                        controlnet_frame_indices=indices,
                        controlnet_conditioning_scale=request.conditioning_scale,
                        generator=generator,
                        output_type="np",
                        callback_on_step_end=step_end,
                    )
                    generated = output.frames[0]
                    del output
                else:
                    generated = generate_windowed(
                        pipe,
                        prompt=request.prompt,
                        negative_prompt=request.negative_prompt or None,
                        num_frames=request.num_frames,
                        width=request.width,
                        height=request.height,
                        steps=request.steps,
                        guidance_scale=request.guidance_scale,
                        conditioning_frames=images,
                        frame_indices=indices,
                        conditioning_scale=request.conditioning_scale,
                        generator=generator,
                        window_length=lv.window_length,
                        window_overlap=lv.window_overlap,
                        shared_noise=lv.shared_noise,
                        decode_chunk=lv.decode_chunk,
                        on_step_end=lambda i: step_end(None, i, None, {}),
                    )
            frames = to_uint8(generated)
            del generated
        finally:
            # 5. Give the accelerator's cached memory back before the next job (the reference scripts ran out of
            #    memory on the second one). The full gc pass (~0.2 s) runs in the worker after the job is reported.
            if self.model.offload != "none":  # every model back on the CPU, hooks off, weights where they were
                pipe.remove_all_hooks()
                for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.controlnet):
                    module.to("cpu")
            del pipe
            if draft_motion:
                use_motion_modules(self.model.unet, self.model.motion_adapters["final"])
            self.empty_cache()

        peak = torch.cuda.max_memory_allocated(self.device) if cuda else None
        return GenerationResult(frames, request.seed, time.perf_counter() - started, peak)

    def empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def release_memory(self) -> None:
        """Between jobs: collect reference cycles, then return cached accelerator memory."""
        gc.collect()
        self.empty_cache()
