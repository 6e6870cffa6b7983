"""The server's policy for a checked request body: defaults from the config, keyframe images decoded once each,
one at a time, and kept fitted to the generation size (request/images.py), drafts and LoRAs resolved. Limits are
schema.py's (checked once, there); what is checked here needs the other fields or the loaded model: keyframe and
dense frame indices against the clip, the modalities, LoRAs and ControlNets the server has.
Shared by the HTTP API and the `generate` CLI; imports neither FastAPI nor torch.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from typing import Any

from pydantic import BaseModel

from ..config import Config
from .errors import RequestError
from .images import ImageError, PixelBudget, fitted_png, reference_png
from .model import (
    MODALITIES,
    DenseGroup,
    GenerationRequest,
    Keyframe,
    KeyframeGroup,
    Reference,
    Retake,
    api_fields,
    configurable_fields,
    guided,
)
from .schema import parse_body


def resolve_request(
    fields: dict[str, Any] | BaseModel,
    config: Config,
    modalities: list[str],
    seed: int,
    draft_adapter: bool = False,
    loras: dict[str, float] | None = None,
    controlnets: list[str] | None = None,
    ip_adapter: bool = False,
) -> GenerationRequest:
    """Check `fields` (schema.py; an already validated body passes as it is), apply the config's defaults,
    decode the images. `seed` is used when none is given. `loras`: the configured LoRAs a request may name
    (name -> default scale); `controlnets`: the configured ControlNets' names; never paths. `ip_adapter`: whether
    the server has one (a `reference` needs it)."""
    body = parse_body(fields, config.limits)
    _check_conditions(body, modalities)
    _check_reference(body, ip_adapter)
    values = {name: getattr(body, name) for name in api_fields()}
    for name in configurable_fields():
        if values[name] is None:
            values[name] = getattr(config.generation, name)
    values["seed"] = seed if values["seed"] is None else values["seed"]
    values["output_frames"] = values["output_frames"] or 0
    values["quality"] = values["quality"] or "final"
    values["modality"] = values["modality"] or ""
    values["color_lock"] = bool(values["color_lock"])
    for name in ("keyframe_guidance_start", "keyframe_guidance_end"):  # omitted: the whole denoising
        if values[name] is None:
            values[name] = GenerationRequest.__dataclass_fields__[name].default
    _check_window("keyframes", values["keyframe_guidance_start"], values["keyframe_guidance_end"])
    images = _Images(
        _generation_size(values["width"], values["height"], values["quality"], config, draft_adapter),
        config.limits.max_image_pixels,
        PixelBudget(config.limits.max_request_pixels),
    )
    values["keyframes"] = _keyframes(body, values["num_frames"], values["output_frames"], images)
    values["keyframe_groups"] = _keyframe_groups(body, values)
    values["controlnets"] = _controlnets(body, values["num_frames"], images, controlnets or [])
    values["loras"] = _loras([(lora.name, lora.scale) for lora in body.loras or ()], loras or {})
    values["retake"] = _retake(body, values["num_frames"])
    values["reference"] = _reference(body, images)
    request = GenerationRequest(**values)
    if request.quality == "draft":
        request = _draft(request, config, draft_adapter, loras or {})
    _check_steered(request)
    _check_color_lock(request)
    return request


def _check_color_lock(request: GenerationRequest) -> None:
    """Colour lock takes its colours from RGB keyframes: the request's own when its modality is rgb, or
    keyframes naming rgb."""
    if request.color_lock and not request.keyframes_for("rgb"):
        raise RequestError(
            "invalid_request",
            "color_lock: the job has no RGB keyframes to take the colours from (send keyframes with modality "
            "'rgb', e.g. an RGB look beside line art, or leave color_lock out)",
        )


def _check_steered(request: GenerationRequest) -> None:
    """Every guidance window holds at least one of the steps the job runs (a draft's included): a window between
    two steps would silently leave its condition out."""
    several = len(request.keyframe_modalities()) > 1
    windows = [
        (f"{m} keyframes" if several else "keyframes", request.keyframe_settings(m)[1])
        for m in request.keyframe_modalities()
    ]
    windows += [(f"ControlNet {g.name!r}", (g.guidance_start, g.guidance_end)) for g in request.controlnets]
    if (ref := request.reference) is not None and ref.steers:
        windows.append(("reference", (ref.guidance_start, ref.guidance_end)))
    for what, window in windows:
        if not any(guided(i, request.steps, window) for i in range(request.steps)):
            raise RequestError(
                "invalid_request",
                f"{what}: the guidance window {window[0]:g}-{window[1]:g} steers none of the job's {request.steps} "
                f"steps (step i of n is steered when i/n >= start and (i+1)/n <= end): widen it or add steps",
            )


def _check_conditions(body: BaseModel, modalities: list[str]) -> None:
    """Something steers the clip (keyframes, per-frame ControlNets or both); keyframes come with a modality the
    server has."""
    reference = body.reference is not None and body.reference.strength != 0
    if not body.keyframes and not body.controlnets and not body.retake and not reference:
        raise RequestError(
            "invalid_request",
            "nothing conditions the clip: send keyframes (with a modality), controlnets (per-frame images), a "
            "reference (with a strength above 0) or a retake of a job",
        )
    if not body.keyframes:
        if body.keyframe_groups:
            raise RequestError("invalid_request", "keyframe_groups: the job has no keyframes")
        return
    if body.modality is None:
        raise RequestError("invalid_request", "modality: the keyframes' kind is needed with keyframes")
    used = sorted({k.modality or body.modality for k in body.keyframes}, key=MODALITIES.index)
    for modality in used:
        if modality not in modalities:
            raise RequestError(
                "modality_unavailable",
                f"no condition encoder is configured for modality '{modality}' on this server; "
                f"available: {', '.join(modalities) if modalities else 'none'}",
            )
    named = [g.modality for g in body.keyframe_groups or ()]
    for modality in named:
        if named.count(modality) > 1:
            raise RequestError("invalid_request", f"keyframe_groups: modality '{modality}' is named twice")
        if modality not in used:
            raise RequestError(
                "invalid_request",
                f"keyframe_groups: no keyframe is of modality '{modality}' (the keyframes': {', '.join(used)})",
            )


def _keyframes(body: BaseModel, num_frames: int, output_frames: int, images: _Images) -> list[Keyframe]:
    """The keyframes in index order (then modality), each image decoded (and so checked) once; indices checked
    against the clip, once per encoder. A frame with keyframes of two modalities is one frame of the output: its
    output_index values agree."""
    if not body.keyframes:
        return []
    keyframes, seen, anchors = [], set(), {}
    order = lambda k: (k.index, MODALITIES.index(k.modality or body.modality))  # noqa: E731
    for kf in sorted(body.keyframes, key=order):
        index, output_index, modality = kf.index, kf.output_index, kf.modality or body.modality
        what = f"keyframe {index}" + (f" ({modality})" if modality != body.modality else "")
        if index >= num_frames:
            raise RequestError(
                "invalid_request", f"{what.replace('keyframe', 'keyframe index', 1)} is outside 0..{num_frames - 1}"
            )
        if (index, modality) in seen:
            several = any((k.modality or body.modality) != body.modality for k in body.keyframes)
            raise RequestError(
                "invalid_request", f"two keyframes have index {index}" + (f" for {modality}" if several else "")
            )
        seen.add((index, modality))
        if output_index is not None and not output_frames:
            raise RequestError("invalid_request", f"{what} has an output_index but no output_frames")
        if output_index is not None and output_index >= output_frames:
            raise RequestError(
                "invalid_request", f"{what}: output_index {output_index} is outside 0..{output_frames - 1}"
            )
        if output_index is not None and anchors.setdefault(index, output_index) != output_index:
            raise RequestError(
                "invalid_request",
                f"keyframes at index {index} have output_index {anchors[index]} and {output_index}: one generated "
                "frame lands on one output frame",
            )
        if kf.pin and modality != "rgb":
            raise RequestError(
                "invalid_request",
                f"{what} is pinned but of modality '{modality}': a pin makes the frame the image itself, so it "
                "needs an RGB keyframe (a painting, a storyboard panel, a frame of a take)",
            )
        data = images.decode(kf.image, what)
        strength = 1.0 if kf.strength is None else float(kf.strength)
        own = "" if modality == body.modality else modality
        keyframes.append(Keyframe(index, data, output_index, None, strength, own, bool(kf.pin)))
    pinned = sorted(anchors.items())
    for (a, out_a), (b, out_b) in zip(pinned, pinned[1:], strict=False):
        if out_b <= out_a:
            raise RequestError(
                "invalid_request",
                f"keyframes {a} and {b} are in one order but their output_index values in the other "
                "(or equal): the clip cannot run backwards",
            )
    return keyframes


def _retake(body: BaseModel, num_frames: int) -> Retake | None:
    """The span a retake regenerates, inside the clip and in order. The parent's take itself (it exists, has
    succeeded, matches the size) is the job service's to check and attach (jobs/service.py)."""
    if body.retake is None:
        return None
    start, end = body.retake.frames
    if not 0 <= start <= end < num_frames:
        raise RequestError(
            "invalid_retake",
            f"retake.frames [{start}, {end}]: the span must run forwards inside the clip's generated frames "
            f"0..{num_frames - 1} (start <= end)",
        )
    return Retake(body.retake.job, start, end)


