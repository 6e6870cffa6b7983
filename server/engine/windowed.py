"""Generating clips longer than one context window with diffusers' SparseCtrl pipeline components.

AnimateDiffSparseControlNetPipeline has no long-video support. This follows its __call__ step for step
(same helpers: encode_prompt, prepare_image, prepare_sparse_control_conditioning, prepare_latents, the
scheduler, the SparseCtrl encoder and the UNet, decode_latents), changing only what windows need:

- the denoiser runs per context window; each window gets its slice of the latents, of the conditions and of
  the mask, so a keyframe conditions every window that contains its index (and no other);
- the windows' noise predictions are blended with the weights of windows.context_windows before one
  scheduler step on the whole clip (so every scheduler, multistep ones included, sees one prediction);
- initial noise is shared across windows (windows.share_noise);
- the VAE decodes in chunks of frames.

Per-frame ControlNets (a depth ControlNet on every generated frame, #16) run beside the SparseCtrl encoder as
diffusers' AnimateDiffControlNetPipeline runs one (frames folded into the batch, the same image for both CFG
halves), each window with its own frames; their residuals and the encoder's are summed in order, as diffusers'
MultiControlNetModel sums its nets'. Without them every operation is the SparseCtrl path's as before.
Further SparseCtrl encoders (`sparse`: an RGB look at frame 0 beside line art at 0, 8 and 15) run after the
pipeline's own, each with its own keyframes, mask, scale and guidance window, prepared with the pipeline's own
prepare_image / prepare_sparse_control_conditioning, and summed the same way.

Whatever happens at each step (known frames, progress, cancel) comes in as step hooks (step_hooks.py): called
after every scheduler step on the whole clip, they may replace the latents and may spare windows whose frames
they set entirely (a long shot's retake runs only the windows its span touches).

It is also where the denoiser's memory is kept down ([performance], #18), for every clip, one window or many:
the encoder's residuals are let go as the UNet adds them (exact), CFG's halves can run one after the other
(`sequential_cfg`) and the text encoder and VAE can leave the device while the loop runs (`idle_weights`).

With a single window covering the clip, every operation is the pipeline's own, in its order: the frames are
bit-identical to the plain pipeline call (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..request.model import guided
from .performance import IdleWeights
from .reference import ReferenceCondition
from .step_hooks import StepHook, StepState, run_hooks
from .windows import context_windows, share_noise

FULL_WINDOW = (0.0, 1.0)  # a guidance window over the whole denoising: every step steered


class DenseCondition(NamedTuple):
    """A per-frame ControlNet with its images (prepare_dense_frames) and strength: an image for every generated
    frame, or for the frames `indices` names (the others get nothing from it: its residuals there are zero).
    `guidance`: the (start, end) fractions of the steps it runs in (diffusers' control_guidance_start/end)."""

    controlnet: Any  # diffusers ControlNetModel
    frames: torch.Tensor  # (num_frames or len(indices), 3, H, W) in [0, 1]
    scale: float = 1.0
    indices: tuple[int, ...] | None = None  # None: every frame, in order
    guidance: tuple[float, float] = FULL_WINDOW


class SparseCondition(NamedTuple):
    """Keyframes for a further SparseCtrl encoder of the job: the fitted images in index order, their indices,
    the encoder's scale (or one per frame: keyframe_frame_scales) and the steps it steers."""

    encoder: Any  # diffusers SparseControlNetModel
    images: list  # PIL images, fitted to the generation size, in index order
    indices: list[int]
    scale: float = 1.0
    frame_scales: Sequence[float] | None = None
    guidance: tuple[float, float] = FULL_WINDOW


def keyframe_frame_scales(
    indices: Sequence[int], strengths: Sequence[float], num_frames: int, conditioning_scale: float
) -> list[float] | None:
    """Per-frame scales of the SparseCtrl encoder's residuals from per-keyframe strengths: conditioning_scale
    times the strengths interpolated linearly between keyframes by frame index, the nearest keyframe's beyond
    the first and the last (the encoder's temporal layers spread each keyframe over its neighbours, so its
    strength goes with it). None when every strength is 1: the plain scalar scale, bit for bit as before."""
    if all(s == 1.0 for s in strengths):
        return None
    pairs = sorted(zip(indices, strengths, strict=True))
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    return [conditioning_scale * float(np.interp(f, xs, ys)) for f in range(num_frames)]


def prepare_dense_frames(images: list, width: int, height: int, device, dtype, vae_scale_factor: int) -> torch.Tensor:
    """One control image per generated frame as AnimateDiffControlNetPipeline prepares them (its VideoProcessor
    without normalising: [0, 1]; prepare_video's permute and flatten): (frames, 3, H, W). Made contiguous, as
    diffusers' repeat_interleave leaves it: a channels-last view runs another convolution kernel (1e-5 off)."""
    from diffusers.video_processor import VideoProcessor

    processor = VideoProcessor(vae_scale_factor=vae_scale_factor, do_convert_rgb=True, do_normalize=False)
    video = processor.preprocess_video(images, height=height, width=width).to(dtype=torch.float32)
    return video.permute(0, 2, 1, 3, 4).flatten(0, 1).contiguous().to(device=device, dtype=dtype)


@torch.no_grad()
def generate_windowed(pipe, *, decode_chunk: int, **denoise_args) -> np.ndarray:
    """Frames as float32 (num_frames, height, width, 3) in [0, 1], like the pipeline's output_type="np":
    denoise_windowed's latents, decoded (decode_frames)."""
    return decode_frames(pipe, denoise_windowed(pipe, **denoise_args), decode_chunk)


@torch.no_grad()
def decode_frames(pipe, latents: torch.Tensor, decode_chunk: int, frames: Sequence[int] | None = None) -> np.ndarray:
    """Latents to float32 frames (len(frames), height, width, 3) in [0, 1], decoded `decode_chunk` frames at a time
    (the VAE's memory grows with the frames it decodes at once); `frames`: only these (None: all, in order)."""
    if frames is not None:
        latents = latents[:, :, list(frames)]
    count = latents.shape[2]
    chunks = [pipe.decode_latents(latents[:, :, s : s + decode_chunk]) for s in range(0, count, decode_chunk)]
    video = torch.cat(chunks, dim=2) if len(chunks) > 1 else chunks[0]
    return pipe.video_processor.postprocess_video(video=video, output_type="np")[0]


@torch.no_grad()
def denoise_windowed(
    pipe,
    *,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor | None,
    num_frames: int,
    width: int,
    height: int,
    num_inference_steps: int,
    guidance_scale: float,
    conditioning_frames: list,
    controlnet_frame_indices: list[int],
    controlnet_conditioning_scale: float,
    generator: torch.Generator,
    window_length: int,
    window_overlap: int,
    shared_noise: bool,
    step_hooks: Sequence[StepHook] = (),
    sequential_cfg: bool = False,
    idle_weights: IdleWeights | None = None,
    release_residuals: bool = True,
    dense: Sequence[DenseCondition] = (),
    keyframe_scales: Sequence[float] | None = None,
    keyframe_guidance: tuple[float, float] = FULL_WINDOW,
    sparse: Sequence[SparseCondition] = (),
    reference: ReferenceCondition | None = None,
) -> torch.Tensor:
    """The final latents (batch, channels, num_frames, h, w), before the VAE.

    The arguments are the pipeline's own (the prompt already encoded, as the engine does for both paths), plus
    the windows' and the per-frame ControlNets (`dense`). No keyframes (`conditioning_frames` empty) and no
    SparseCtrl encoder on the pipeline: only the dense conditions steer. `keyframe_scales`: the encoder's scale
    per frame (keyframe_frame_scales; None: `controlnet_conditioning_scale` everywhere), `keyframe_guidance`:
    the steps the keyframes steer; `sparse`: further SparseCtrl encoders' keyframes, after the pipeline's;
    `reference`: the IP-Adapter's image embeddings (reference.py), the UNet's added_cond_kwargs as the pipeline
    passes them, at its strength inside its guidance window and 0 outside; `step_hooks`: what happens after each
    step (step_hooks.py). A linear loop, as the pipeline's __call__ is:
    its numbered steps read best in one place."""
    device = pipe._execution_device
    controlnet = pipe.controlnet
    do_cfg = guidance_scale > 1

    # 1. Prompt embeddings (negative first, as the pipeline batches CFG).
    if do_cfg:
        prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

    # 2. Sparse conditions and mask over the whole clip, sliced per window below (none without keyframes): the
    #    pipeline's encoder first, then any further ones (as `pipe`, so that prepare_image uses their embedding).
    keyframes = []  # (encoder, cond, mask, scale or per-frame scales, guidance window)
    if conditioning_frames:
        own = SparseCondition(
            controlnet, conditioning_frames, controlnet_frame_indices, controlnet_conditioning_scale,
            keyframe_scales, keyframe_guidance,
        )  # fmt: skip
        keyframes.append(_prepared_keyframes(pipe, own, num_frames, width, height, device))
    for c in sparse:
        keyframes.append(_prepared_keyframes(_WithEncoder(pipe, c.encoder), c, num_frames, width, height, device))
    for condition in dense:
        expected = num_frames if condition.indices is None else len(condition.indices)
        if condition.frames.shape[0] != expected or not all(0 <= i < num_frames for i in condition.indices or ()):
            raise ValueError(f"a per-frame ControlNet needs {expected} frames, got {condition.frames.shape[0]}")

    # 3. Timesteps and initial noise.
    pipe.scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = pipe.scheduler.timesteps
    latents = pipe.prepare_latents(
        1, pipe.unet.config.in_channels, num_frames, height, width, prompt_embeds.dtype, device, generator, None
    )
    windows = context_windows(num_frames, window_length, window_overlap)
    if shared_noise and len(windows) > 1:
        latents = share_noise(latents, window_length, window_overlap, generator)
    extra_step_kwargs = pipe.prepare_extra_step_kwargs(generator, 0.0)
    # Blend weights per window, shaped to broadcast over (batch, channels, frames, h, w); built once.
    weights = {
        w.start: torch.tensor(w.weights, device=device, dtype=latents.dtype).view(1, 1, -1, 1, 1) for w in windows
    }
    embeds_by_length: dict[int, torch.Tensor] = {}
    joint_cfg = do_cfg and not sequential_cfg
    dense_by_window = {w.start: _window_dense(dense, w.start, w.stop, joint_cfg) for w in windows}
    options = _Options(guidance_scale, do_cfg, sequential_cfg, release_residuals, reference)
    keyframes_by_window = {
        w.start: [
            (enc, cond[:, :, w.start : w.stop], mask[:, :, w.start : w.stop], _window_scale(scale, w), guidance)
            for enc, cond, mask, scale, guidance in keyframes
        ]
        for w in windows
    }

    if idle_weights is not None:  # the prompt is encoded and the conditions prepared: idle until decoding
        idle_weights.park()

    # 4. Denoising: per timestep, every window's prediction, blended, then one scheduler step and the step hooks.
    #    (One window has weight 1 everywhere: 0 + prediction * 1 is the prediction, bit for bit.) A window whose
    #    frames a hook sets entirely is not run: its frames' prediction stays 0 and the hook replaces them.
    steps = len(timesteps)
    run = [w for w in windows if all(h.needs_window(w.start, w.stop) for h in step_hooks)]
    for i, t in enumerate(timesteps):
        if reference is not None:  # diffusers' IP-Adapter processors skip the image tokens at scale 0
            reference.set_scale(reference.strength if guided(i, steps, reference.guidance) else 0.0)
        noise_pred = torch.zeros_like(latents)
        for window in run:
            sl = slice(window.start, window.stop)
            sparse_steering = [k[:4] for k in keyframes_by_window[window.start] if guided(i, steps, k[4])]
            steering = [d for d in dense_by_window[window.start] if guided(i, steps, d[4])]
            inputs = (latents[:, :, sl], t, prompt_embeds, embeds_by_length, sparse_steering, steering)
            prediction = _predict(pipe, *inputs, options)
            noise_pred[:, :, sl] += prediction * weights[window.start]
        out = pipe.scheduler.step(noise_pred, t, latents, **extra_step_kwargs)
        latents = out.prev_sample
        if step_hooks:
            following = timesteps[i + 1] if i + 1 < steps else None
            x0 = getattr(out, "pred_original_sample", None)
            state = StepState(i, steps, t, following, latents, noise_pred, x0, pipe.scheduler)
            latents = run_hooks(step_hooks, state)

    if idle_weights is not None:  # 5. the VAE decodes next (decode_frames)
        idle_weights.unpark()
    return latents


class _WithEncoder:
    """The pipeline with another SparseCtrl encoder in its place, for prepare_image (which reads
    self.controlnet: an RGB encoder's keyframes are VAE latents, a scribble encoder's are pixels)."""

    def __init__(self, pipe, encoder):
        self._pipe, self.controlnet = pipe, encoder

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def prepare_image(self, *args):
        return type(self._pipe).prepare_image(self, *args)


def _prepared_keyframes(pipe, c: SparseCondition, num_frames: int, width: int, height: int, device) -> tuple:
    """(encoder, cond, mask, scale, guidance) over the whole clip, as the pipeline prepares its keyframes; the
    per-frame scales as a float32 tensor."""
    images = pipe.prepare_image(c.images, width, height, device, c.encoder.dtype)
    cond, mask = pipe.prepare_sparse_control_conditioning(images, num_frames, c.indices, device, c.encoder.dtype)
    scale = c.scale
    if c.frame_scales is not None:  # float32 whatever the encoder's dtype (_denoiser)
        scale = torch.tensor(c.frame_scales, device=device, dtype=torch.float32)
    return c.encoder, cond, mask, scale, c.guidance


def _window_scale(scale, window):
    return scale[window.start : window.stop] if isinstance(scale, torch.Tensor) else scale


def _window_dense(dense: Sequence[DenseCondition], start: int, stop: int, joint_cfg: bool) -> list[tuple]:
    """A window's dense conditions: (controlnet, its frames in the window, scale, their positions in the window or
    None for all, guidance window), the frames doubled for CFG's halves run together (the pipeline's
    torch.cat([video] * 2)).
    A subset's ControlNet with no frame in the window is left out of it."""
    chosen = []
    for c in dense:
        if c.indices is None:
            frames, present = c.frames[start:stop], None
        else:
            rows = [j for j, i in enumerate(c.indices) if start <= i < stop]
            if not rows:
                continue
            frames, present = c.frames[rows], tuple(c.indices[j] - start for j in rows)
        chosen.append((c.controlnet, torch.cat([frames] * 2) if joint_cfg else frames, c.scale, present, c.guidance))
    return chosen


class _Consumed(list):
    """Residuals the UNet reads once, front to back (zip in its forward): each leaves the list as it is read,
    so it is freed once added to the UNet's own skip connection instead of living through the whole up path
    (the list, the forward's argument, lives that long). Same values, same order: bit-identical."""

    def __iter__(self):
        while self:
            yield self.pop(0)


class _Options(NamedTuple):
    guidance_scale: float
    do_cfg: bool
    sequential_cfg: bool  # CFG's negative and positive halves one after the other: half the activations
    release_residuals: bool  # off only to measure what releasing saves (server.bench levers)
    reference: ReferenceCondition | None = None  # the IP-Adapter's image embeddings (None: no reference)

    def added_cond(self, half: int | None = None) -> dict | None:
        """The UNet's added_cond_kwargs as the pipeline passes them (None without a reference); `half`: CFG's
        negative (0) or positive (1) half alone."""
        if self.reference is None:
            return None
        embeds = self.reference.embeds if half is None else self.reference.halves()[half]
        return {"image_embeds": embeds}


def _predict(pipe, latents, t, prompt_embeds, embeds_by_length, keyframes, dense, options: _Options):
    """One guided noise prediction for `latents` (one window), as the pipeline's loop body computes it."""
    frames = latents.shape[2]
    if frames not in embeds_by_length:
        embeds_by_length[frames] = prompt_embeds.repeat_interleave(repeats=frames, dim=0)
    embeds = embeds_by_length[frames]
    if not options.do_cfg:
        scaled = pipe.scheduler.scale_model_input(latents, t)
        return _denoiser(pipe, scaled, t, embeds, keyframes, dense, options, options.added_cond())
    if options.sequential_cfg:
        scaled = pipe.scheduler.scale_model_input(latents, t)
        uncond, text = (
            _denoiser(pipe, scaled, t, half, keyframes, dense, options, options.added_cond(n))
            for n, half in enumerate(embeds.chunk(2))
        )
    else:
        model_input = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), t)
        added = options.added_cond()
        uncond, text = _denoiser(pipe, model_input, t, embeds, keyframes, dense, options, added).chunk(2)
    return uncond + options.guidance_scale * (text - uncond)


