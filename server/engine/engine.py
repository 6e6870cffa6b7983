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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import LongVideo, Performance
from ..request.model import GenerationRequest
from .conditions import fit_to_size
from .known_frames import known_frames_for
from .loaded import LoadedModel
from .motion_modules import use_motion_modules
from .performance import (
    GIB,
    IdleWeights,
    MemoryPlan,
    apply_performance,
    free_device_memory,
    plan_memory,
    working_memory,
)
from .reference import InstalledAdapter, install_ip_adapter, reference_condition
from .schedulers import build_scheduler
from .step_hooks import OnStep, StepHook
from .windowed import (
    DenseCondition,
    SparseCondition,
    decode_frames,
    denoise_windowed,
    keyframe_frame_scales,
    prepare_dense_frames,
)

log = logging.getLogger(__name__)

# An engine built without [performance] (tests, benchmarks' bare engines): no levers, "auto" memory plans.
DEFAULT_PERFORMANCE = Performance(
    vae_slicing="off",
    channels_last=False,
    fuse_qkv=False,
    compile=False,
    offload="none",
    offload_margin_gb=2.0,
    feed_forward_chunking="off",
    cfg_halves="auto",
    park_idle_weights="auto",
)

StepCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


class JobCancelled(Exception):
    """Raised from the step callback when the job was cancelled; the pipeline unwinds through it."""


class ReferenceUnavailable(ValueError):
    def __init__(self):
        super().__init__("a reference needs an IP-Adapter, and none is configured ([model.ip_adapter])")


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
    # The final latents, float32 (1, channels, num_frames, h, w), and the generated frames (before delivery):
    # the take a retake of this job keeps (jobs/execute.py writes them). None where not generated here.
    latents: np.ndarray | None = None
    generated: np.ndarray | None = None


