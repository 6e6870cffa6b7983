"""The POST /v1/jobs body, built from the request's one definition (model.py) and the configured limits.

It is the only place a request's values are checked against the limits: FastAPI validates HTTP bodies with
it (and shows it at /docs); `parse_body` runs it for every other caller (the CLI, tests, benchmarks).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal, get_type_hints

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from .errors import RequestError
from .limits import Limits
from .model import (
    LORA_SCALE,
    MODALITIES,
    REFERENCE_IMAGES_MAX,
    REFERENCE_STRENGTH_MAX,
    GenerationRequest,
    api_fields,
)
from .owner import OWNER_MAX_CHARS, PRIORITY_RANGE, check_owner

_REQUIRED = ("prompt",)
CONTROLNETS_MAX = 4  # per-frame ControlNet groups in one job


def _field(name: str, annotation: Any, meta: dict[str, Any], limits: Limits) -> tuple[Any, Any]:
    """(annotation, pydantic Field) for one request field; limits named by a string come from [limits]."""
    bounds = {k: getattr(limits, v) if isinstance(v, str) else v for k, v in meta["limits"].items()}
    if choices := bounds.pop("choices", None):
        annotation = Literal[tuple(choices)]  # type: ignore[valid-type]
    if name in _REQUIRED:
        return annotation, Field(description=meta["description"], **bounds)
    return annotation | None, Field(None, description=meta["description"], **bounds)


def job_create_model(limits: Limits) -> type[BaseModel]:
    """The POST /v1/jobs body, with the configured limits in its schema (so /docs and clients see them): the
    request's own fields (request/model.py), its lists (keyframes, their groups, ControlNets, LoRAs) and its
    place in the queue (owner, priority)."""
    hints = get_type_hints(GenerationRequest)
    fields: dict[str, Any] = {
        name: _field(name, hints[name], f.metadata["api"], limits) for name, f in api_fields().items()
    }
    fields |= _keyframe_fields(limits) | _controlnet_fields(limits)
    fields["retake"] = (
        RetakeIn | None,
        Field(
            None,
            description="regenerate only a span of a succeeded job (same width, height and num_frames); the seed, "
            "prompt, keyframes, strengths, ControlNets and LoRAs are this request's",
        ),
    )
    fields["reference"] = (
        ReferenceIn | None,
        Field(
            None,
            description="a look to hold (IP-Adapter): images of a character or a style, the same for every shot of "
            "a sequence; with the prompt alone it is enough to steer a job",
        ),
    )
    fields["loras"] = (list[LoraIn] | None, Field(None, max_length=8, description="configured LoRAs to turn on"))
    fields |= _queue_fields()
    return create_model(
        "JobCreate",
        __config__=ConfigDict(extra="forbid", strict=True),
        __doc__="A generation request. Omitted optional fields take the server's configured defaults.",
        **fields,
    )


class RetakeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    job: str = Field(min_length=1, max_length=64, description="the id of a succeeded, retained job: the take")
    frames: list[int] = Field(
        min_length=2,
        max_length=2,
        description="[start, end]: the generated frames to regenerate (0-based, inclusive); every other generated "
        "frame comes back bit for bit the take's",
    )


class ReferenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    images: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        max_length=REFERENCE_IMAGES_MAX,
        description="base64-encoded PNG/JPEG/WebP images; several (a character sheet's views) are combined as "
        "IP-Adapter combines them (their image tokens side by side). Kept at most 512 px on the short side; the "
        "image encoder sees a 224x224 centre crop",
    )
    strength: float | None = Field(
        None, ge=0, le=REFERENCE_STRENGTH_MAX, description="the IP-Adapter's scale; 0: no reference; omitted: 1.0"
    )
    guidance_start: float | None = Field(
        None, ge=0, le=1, description="the fraction of the steps before it starts to steer; omitted: 0"
    )
    guidance_end: float | None = Field(
        None, ge=0, le=1, description="the fraction of the steps after which it stops steering; omitted: 1"
    )


class LoraIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(min_length=1, max_length=64, description="a LoRA name from GET /v1/models (never a path)")
    scale: float | None = Field(
        None, ge=LORA_SCALE[0], le=LORA_SCALE[1], description="strength; omitted: the configured default"
    )


def _keyframe_fields(limits: Limits) -> dict[str, Any]:
    """`keyframes` (SparseCtrl's sparse images) and `keyframe_groups` (a strength and window per encoder)."""

    class KeyframeIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        index: int = Field(ge=0, le=limits.max_frames - 1, description="0-based generated frame it conditions")
        image: str = Field(min_length=1, description="base64-encoded PNG (JPEG and WebP are accepted too)")
        output_index: int | None = Field(
            None,
            ge=0,
            le=limits.max_output_frames - 1,
            description="with output_frames: the delivered frame that must show this keyframe's generated frame",
        )
        strength: float | None = Field(
            None,
            ge=0,
            le=limits.max_conditioning_scale,
            description="times conditioning_scale at this keyframe's frame, interpolated between keyframes; "
            "omitted: 1.0",
        )
        modality: Literal[MODALITIES] | None = Field(  # type: ignore[valid-type]
            None,
            description="the SparseCtrl encoder this keyframe is for; omitted: the request's modality. Keyframes "
            "of several modalities in one job (an RGB look at frame 0, line art at 0, 8 and 15) each go to their "
            "encoder, and the residuals are summed",
        )
        pin: bool | None = Field(
            None,
            description="an RGB keyframe only: its generated frame is this image itself (its VAE round trip), "
            "whatever the seed; the frames around it move on from it",
        )

    return {
        "keyframes": (
            list[KeyframeIn] | None,
            Field(None, max_length=limits.max_frames, description="sparse SparseCtrl keyframes (with modality)"),
        ),
        "keyframe_groups": (
            list[_keyframe_group_model(limits)] | None,  # type: ignore[misc]
            Field(
                None,
                max_length=len(MODALITIES),
                description="a strength and guidance window per SparseCtrl encoder, when a job's keyframes are of "
                "several modalities; a modality not listed takes conditioning_scale and keyframe_guidance_start/end",
            ),
        ),
    }


def _keyframe_group_model(limits: Limits) -> type[BaseModel]:
    """A keyframe group: one SparseCtrl encoder's strength and guidance window."""

    class KeyframeGroupIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        modality: Literal[MODALITIES] = Field(description="the keyframes' modality these settings are for")  # type: ignore[valid-type]
        strength: float | None = Field(
            None,
            ge=0,
            le=limits.max_conditioning_scale,
            description="the encoder's conditioning scale; omitted: conditioning_scale",
        )
        guidance_start: float | None = Field(
            None,
            ge=0,
            le=1,
            description="the fraction of the steps before it starts to steer; omitted: keyframe_guidance_start",
        )
        guidance_end: float | None = Field(
            None,
            ge=0,
            le=1,
            description="the fraction of the steps after which it stops; omitted: keyframe_guidance_end",
        )

    return KeyframeGroupIn


def _controlnet_fields(limits: Limits) -> dict[str, Any]:
    """`controlnets`: per-frame ControlNet groups, each an image per generated frame (or a subset)."""

    class DenseFrameIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        index: int = Field(ge=0, le=limits.max_frames - 1, description="0-based generated frame it conditions")
        image: str = Field(min_length=1, description="base64-encoded PNG (JPEG and WebP are accepted too)")

    class ControlNetIn(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        name: str = Field(
            min_length=1, max_length=64, description="a ControlNet name from GET /v1/models (never a path)"
        )
        strength: float | None = Field(
            None, ge=0, le=limits.max_conditioning_scale, description="its conditioning scale; omitted: 1.0"
        )
        frames: list[DenseFrameIn] = Field(
            min_length=1,
            max_length=limits.max_frames,
            description="one image per generated frame (indices 0..num_frames-1), or a subset of the frames; "
            "the others get nothing from this ControlNet",
        )
        guidance_start: float | None = Field(
            None, ge=0, le=1, description="the fraction of the steps before it starts to steer; omitted: 0"
        )
        guidance_end: float | None = Field(
            None, ge=0, le=1, description="the fraction of the steps after which it stops steering; omitted: 1"
        )

    return {
        "controlnets": (
            list[ControlNetIn] | None,
            Field(
                None,
                max_length=CONTROLNETS_MAX,
                description="per-frame ControlNets (e.g. depth at every frame), beside or instead of the keyframes; "
                "residuals are summed",
            ),
        )
    }


def _queue_fields() -> dict[str, Any]:
    """`owner` and `priority`: the job's place in the queue, not part of what is generated."""
    return {
        "owner": (
            Annotated[str, AfterValidator(check_owner)] | None,
            Field(
                None,
                min_length=1,
                max_length=OWNER_MAX_CHARS,
                description="who submitted the job (a name, for the queue page; no controls, bidi overrides, "
                "zero-width characters or only whitespace); the queue takes owners in turn, so one owner's many jobs "
                "cannot starve another's. With a per-artist token ([auth]) the owner is the token's: omit it or "
                "repeat it",
            ),
        ),
        "priority": (
            int | None,
            Field(
                None,
                ge=PRIORITY_RANGE[0],
                le=PRIORITY_RANGE[1],
                description="higher runs first (default 0); e.g. -1 for an overnight farm batch, so that "
                "interactive previews go ahead of it. With a per-artist token, at most the token's max_priority "
                "(403 otherwise)",
            ),
        ),
    }


_MODELS: dict[Limits, type[BaseModel]] = {}


def body_model(limits: Limits) -> type[BaseModel]:
    """job_create_model, built once per limits."""
    if limits not in _MODELS:
        _MODELS[limits] = job_create_model(limits)
    return _MODELS[limits]


def parse_body(fields: dict[str, Any] | BaseModel, limits: Limits) -> BaseModel:
    """A body checked against the limits (an already validated model passes as it is). Keyframe images may
    also be raw bytes here (the CLI reads files). RequestError("invalid_request") says what is wrong."""
    if isinstance(fields, BaseModel):
        return fields
    fields = dict(fields)
    if isinstance(fields.get("keyframes"), list):
        fields["keyframes"] = _encoded(fields["keyframes"])
    if isinstance(fields.get("controlnets"), list):
        fields["controlnets"] = [
            {**g, "frames": _encoded(g["frames"])} if isinstance(g, dict) and isinstance(g.get("frames"), list) else g
            for g in fields["controlnets"]
        ]
    reference = fields.get("reference")
    if isinstance(reference, dict) and isinstance(reference.get("images"), list):
        images = [base64.b64encode(i).decode("ascii") if isinstance(i, bytes) else i for i in reference["images"]]
        fields["reference"] = {**reference, "images": images}
    try:
        return body_model(limits).model_validate(fields)
    except ValidationError as e:
        raise RequestError("invalid_request", describe(e.errors())) from None


def _encoded(images: list) -> list:
    """Raw image bytes (a file the CLI read) as the base64 text the body carries."""
    return [
        {**k, "image": base64.b64encode(k["image"]).decode("ascii")}
        if isinstance(k, dict) and isinstance(k.get("image"), bytes)
        else k
        for k in images
    ]


def describe(errors: list[dict]) -> str:
    """pydantic's errors as one sentence: "width: Input should be a multiple of 8; ..." (at most five)."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(parts) + more