def _check_reference(body: BaseModel, ip_adapter: bool) -> None:
    """A reference needs the server's IP-Adapter ([model.ip_adapter]); said before any image is decoded."""
    if body.reference is not None and not ip_adapter:
        raise RequestError(
            "reference_unavailable",
            "reference: this server has no IP-Adapter configured ([model.ip_adapter] in its config, docs/weights.md; "
            "GET /v1/models shows ip_adapter: null); send the job without a reference",
        )


def _reference(body: BaseModel, images: _Images) -> Reference | None:
    """The reference images, each decoded (and so checked) once and kept at most REFERENCE_SIDE on the short side,
    with their sha256 as sent; strength and window with their defaults."""
    ref = body.reference
    if ref is None:
        return None
    kept, hashes = [], []
    for n, text in enumerate(ref.images):
        data = images.raw(text, f"reference image {n}")
        hashes.append(hashlib.sha256(data).hexdigest())
        try:
            kept.append(reference_png(data, images.max_pixels, images.budget))
        except ImageError as e:
            raise RequestError("invalid_image", f"reference image {n}: {e}") from None
    strength = 1.0 if ref.strength is None else float(ref.strength)
    start = 0.0 if ref.guidance_start is None else float(ref.guidance_start)
    end = 1.0 if ref.guidance_end is None else float(ref.guidance_end)
    _check_window("reference", start, end)
    return Reference(tuple(kept), strength, start, end, tuple(hashes))