def _denoiser(pipe, model_input, t, embeds, keyframes, dense, options: _Options, added_cond: dict | None = None):
    """The SparseCtrl encoders (`keyframes`: (encoder, cond, mask, scale) each, the pipeline's first) and the
    per-frame ControlNets, then the UNet with their summed residuals (released as they are added) and, with a
    reference, the image embeddings (`added_cond`, the pipeline's added_cond_kwargs)."""
    down = mid = None
    for encoder, cond, mask, scale in keyframes:
        frame_scales = None
        if isinstance(scale, torch.Tensor):  # per frame: the encoder's rows are batch-major (b * frames + f)
            frame_scales, scale = scale.repeat(model_input.shape[0]).view(-1, 1, 1, 1), 1.0
        d, m = encoder(
            model_input,
            t,
            encoder_hidden_states=embeds,
            controlnet_cond=cond,
            conditioning_mask=mask,
            conditioning_scale=scale,
            guess_mode=False,
            return_dict=False,
        )
        if frame_scales is not None:  # times the float32 scales, as a Python scale is applied: 0.9 stays 0.9 in bf16
            d, m = [(r * frame_scales).to(r.dtype) for r in d], (m * frame_scales).to(m.dtype)
        down, mid = _summed(down, mid, d, m)
        del d, m
    if dense:
        down, mid = _dense_residuals(model_input, t, embeds, dense, down, mid)
    # A compiled UNet gets the plain list: its graph is traced for a list, not for the consuming one.
    compiled = isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)
    residuals = _Consumed(down) if options.release_residuals and not compiled and down is not None else down
    del down
    return pipe.unet(
        model_input,
        t,
        encoder_hidden_states=embeds,
        added_cond_kwargs=added_cond,
        down_block_additional_residuals=residuals,
        mid_block_additional_residual=mid,
    ).sample


