"""What the engine is asked to make: the one definition of a job's request, and its record form.

`GenerationRequest` is fully resolved (defaults applied, limits checked). Each field that a client may send
carries its API description and limits in `api(...)`; schema.py builds the POST /v1/jobs body from them and
config.py the [generation] defaults table, so a new request field is written once, here (docs/architecture.md).

The record form (`to_record` / `from_record`) is what the job store keeps: the fields as JSON, the condition
images as the encoded bytes that came in (PNG; other formats normalised to PNG once), each under the relative
path `image_paths` names (keyframes/0003.png; a further encoder's keyframes/rgb/0003.png; controlnets/0/0003.png),
so that every runner finds them alike.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
from PIL import Image

from .images import to_rgb

# The scheduler names the API accepts (engine/schedulers.py maps each to a diffusers class).
SCHEDULER_NAMES = ("ddim", "euler", "euler_a", "dpm++ 2m", "dpm++ 2m karras", "lcm", "pndm")
MODALITIES = ("lineart", "rgb", "depth")
QUALITIES = ("final", "draft")
SEED_MAX = 2**32 - 1
LORA_SCALE = (-4.0, 4.0)  # the strength a request or [model.loras] may give a LoRA
CLIP_SKIP_MAX = 11  # SD1.5's text encoder has 12 layers
REFERENCE_IMAGES_MAX = 8  # a character sheet's views
REFERENCE_STRENGTH_MAX = 2.0  # the IP-Adapter's scale (1.0: diffusers' and ComfyUI's default)


def api(description: str, *, default_from_config: bool = False, **limits: Any) -> dict[str, Any]:
    """Field metadata: a request field clients may send. `limits` are pydantic's (ge, le, multiple_of,
    max_length, choices); a string value names a [limits] key (le="max_frames"). `default_from_config`: an
    omitted value takes [generation]'s (else the dataclass default)."""
    return {"api": {"description": description, "default_from_config": default_from_config, "limits": limits}}


@dataclass(frozen=True)
class Keyframe:
    """A condition image for one generated frame (0-based index into the clip).

    `data` is the image as it came (the record keeps these bytes); `image` is decoded from it on first use,
    or given already decoded by whoever checked it."""

    index: int
    data: bytes = b""
    output_index: int | None = None  # where this keyframe must land in the retimed output (None: no anchor)
    decoded: Image.Image | None = field(default=None, repr=False, compare=False)
    # Times conditioning_scale at this keyframe's frame; between keyframes interpolated (engine/windowed.py).
    strength: float = 1.0
    # The SparseCtrl encoder it is for: "" is the request's `modality`; another names a further encoder of the
    # same job (an RGB look at frame 0 beside line art at 0, 8 and 15), whose residuals are summed with its.
    modality: str = ""
    # An RGB keyframe whose generated frame is the image itself (its VAE round trip): engine/known_frames.py.
    pin: bool = False

    @cached_property
    def image(self) -> Image.Image:
        if self.decoded is not None:
            return self.decoded
        with Image.open(io.BytesIO(self.data)) as img:
            img.load()
            return to_rgb(img)

    @classmethod
    def of_image(
        cls,
        index: int,
        image: Image.Image,
        output_index: int | None = None,
        strength: float = 1.0,
        modality="",
        pin: bool = False,
    ) -> Keyframe:
        """A keyframe from a decoded image (tests, benchmarks): its record bytes are the image as PNG."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return cls(index, buf.getvalue(), output_index, image, strength, modality, pin)


@dataclass(frozen=True)
class Retake:
    """Regenerate generated frames `start`..`end` (inclusive) of the succeeded job `job`, keeping every other
    frame bit for bit. `latents` and `frames` are the parent's take (TAKE_LATENTS, TAKE_FRAMES as .npy bytes),
    copied into this job's folder at submission, so the parent may be pruned and a cluster worker gets them as
    it gets keyframes."""

    job: str
    start: int
    end: int
    latents_data: bytes = field(default=b"", repr=False, compare=False)
    frames_data: bytes = field(default=b"", repr=False, compare=False)

    @cached_property
    def latents(self) -> np.ndarray:
        """The parent's final latents, float32 (1, channels, frames, height/8, width/8)."""
        return np.load(io.BytesIO(self.latents_data), allow_pickle=False)

    @cached_property
    def frames(self) -> np.ndarray:
        """The parent's generated frames, uint8 (frames, height, width, 3), before delivery."""
        return np.load(io.BytesIO(self.frames_data), allow_pickle=False)

    def kept(self, num_frames: int) -> list[int]:
        """The generated frames kept from the parent: all outside the span."""
        return [f for f in range(num_frames) if not self.start <= f <= self.end]