def _keyframe_groups(body: BaseModel, values: dict[str, Any]) -> tuple[KeyframeGroup, ...]:
    """Each keyframe_groups entry with its omitted values taken from the request's (conditioning_scale,
    keyframe_guidance_start/end), its window checked."""
    groups = []
    for g in body.keyframe_groups or ():
        strength = values["conditioning_scale"] if g.strength is None else float(g.strength)
        start = values["keyframe_guidance_start"] if g.guidance_start is None else float(g.guidance_start)
        end = values["keyframe_guidance_end"] if g.guidance_end is None else float(g.guidance_end)
        _check_window(f"{g.modality} keyframes", start, end)
        groups.append(KeyframeGroup(g.modality, strength, start, end))
    return tuple(groups)


def _controlnets(body: BaseModel, num_frames: int, images: _Images, available: list[str]) -> tuple[DenseGroup, ...]:
    """Each per-frame ControlNet group: a configured name, once; its frames in index order, inside the clip,
    one per index, each image decoded (and so checked) once and fitted, as keyframes' are."""
    groups, seen = [], set()
    for group in body.controlnets or ():
        if group.name not in available:
            raise RequestError(
                "unknown_controlnet",
                f"no ControlNet named {group.name!r} is configured on this server; available: "
                f"{', '.join(sorted(available)) if available else 'none'} ([model.controlnets]; GET /v1/models)",
            )
        if group.name in seen:
            raise RequestError("invalid_request", f"ControlNet {group.name!r} is named twice")
        seen.add(group.name)
        what = f"ControlNet {group.name!r}"
        indices = sorted(f.index for f in group.frames)
        if len(indices) > num_frames:
            raise RequestError(
                "invalid_request", f"{what}: {len(indices)} frames for a {num_frames}-frame clip: at most one per frame"
            )
        if indices[-1] >= num_frames:
            raise RequestError(
                "invalid_request", f"{what}: frame index {indices[-1]} is outside the clip's 0..{num_frames - 1}"
            )
        if twice := sorted({i for i in indices if indices.count(i) > 1}):
            raise RequestError("invalid_request", f"{what}: two frames have index {twice[0]}")
        frames = []
        for f in sorted(group.frames, key=lambda f: f.index):
            frames.append(Keyframe(f.index, images.decode(f.image, f"{what} frame {f.index}")))
        strength = 1.0 if group.strength is None else float(group.strength)
        start = 0.0 if group.guidance_start is None else float(group.guidance_start)
        end = 1.0 if group.guidance_end is None else float(group.guidance_end)
        _check_window(what, start, end)
        groups.append(DenseGroup(group.name, strength, tuple(frames), start, end))
    return tuple(groups)


