"""Turning a submitted request (plain data) into a resolved one: config defaults applied, limits checked,
keyframe images decoded. Shared by the HTTP API and the `generate` CLI; imports neither FastAPI nor torch.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import asdict, dataclass
from typing import Any

from ..config import MODALITIES, Config
from ..engine.conditions import ImageError, decode_image
from ..engine.request import SCHEDULER_NAMES, GenerationRequest, Keyframe

SEED_MAX = 2**32 - 1


class RequestError(ValueError):
    """A request that cannot be run; `code` is the API error code, `status` the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 422):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class ResolvedJob:
    request: GenerationRequest

    def echo(self) -> dict[str, Any]:
        """The request as stored and echoed by the API: every field, keyframes without their images."""
        keyframes = [{"index": k.index, "output_index": k.output_index} for k in self.request.keyframes]
        fields = asdict(self.request) | {"keyframes": keyframes, "output_frames": self.request.delivered_frames}
        return fields

    def keyframe_pngs(self) -> dict[int, bytes]:
        out = {}
        for k in self.request.keyframes:
            buf = io.BytesIO()
            k.image.save(buf, format="PNG")
            out[k.index] = buf.getvalue()
        return out


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RequestError("invalid_request", f"{name} must be between {low} and {high}, got {value}")


def decode_keyframe_image(data: str | bytes, index: int, max_pixels: int):
    if isinstance(data, str):
        if data.startswith("data:"):
            data = data.partition(",")[2]
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("invalid_image", f"keyframe {index}: image is not valid base64") from None
    try:
        return decode_image(data, max_pixels)
    except ImageError as e:
        raise RequestError("invalid_image", f"keyframe {index}: {e}") from None