@dataclass(frozen=True)
class Reference:
    """A look to hold (IP-Adapter, engine/reference.py): images of a character or a style, combined as diffusers'
    IP-Adapter combines several (their image tokens side by side), at `strength` (the adapter's scale) over the
    guidance window. `images` are the bytes kept (PNG, request/images.py reference_png); `sha256` the images' as
    they were sent, so a client can tell which reference a take used."""

    images: tuple[bytes, ...] = field(repr=False)
    strength: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    sha256: tuple[str, ...] = ()

    @cached_property
    def decoded(self) -> list[Image.Image]:
        out = []
        for data in self.images:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                out.append(to_rgb(img))
        return out

    @property
    def steers(self) -> bool:
        """Strength 0 is the job without a reference, bit for bit: the engine leaves the adapter out."""
        return self.strength > 0


@dataclass(frozen=True)
class KeyframeGroup:
    """The strength and guidance window of one SparseCtrl encoder's keyframes, where they differ from the
    request's conditioning_scale and keyframe_guidance_start/end (which every other encoder takes)."""

    modality: str
    strength: float
    guidance_start: float = 0.0
    guidance_end: float = 1.0


@dataclass(frozen=True)
class DenseGroup:
    """Images for a per-frame ControlNet (e.g. Blender's depth at every generated frame), with its strength.

    `frames` are in index order: one per generated frame, or a subset (the ControlNet adds nothing to the
    others). `name` is a configured ControlNet ([model.controlnets]), never a path."""

    name: str
    strength: float
    frames: tuple[Keyframe, ...]
    # The part of the denoising it steers, as fractions of the steps (diffusers' control_guidance_start/end).
    guidance_start: float = 0.0
    guidance_end: float = 1.0


def guided(step: int, steps: int, window: tuple[float, float]) -> bool:
    """Whether a condition steers denoising step `step` of `steps`: diffusers' controlnet_keep, which is 0 where
    step/steps < start or (step+1)/steps > end. Out of its window it is not run at all (diffusers runs it at
    scale 0 and adds the zeros: the same sums)."""
    start, end = window
    return not (step / steps < start or (step + 1) / steps > end)


# What a succeeded job keeps for retakes (jobs/execute.py writes them), and where a retake's copy lives.
TAKE_LATENTS, TAKE_FRAMES = "take/latents.npy", "take/frames.npy"
PARENT_LATENTS, PARENT_FRAMES = "retake/latents.npy", "retake/frames.npy"


def keyframe_path(index: int, modality: str = "") -> str:
    """The request's own encoder's keyframes as before; a further encoder's in a folder of its modality's."""
    return f"keyframes/{modality + '/' if modality else ''}{index:04d}.png"


def dense_frame_path(group: int, index: int) -> str:
    return f"controlnets/{group}/{index:04d}.png"


def reference_path(n: int) -> str:
    return f"reference/{n}.png"