def _check_window(what: str, start: float, end: float) -> None:
    """A guidance window steers some of the steps: start before end (diffusers refuses the same)."""
    if start >= end:
        raise RequestError(
            "invalid_request",
            f"{what}: guidance start {start:g} must be below guidance end {end:g} (fractions of the denoising "
            "steps: 0 = the first, 1 = the last)",
        )


@dataclasses.dataclass
class _Images:
    """How a request's images are taken in: fitted to `size` (the generation's), within the pixel limits."""

    size: tuple[int, int]
    max_pixels: int
    budget: PixelBudget

    def raw(self, text: str, what: str) -> bytes:
        """One base64 image's bytes (a data: URL's too)."""
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("invalid_image", f"{what}: image is not valid base64") from None

    def decode(self, text: str, what: str) -> bytes:
        """The bytes the record keeps (request/images.py's fitted_png) for one base64 image."""
        data = self.raw(text, what)
        try:
            return fitted_png(data, self.size, self.max_pixels, self.budget)
        except ImageError as e:
            raise RequestError("invalid_image", f"{what}: {e}") from None


def _generation_size(width: int, height: int, quality: str, config: Config, draft_adapter: bool) -> tuple[int, int]:
    """The size the engine generates at: the request's, or a draft's smaller one (_draft)."""
    if quality != "draft":
        return width, height
    scale = config.draft.adapter_scale if draft_adapter else config.draft.scale
    w, h = (max(config.limits.min_size, int(round(v * scale / 8)) * 8) for v in (width, height))
    return w, h


def _draft(request: GenerationRequest, config: Config, draft_adapter: bool, available: dict[str, float]):
    """A draft: with a distilled draft motion module (draft_adapter), its scheduler, steps and guidance;
    without, smaller and fewer steps. Either way delivered at the size asked for (video/deliver.py)."""
    draft = config.draft
    changes: dict[str, Any] = {}
    if draft_adapter:
        changes["steps"] = min(request.steps, draft.adapter_steps)
        changes["scheduler"], changes["guidance_scale"] = draft.adapter_scheduler, draft.adapter_guidance_scale
    else:
        changes["steps"] = min(request.steps, draft.steps)
    size = list(_generation_size(request.width, request.height, "draft", config, draft_adapter))
    if size != [request.width, request.height]:
        changes.update(width=size[0], height=size[1], output_width=request.width, output_height=request.height)
    lora = draft.adapter_lora  # AnimateLCM's spatial LoRA goes with its motion module
    if draft_adapter and lora and lora in available and lora not in dict(request.loras):
        changes["loras"] = request.loras + ((lora, available[lora]),)
    return dataclasses.replace(request, **changes)


def _loras(requested: list[tuple[str, float | None]], available: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """[(name, scale or None)] -> ((name, scale), ...): only names from [model.loras], each once; an omitted
    scale is the configured one (checked against LORA_SCALE with the config)."""
    chosen: dict[str, float] = {}
    for name, scale in requested:
        if name not in available:
            raise RequestError(
                "unknown_lora",
                f"no LoRA named {name!r} is configured on this server; available: "
                f"{', '.join(sorted(available)) if available else 'none'} (GET /v1/models lists them)",
            )
        if name in chosen:
            raise RequestError("invalid_request", f"LoRA {name!r} is named twice")
        chosen[name] = available[name] if scale is None else float(scale)
    return tuple(chosen.items())