def _summed(down, mid, d, m):
    """Residuals added in order, as MultiControlNetModel adds its nets' (None: the first, as it came)."""
    if down is None:
        return d, m
    return [a + b for a, b in zip(down, d, strict=True)], mid + m


def _dense_residuals(model_input, t, embeds, dense, down, mid):
    """Each per-frame ControlNet on this window's frames, folded into the batch as AnimateDiffControlNetPipeline
    folds them, its residuals added to `down`/`mid` (None: the first) in order, as MultiControlNetModel adds.
    A subset runs on its frames' rows only (a 2D ControlNet sees each frame alone) and is zero elsewhere."""
    folded = torch.transpose(model_input, 1, 2)
    folded = folded.reshape((-1, folded.shape[2], folded.shape[3], folded.shape[4]))
    for controlnet, frames, scale, present, _ in dense:
        rows = None
        if present is not None:
            length = model_input.shape[2]
            halves = folded.shape[0] // length
            rows = torch.tensor([h * length + p for h in range(halves) for p in present], device=folded.device)
        d, m = controlnet(
            folded if rows is None else folded[rows],
            t,
            encoder_hidden_states=embeds if rows is None else embeds[rows],
            controlnet_cond=frames,
            conditioning_scale=scale,
            guess_mode=False,
            return_dict=False,
        )
        if rows is not None:
            d, m = [_scattered(x, rows, folded.shape[0]) for x in d], _scattered(m, rows, folded.shape[0])
        down, mid = _summed(down, mid, list(d) if down is None else d, m)
        del d, m
    return down, mid


def _scattered(residual: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """A subset's residual at its rows of the whole folded batch, zero at the others."""
    return residual.new_zeros((batch, *residual.shape[1:])).index_copy_(0, rows, residual)