def image_paths(fields: dict[str, Any]) -> list[str]:
    """The images a request record refers to, as relative paths in its job's folder."""
    paths = [keyframe_path(k["index"], k.get("modality", "")) for k in fields.get("keyframes", ())]
    for g, group in enumerate(fields.get("controlnets", ())):
        paths += [dense_frame_path(g, index) for index in group["frames"]]
    if fields.get("retake"):
        paths += [PARENT_LATENTS, PARENT_FRAMES]
    if reference := fields.get("reference"):
        paths += [reference_path(n) for n in range(reference["images"])]
    return paths


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str = field(metadata=api("what the clip shows", max_length="max_prompt_chars"))
    negative_prompt: str = field(
        metadata=api("what it should not show", default_from_config=True, max_length="max_prompt_chars")
    )
    modality: str = field(
        metadata=api(
            "the keyframes' kind: a configured SparseCtrl encoder (needed with keyframes; '' in a job without); "
            "a keyframe naming another modality goes to that encoder too",
            choices=MODALITIES,
        )
    )
    num_frames: int = field(metadata=api("frames the model generates", default_from_config=True, ge=1, le="max_frames"))
    width: int = field(
        metadata=api("generated width in pixels", default_from_config=True, ge="min_size", le="max_size", multiple_of=8)
    )
    height: int = field(
        metadata=api(
            "generated height in pixels", default_from_config=True, ge="min_size", le="max_size", multiple_of=8
        )
    )
    steps: int = field(metadata=api("denoising steps", default_from_config=True, ge=1, le="max_steps"))
    guidance_scale: float = field(
        metadata=api("classifier-free guidance", default_from_config=True, ge=0, le="max_guidance_scale")
    )
    conditioning_scale: float = field(
        metadata=api("strength of the keyframes", default_from_config=True, ge=0, le="max_conditioning_scale")
    )
    seed: int = field(metadata=api("omitted: a random seed, reported in the job", ge=0, le=SEED_MAX))
    scheduler: str = field(metadata=api("the sampler", default_from_config=True, choices=SCHEDULER_NAMES))
    fps: int = field(metadata=api("frame rate of the MP4", default_from_config=True, ge=1, le="max_fps"))
    keyframes: list[Keyframe] = field(default_factory=list)  # the API's shape is schema.py's KeyframeIn
    keyframe_guidance_start: float = field(
        default=0.0,
        metadata=api(
            "the fraction of the denoising steps before the keyframes start to steer (diffusers' "
            "control_guidance_start; ComfyUI's start percent)",
            ge=0,
            le=1,
        ),
    )
    keyframe_guidance_end: float = field(
        default=1.0,
        metadata=api(
            "the fraction of the denoising steps after which the keyframes stop steering (diffusers' "
            "control_guidance_end); a scribble encoder's stock-footage look goes at 0.2-0.4",
            ge=0,
            le=1,
        ),
    )
    # Strength and guidance window per SparseCtrl encoder, where not the request's; schema.py's KeyframeGroupIn.
    keyframe_groups: tuple[KeyframeGroup, ...] = ()
    controlnets: tuple[DenseGroup, ...] = ()  # per-frame ControlNets; the API's shape is schema.py's ControlNetIn
    # Frames in the delivered clip after retiming; 0: num_frames (no retiming).
    output_frames: int = field(
        default=0,
        metadata=api(
            "retime the clip to this many frames (e.g. the shot's length), keyframes pinned",
            ge=1,
            le="max_output_frames",
        ),
    )
    quality: str = field(
        default="final",
        metadata=api(
            "draft: smaller and fewer steps ([draft] in the config), scaled up to width x height", choices=QUALITIES
        ),
    )
    output_width: int = 0  # delivered size when it differs from the generation size (drafts); 0: width
    output_height: int = 0
    loras: tuple[tuple[str, float], ...] = ()  # (configured LoRA name, scale); the API's shape is schema.py's
    clip_skip: int = field(
        default=0,
        metadata=api(
            "text-encoder layers to skip from the end (diffusers' clip_skip; A1111's 'Clip skip' is this + 1)",
            default_from_config=True,
            ge=0,
            le=CLIP_SKIP_MAX,
        ),
    )
    color_lock: bool = field(
        default=False,
        metadata=api(
            "bring each generated frame's colour (mean and spread per CIELAB channel) to the RGB keyframes', "
            "interpolated between them (video/color_lock.py); needs RGB keyframes"
        ),
    )
    # A retake of a succeeded job's span (None: a new take); the API's shape is schema.py's RetakeIn.
    retake: Retake | None = None
    # A look to hold across shots (IP-Adapter; None: none); the API's shape is schema.py's ReferenceIn.
    reference: Reference | None = None

    @property
    def delivered_frames(self) -> int:
        return self.output_frames or self.num_frames

    def keyframe_modalities(self) -> list[str]:
        """The SparseCtrl encoders the keyframes need: the request's modality first (its residuals are added
        first, as before), then the others in MODALITIES order."""
        named = {k.modality for k in self.keyframes} - {"", self.modality}
        own = any(k.modality in ("", self.modality) for k in self.keyframes)
        return ([self.modality] if own else []) + [m for m in MODALITIES if m in named]

    def keyframe_settings(self, modality: str) -> tuple[float, tuple[float, float]]:
        """(conditioning scale, guidance window) of one encoder's keyframes: its keyframe_groups entry, else the
        request's conditioning_scale and keyframe_guidance_start/end."""
        for group in self.keyframe_groups:
            if group.modality == modality:
                return group.strength, (group.guidance_start, group.guidance_end)
        return self.conditioning_scale, (self.keyframe_guidance_start, self.keyframe_guidance_end)

    def keyframes_for(self, modality: str) -> list[Keyframe]:
        """One encoder's keyframes, in index order (the request's own modality: those naming none or it)."""
        names = ("", self.modality) if modality == self.modality else (modality,)
        return sorted((k for k in self.keyframes if k.modality in names), key=lambda k: k.index)

    def to_record(self) -> tuple[dict[str, Any], dict[str, bytes]]:
        """(the fields as stored and echoed by the API, conditions without their images; the images' bytes by
        their path in the job's folder, image_paths)."""
        images = {"keyframes", "controlnets", "keyframe_groups", "retake", "reference"}
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in images}
        fields["keyframes"] = [
            {"index": k.index, "output_index": k.output_index, "strength": k.strength}
            | ({"modality": k.modality} if k.modality else {})
            | ({"pin": True} if k.pin else {})
            for k in self.keyframes
        ]
        if self.retake is not None:
            fields["retake"] = {"job": self.retake.job, "frames": [self.retake.start, self.retake.end]}
        if self.reference is not None:
            ref = self.reference
            fields["reference"] = {
                "images": len(ref.images),
                "strength": ref.strength,
                "guidance_start": ref.guidance_start,
                "guidance_end": ref.guidance_end,
                "sha256": list(ref.sha256),
            }
        fields["keyframe_groups"] = [dataclasses.asdict(g) for g in self.keyframe_groups]
        fields["controlnets"] = [
            {
                "name": g.name,
                "strength": g.strength,
                "frames": [f.index for f in g.frames],
                "guidance_start": g.guidance_start,
                "guidance_end": g.guidance_end,
            }
            for g in self.controlnets
        ]
        fields["output_frames"] = self.delivered_frames
        fields["loras"] = [list(pair) for pair in self.loras]
        data = {keyframe_path(k.index, k.modality): k.data for k in self.keyframes}
        for n, group in enumerate(self.controlnets):
            data |= {dense_frame_path(n, f.index): f.data for f in group.frames}
        if self.retake is not None:
            data |= {PARENT_LATENTS: self.retake.latents_data, PARENT_FRAMES: self.retake.frames_data}
        if self.reference is not None:
            data |= {reference_path(n): image for n, image in enumerate(self.reference.images)}
        return fields, data

    @classmethod
    def from_record(cls, fields: dict[str, Any], read_image: Callable[[str], bytes]) -> GenerationRequest:
        """The request a record holds; `read_image(path)` gives an image's bytes (paths as image_paths names
        them). Fields a record from an older release lacks take their defaults."""
        conditions = {"keyframes", "controlnets", "keyframe_groups", "retake", "reference"}
        known = {f.name for f in dataclasses.fields(cls)} - conditions
        values = {k: v for k, v in fields.items() if k in known}
        values["loras"] = tuple((name, scale) for name, scale in values.get("loras", ()))
        keyframes = [
            Keyframe(
                k["index"],
                read_image(keyframe_path(k["index"], k.get("modality", ""))),
                k.get("output_index"),
                strength=k.get("strength", 1.0),
                modality=k.get("modality", ""),
                pin=k.get("pin", False),
            )
            for k in fields["keyframes"]
        ]
        retake = None
        if parent := fields.get("retake"):
            start, end = parent["frames"]
            retake = Retake(parent["job"], start, end, read_image(PARENT_LATENTS), read_image(PARENT_FRAMES))
        reference = None
        if ref := fields.get("reference"):
            images = tuple(read_image(reference_path(n)) for n in range(ref["images"]))
            window = (ref.get("guidance_start", 0.0), ref.get("guidance_end", 1.0))
            reference = Reference(images, ref["strength"], *window, tuple(ref.get("sha256", ())))
        groups = tuple(KeyframeGroup(**g) for g in fields.get("keyframe_groups", ()))
        controlnets = tuple(
            DenseGroup(
                g["name"],
                g["strength"],
                tuple(Keyframe(i, read_image(dense_frame_path(n, i))) for i in g["frames"]),
                g.get("guidance_start", 0.0),
                g.get("guidance_end", 1.0),
            )
            for n, g in enumerate(fields.get("controlnets", ()))
        )
        conditions = dict(keyframe_groups=groups, controlnets=controlnets, retake=retake, reference=reference)
        return cls(**values, keyframes=keyframes, **conditions)


def api_fields() -> dict[str, dataclasses.Field]:
    """The request fields a client may send, by name, in declaration order."""
    return {f.name: f for f in dataclasses.fields(GenerationRequest) if "api" in f.metadata}


def configurable_fields() -> dict[str, dataclasses.Field]:
    """The fields whose omitted value comes from [generation] in the config."""
    return {n: f for n, f in api_fields().items() if f.metadata["api"]["default_from_config"]}