def resolve_request(
    fields: dict[str, Any],
    config: Config,
    modalities: list[str],
    seed: int,
    draft_adapter: bool = False,
    loras: dict[str, float] | None = None,
) -> ResolvedJob:
    """Apply defaults from `config`, check every limit, decode keyframes. `seed` is used when none is given.

    `fields` has the API's field names; keyframes are [{"index": int, "image": base64 str | bytes}].
    `loras`: the configured LoRAs a request may name (name -> default scale); never a path.
    """
    d, lim = config.generation, config.limits
    get = lambda name: d.__dict__[name] if fields.get(name) is None else fields[name]  # noqa: E731

    prompt = fields.get("prompt") or ""
    negative_prompt = get("negative_prompt")
    for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if len(text) > lim.max_prompt_chars:
            raise RequestError("invalid_request", f"{name} is longer than {lim.max_prompt_chars} characters")

    modality = fields.get("modality")
    if modality not in MODALITIES:
        raise RequestError("invalid_request", f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    if modality not in modalities:
        raise RequestError(
            "modality_unavailable",
            f"no condition encoder is configured for modality '{modality}' on this server; "
            f"available: {', '.join(modalities) if modalities else 'none'}",
        )

    num_frames, width, height, steps = get("num_frames"), get("width"), get("height"), get("steps")
    _check_range("num_frames", num_frames, 1, lim.max_frames)
    for name, size in (("width", width), ("height", height)):
        _check_range(name, size, lim.min_size, lim.max_size)
        if size % 8:
            raise RequestError("invalid_request", f"{name} must be a multiple of 8, got {size}")
    _check_range("steps", steps, 1, lim.max_steps)
    guidance_scale, conditioning_scale = float(get("guidance_scale")), float(get("conditioning_scale"))
    _check_range("guidance_scale", guidance_scale, 0.0, lim.max_guidance_scale)
    _check_range("conditioning_scale", conditioning_scale, 0.0, lim.max_conditioning_scale)
    fps = get("fps")
    _check_range("fps", fps, 1, lim.max_fps)
    scheduler = get("scheduler")
    if scheduler not in SCHEDULER_NAMES:
        raise RequestError("invalid_request", f"scheduler must be one of {list(SCHEDULER_NAMES)}, got {scheduler!r}")
    if fields.get("seed") is not None:
        seed = fields["seed"]
    _check_range("seed", seed, 0, SEED_MAX)

    output_frames = fields.get("output_frames")
    if output_frames is not None:
        _check_range("output_frames", output_frames, 1, lim.max_output_frames)

    raw_keyframes = fields.get("keyframes") or []
    if not raw_keyframes:
        raise RequestError("invalid_request", "at least one keyframe is needed")
    if len(raw_keyframes) > num_frames:
        raise RequestError(
            "invalid_request", f"{len(raw_keyframes)} keyframes for {num_frames} frames: at most one per frame"
        )
    seen: set[int] = set()
    keyframes = []
    for kf in raw_keyframes:
        index = kf["index"]
        if not 0 <= index < num_frames:
            raise RequestError("invalid_request", f"keyframe index {index} is outside 0..{num_frames - 1}")
        if index in seen:
            raise RequestError("invalid_request", f"two keyframes have index {index}")
        seen.add(index)
        output_index = kf.get("output_index")
        if output_index is not None:
            if output_frames is None:
                raise RequestError("invalid_request", f"keyframe {index} has an output_index but no output_frames")
            if not 0 <= output_index < output_frames:
                raise RequestError(
                    "invalid_request",
                    f"keyframe {index}: output_index {output_index} is outside 0..{output_frames - 1}",
                )
        image = decode_keyframe_image(kf["image"], index, lim.max_image_pixels)
        keyframes.append(Keyframe(index, image, output_index))
    keyframes.sort(key=lambda k: k.index)
    pinned = [k for k in keyframes if k.output_index is not None]
    for a, b in zip(pinned, pinned[1:], strict=False):
        if b.output_index <= a.output_index:
            raise RequestError(
                "invalid_request",
                f"keyframes {a.index} and {b.index} are in one order but their output_index values in the other "
                "(or equal): the clip cannot run backwards",
            )

    quality = fields.get("quality") or "final"
    if quality not in ("final", "draft"):
        raise RequestError("invalid_request", f"quality must be 'final' or 'draft', got {quality!r}")
    output_width = output_height = 0
    if quality == "draft":
        # With a distilled draft motion module (draft_adapter): its scheduler, steps and guidance. Without: smaller
        # and fewer steps. Either way the engine delivers the size asked for.
        draft = config.draft
        if draft_adapter:
            scale, steps = draft.adapter_scale, min(steps, draft.adapter_steps)
            scheduler, guidance_scale = draft.adapter_scheduler, draft.adapter_guidance_scale
        else:
            scale, steps = draft.scale, min(steps, draft.steps)
        output_width, output_height = width, height
        width, height = (max(lim.min_size, int(round(v * scale / 8)) * 8) for v in (width, height))
        if (width, height) == (output_width, output_height):
            output_width = output_height = 0

    chosen_loras = _resolve_loras(fields.get("loras") or [], loras or {})
    draft_lora = config.draft.adapter_lora
    if quality == "draft" and draft_adapter and draft_lora and draft_lora in (loras or {}):
        if draft_lora not in dict(chosen_loras):  # AnimateLCM's spatial LoRA goes with its motion module
            chosen_loras += ((draft_lora, loras[draft_lora]),)

    return ResolvedJob(
        GenerationRequest(
            prompt=prompt,
            negative_prompt=negative_prompt,
            modality=modality,
            num_frames=num_frames,
            width=width,
            height=height,
            steps=steps,
            guidance_scale=guidance_scale,
            conditioning_scale=conditioning_scale,
            seed=seed,
            scheduler=scheduler,
            fps=fps,
            keyframes=keyframes,
            output_frames=output_frames or 0,
            quality=quality,
            output_width=output_width,
            output_height=output_height,
            loras=chosen_loras,
        )
    )


def _resolve_loras(requested: list[dict[str, Any]], available: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """[{"name": ..., "scale": ...}] -> ((name, scale), ...); only names from [model.loras], each once."""
    chosen: dict[str, float] = {}
    for item in requested:
        name, scale = item.get("name"), item.get("scale")
        if name not in available:
            raise RequestError(
                "unknown_lora",
                f"no LoRA named {name!r} is configured on this server; available: "
                f"{', '.join(sorted(available)) if available else 'none'} (GET /v1/models lists them)",
            )
        if name in chosen:
            raise RequestError("invalid_request", f"LoRA {name!r} is named twice")
        scale = available[name] if scale is None else float(scale)
        _check_range(f"LoRA {name!r} scale", scale, -4.0, 4.0)
        chosen[name] = scale
    return tuple(chosen.items())