def random_seed() -> int:
    return random.SystemRandom().randrange(0, 2**32)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def clip_skip_embeddings(pipe, text: str, clip_skip: int) -> torch.Tensor:
    """A prompt's embeddings from the text encoder's layer `clip_skip` from the end, through its final layer
    norm (A1111's "Clip skip" = clip_skip + 1). Here rather than diffusers' encode_prompt(clip_skip=...), which
    reads `text_encoder.text_model` (gone in transformers 5) and skips layers for the prompt but not for the
    negative prompt; A1111, which artists' checkpoints are made for, skips them for both."""
    encoder = pipe.text_encoder
    layers = encoder.config.num_hidden_layers
    if clip_skip >= layers:
        raise ValueError(f"clip_skip {clip_skip}: the text encoder has only {layers} layers")
    tokens = pipe.tokenizer(
        text, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    hidden = encoder(tokens.input_ids.to(pipe._execution_device), output_hidden_states=True).hidden_states
    final_norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 4 / 5
    return final_norm(hidden[-(clip_skip + 1)]).to(dtype=encoder.dtype)


def _assembled(decoded: np.ndarray, indices: list[int], given: dict, num_frames: int) -> np.ndarray:
    """The clip's frames in order: the decoded ones at `indices` (a retake's span: never empty), the given ones
    (uint8) at theirs."""
    frames = np.empty((num_frames, *decoded.shape[1:]), dtype=np.uint8)
    for f, frame in given.items():
        frames[f] = frame
    frames[indices] = decoded
    return frames


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
        self.performance = performance or DEFAULT_PERFORMANCE
        if performance is not None:
            apply_performance(model, performance, compile_cache)
        # The IP-Adapter (reference.py), installed once per loaded model after the levers: a job without a
        # reference runs the UNet's processors as the levers left them (fused projections included).
        self.reference_adapter: InstalledAdapter | None = None
        if model.ip_adapter is not None:
            if model.installed_ip_adapter is None:
                model.installed_ip_adapter = install_ip_adapter(self.build_pipeline(None, "ddim"), model.ip_adapter)
            self.reference_adapter = model.installed_ip_adapter
        # How idle weights move (IdleWeights); the memory benchmark swaps in one its tensor counter sees.
        self.move = lambda module, where: module.to(where)
        self.release_residuals = True  # exact and free; off only to measure it (server.bench levers)
        self.keep_encoders_on_device = keep_encoders_on_device
        self._active_modality: str | None = None
        # TAESD for live previews (engine/previews.py), when its decoder file was found; None: the linear one.
        self.preview_decoder = None

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

    def build_pipeline(self, modality: str | None, scheduler: str, reference: bool = False):
        """diffusers' SparseCtrl pipeline around the loaded components, with this request's encoder (None: no
        keyframes, only per-frame ControlNets or a reference steer), scheduler and, for a reference, the
        IP-Adapter's image encoder."""
        from diffusers import AnimateDiffSparseControlNetPipeline

        m = self.model
        adapter = self.reference_adapter.weights if reference else None
        pipe = AnimateDiffSparseControlNetPipeline(
            vae=m.vae,
            text_encoder=m.text_encoder,
            tokenizer=m.tokenizer,
            unet=m.unet,
            motion_adapter=None,  # already merged into m.unet (a UNetMotionModel)
            controlnet=self._activate_encoder(modality) if modality is not None else None,
            scheduler=build_scheduler(scheduler, m.scheduler_config, self.scheduler_overrides),
            feature_extractor=adapter.feature_extractor if adapter is not None else None,
            image_encoder=adapter.image_encoder if adapter is not None else None,
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
        hooks: Sequence[StepHook] = (),
    ) -> GenerationResult:
        """Run one request to frames. Raises JobCancelled if `should_cancel()` turns true between steps. `hooks`:
        further step hooks (a live preview), run after the known frames and before progress and cancel."""
        started = time.perf_counter()
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

        # 1. Pipeline with this request's encoder, scheduler and LoRAs (the draft motion module, the IP-Adapter).
        draft_motion = request.quality == "draft" and self.model.has_draft_adapter
        reference = request.reference is not None and request.reference.steers
        if reference and self.reference_adapter is None:
            raise ReferenceUnavailable()
        pipe = self._pipeline_for(request, draft_motion, reference)

        # 2. Keyframes in index order, each fitted to the generation size; so are the per-frame ControlNets' images
        #    and further SparseCtrl encoders' keyframes.
        images, indices, scale, scales, guidance = self._keyframe_inputs(request, request.modality)
        moved: list = []  # the further encoders and ControlNets moved to the device for the job (back in _release)

        # 3. Progress and cancellation between denoising steps: the last of the step hooks (known frames first).
        def step_end(step: int) -> None:
            if on_step is not None:
                on_step(step + 1, request.steps)
            if should_cancel is not None and should_cancel():
                raise JobCancelled()

        # 4. Prompt, denoising and decoding (5. memory given back, whatever happened).
        try:
            sparse = self._further_encoders(request, moved)
            dense = self._dense_conditions(pipe, request, moved)
            keyframe_args = dict(
                controlnet_conditioning_scale=scale, keyframe_scales=scales, keyframe_guidance=guidance, sparse=sparse
            )
            step_hooks = [*hooks, OnStep(step_end)]
            latents, frames = self._denoise(pipe, request, images, indices, dense, step_hooks, **keyframe_args)
        finally:
            self._release(pipe, draft_motion, moved, reference)

        peak = torch.cuda.max_memory_allocated(self.device) if cuda else None
        seconds = time.perf_counter() - started
        return GenerationResult(frames, request.seed, seconds, peak, latents=latents, generated=frames)

    @staticmethod
    def _keyframe_inputs(request: GenerationRequest, modality: str) -> tuple:
        """One encoder's keyframes as SparseCondition takes them after the encoder: (images fitted to the generation
        size and indices, in index order; conditioning scale; per-frame scales or None; guidance window)."""
        keyframes = request.keyframes_for(modality)
        indices = [k.index for k in keyframes]
        scale, guidance = request.keyframe_settings(modality)
        scales = keyframe_frame_scales(indices, [k.strength for k in keyframes], request.num_frames, scale)
        return (
            [fit_to_size(k.image, request.width, request.height) for k in keyframes],
            indices,
            scale,
            scales,
            guidance,
        )

    def _further_encoders(self, request: GenerationRequest, moved: list) -> list[SparseCondition]:
        """Keyframes of modalities other than the request's, each for its SparseCtrl encoder on the device (for
        the job, as the per-frame ControlNets are; listed in `moved`), with its strength and guidance window."""
        conditions = []
        for modality in request.keyframe_modalities():
            if modality == request.modality:
                continue
            if modality not in self.model.encoders:
                raise ModalityUnavailable(modality, self.modalities)
            moved.append(self.model.encoders[modality])
            encoder = self.model.encoders[modality].to(self.device)
            conditions.append(SparseCondition(encoder, *self._keyframe_inputs(request, modality)))
        return conditions

    def _dense_conditions(self, pipe, request: GenerationRequest, moved: list) -> list[DenseCondition]:
        """The request's per-frame ControlNets on the device (listed in `moved`), each with its frames fitted and
        prepared as AnimateDiffControlNetPipeline prepares them; a group covering every frame runs as diffusers'
        does."""
        conditions = []
        for group in request.controlnets:
            moved.append(self.model.controlnets[group.name])
            controlnet = self.model.controlnets[group.name].to(self.device)
            fitted = [fit_to_size(f.image, request.width, request.height) for f in group.frames]
            frames = prepare_dense_frames(
                fitted, request.width, request.height, self.device, controlnet.dtype, pipe.vae_scale_factor
            )
            indices = tuple(f.index for f in group.frames)
            every = indices == tuple(range(request.num_frames))
            guidance = (group.guidance_start, group.guidance_end)
            conditions.append(DenseCondition(controlnet, frames, group.strength, None if every else indices, guidance))
        return conditions

    def _pipeline_for(self, request: GenerationRequest, draft_motion: bool, reference: bool):
        """The pipeline for `request`; a draft's motion module is copied into the UNet's motion layers and the
        IP-Adapter turned on for the job before any offload hooks take the weights (both undone if building the
        pipeline fails)."""
        if draft_motion:
            use_motion_modules(self.model.unet, self.model.motion_adapters["draft"])
        if reference:
            self.reference_adapter.turn_on(self.model.unet)
        try:
            modality = request.modality if request.keyframes_for(request.modality) else None
            pipe = self.build_pipeline(modality, request.scheduler, reference)
            self._use_loras(pipe, request.loras)
            if self.model.offload == "model":
                pipe.enable_model_cpu_offload(device=self.device)
            elif self.model.offload == "sequential":
                pipe.enable_sequential_cpu_offload(device=self.device)
        except BaseException:
            if draft_motion:
                use_motion_modules(self.model.unet, self.model.motion_adapters["final"])
            if reference:
                self.reference_adapter.turn_off(self.model.unet)
            raise
        return pipe

    def encode_prompt(self, pipe, request: GenerationRequest):
        """(prompt embeddings, negative ones or None without guidance), as the pipeline itself encodes them;
        with clip_skip, both from that layer (clip_skip_embeddings)."""
        do_cfg = request.guidance_scale > 1
        negative = request.negative_prompt or None
        if not request.clip_skip:
            return pipe.encode_prompt(request.prompt, pipe._execution_device, 1, do_cfg, negative)
        embed = lambda text: clip_skip_embeddings(pipe, text, request.clip_skip)  # noqa: E731
        return embed(request.prompt), (embed(negative or "") if do_cfg else None)

    def _denoise(
        self, pipe, request: GenerationRequest, images: list, indices: list[int], dense: list, hooks, **keyframes
    ) -> tuple[np.ndarray, np.ndarray]:
        """(final latents as float32, uint8 frames) from the pipeline's own steps (windowed.py: one context window
        is diffusers' call bit for bit, longer clips run in windows), with this job's memory plan. The seed drives
        the request's generator and, isolated by fork_rng, the global RNG too: the RGB encoder's VAE encoding
        samples from it. Known frames (a retake's kept ones, pins) are the first step hook, `hooks` follow; a
        retake's kept frames are its parent's pixels, not decoded again. `keyframes`: denoise_windowed's
        controlnet_conditioning_scale, keyframe_scales, keyframe_guidance and sparse."""
        lv = self.long_video
        plan = self.memory_plan(request)
        idle = IdleWeights([pipe.text_encoder, pipe.vae], self.device, self.move) if plan.park_idle_weights else None
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(request.seed)
            prompt_embeds, negative_prompt_embeds = self.encode_prompt(pipe, request)
            reference = None
            if pipe.image_encoder is not None:  # a job with a reference (build_pipeline)
                reference = reference_condition(pipe, self.reference_adapter, request, self.device, self.move)
            known = known_frames_for(pipe, request, prompt_embeds.dtype)
            try:
                latents = denoise_windowed(
                    pipe,
                    prompt_embeds=prompt_embeds,
                    negative_prompt_embeds=negative_prompt_embeds,
                    num_frames=request.num_frames,
                    width=request.width,
                    height=request.height,
                    num_inference_steps=request.steps,
                    guidance_scale=request.guidance_scale,
                    conditioning_frames=images,
                    controlnet_frame_indices=indices,
                    generator=torch.Generator(device=self.device).manual_seed(request.seed),
                    window_length=lv.window_length,
                    window_overlap=lv.window_overlap,
                    shared_noise=lv.shared_noise,
                    step_hooks=[known, *hooks] if known is not None else hooks,
                    sequential_cfg=plan.sequential_cfg,
                    idle_weights=idle,
                    release_residuals=self.release_residuals,
                    dense=dense,
                    reference=reference,
                    **keyframes,
                )
            finally:
                if idle is not None:
                    idle.unpark()
            given = known.pixels if known is not None else {}
            decoded = [f for f in range(request.num_frames) if f not in given]
            frames = to_uint8(decode_frames(pipe, latents, lv.decode_chunk, None if not given else decoded))
            if given:
                frames = _assembled(frames, decoded, given, request.num_frames)
            return latents.float().cpu().numpy(), frames

    def memory_plan(self, request: GenerationRequest) -> MemoryPlan:
        """The job's memory levers ([performance] cfg_halves, park_idle_weights), "auto" from the device's free
        memory now against what the doubled batch of one window needs. Offloaded models move by themselves."""
        if self.model.offload != "none":
            return MemoryPlan()
        frames = min(request.num_frames, self.long_video.window_length)
        cfg = request.guidance_scale > 1
        needed = working_memory(frames, request.width, request.height, self.model.dtype, cfg)
        free = free_device_memory(self.device)
        plan = plan_memory(self.performance, free, needed)
        if plan.sequential_cfg or plan.park_idle_weights:
            log.info(
                "memory plan: CFG halves %s, idle weights %s (%s free; the doubled batch needs ~%.1f GiB)",
                "in turn" if plan.sequential_cfg else "together",
                "parked" if plan.park_idle_weights else "kept",
                "unknown" if free is None else f"{free / GIB:.1f} GiB",
                needed / GIB,
            )
        return plan

    def _release(self, pipe, draft_motion: bool, controlnets: list = (), reference: bool = False) -> None:
        """Give the accelerator's cached memory back before the next job (the reference scripts ran out of
        memory on the second one); with offload, every model back on the CPU with its hooks off; the per-frame
        ControlNets back on the CPU unless encoders stay on the device; the final motion module back after a
        draft, the IP-Adapter out of the UNet after a reference. The full gc pass (~0.2 s) runs in the worker
        after the job."""
        if self.model.offload != "none":
            pipe.remove_all_hooks()
            for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.controlnet, pipe.image_encoder):
                if module is not None:
                    module.to("cpu")
        if reference:
            self.reference_adapter.turn_off(self.model.unet)
        if self.model.offload != "none" or not self.keep_encoders_on_device:
            for controlnet in controlnets:
                controlnet.to("cpu")
        if draft_motion:
            use_motion_modules(self.model.unet, self.model.motion_adapters["final"])
        self.empty_cache()

    def empty_cache(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()

    def release_memory(self) -> None:
        """Between jobs: collect reference cycles, then return cached accelerator memory."""
        gc.collect()
        self.empty_cache()
