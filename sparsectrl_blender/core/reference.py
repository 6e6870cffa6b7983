"""The Look reference (#30): image files that keep a character and a style from shot to shot through the server's
IP-Adapter (docs/api.md, "reference"). Pure Python: no bpy.

A sequence (the edit or previs scene the shots' previews go to) holds one reference that every shot cut into it
inherits; a shot may have its own instead (or none). The files are sent as they are (PNG, JPEG or WebP, the
formats the server decodes), so the sha256 the strip records is the server's record's.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .request import check_window, fraction

MAX_IMAGES = 8  # the server's limit (a character sheet's views)
STRENGTH_RANGE = (0.0, 2.0)  # the IP-Adapter scale the server takes
DEFAULT_STRENGTH = 1.0  # the server's (diffusers' and ComfyUI's) when omitted
FORMATS = "PNG, JPEG or WebP"


class LookReferenceError(ValueError):
    """A reference that cannot be sent; the message names the file or setting, for the artist."""


@dataclass(frozen=True)
class LookReference:
    """The reference a shot is generated with: its files as written ("//" = beside the .blend), the IP-Adapter
    strength and guidance window, and where it comes from (for messages and the strip's record)."""

    files: tuple[str, ...] = ()
    strength: float = DEFAULT_STRENGTH
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    source: str = ""  # "sequence 'Edit'", "shot 'sh010'", "--reference"


def is_on(reference: LookReference | None) -> bool:
    """Something to send: files at a strength above 0 (strength 0 is the job without it, so nothing is sent)."""
    return reference is not None and bool(reference.files) and reference.strength > 0.0


def resolve(shot: LookReference | None, sequence: LookReference | None) -> LookReference | None:
    """The reference a shot uses: its own when it has one (an own reference without files is "none for this
    shot"), else its sequence's, else none."""
    chosen = shot if shot is not None else sequence
    return chosen if is_on(chosen) else None


def parse_files(text: str) -> tuple[str, ...]:
    """--reference "a.png,b.png" -> ("a.png", "b.png"); "none" or "" -> () (a shot-list line turning it off)."""
    if text.strip().lower() == "none":
        return ()
    return tuple(part.strip() for part in text.split(",") if part.strip())


def check(reference: LookReference) -> None:
    """The settings the server would refuse, said before anything is read or rendered."""
    if len(reference.files) > MAX_IMAGES:
        raise LookReferenceError(
            f"the Look reference has {len(reference.files)} images: the server takes at most {MAX_IMAGES}"
        )
    low, high = STRENGTH_RANGE
    if not low <= reference.strength <= high:
        strength = reference.strength
        raise LookReferenceError(f"the Look reference strength must be {low:g} to {high:g} (got {strength:g})")
    try:
        check_window("Look reference", reference.guidance_start, reference.guidance_end)
    except ValueError as e:
        raise LookReferenceError(str(e)) from None


def image_format(data: bytes) -> str | None:
    """'PNG', 'JPEG' or 'WebP' from the file's first bytes; None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def absolute(path_text: str, blend_path: str) -> Path:
    """A file as written ("//" relative to the saved .blend, "~" the home folder) as a path; LookReferenceError when it
    is relative to a .blend not saved yet."""
    if path_text.startswith("//"):
        if not blend_path:
            raise LookReferenceError(
                f"Look reference {path_text} is relative to the .blend, which is not saved yet: save it first, or "
                "give the full path"
            )
        return Path(blend_path).parent / path_text[2:]
    return Path(path_text).expanduser()


def read_image(path: Path) -> bytes:
    """One reference file's bytes; LookReferenceError when it is missing, unreadable or not an image the server
    decodes (the panel's Add Images checks files with it too)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise LookReferenceError(f"Look reference: no file {path}") from None
    except OSError as e:
        raise LookReferenceError(f"Look reference: cannot read {path} ({e.strerror or e})") from None
    if image_format(data) is None:
        raise LookReferenceError(f"Look reference: {path} is not a {FORMATS} image (save it as one of those)")
    return data


def read_images(reference: LookReference, locate: Callable[[str], Path]) -> list[bytes]:
    """Each file's bytes, in order (read_image); LookReferenceError naming the first that cannot be sent. `locate`
    turns a file as written into a path (`absolute` with the .blend's path)."""
    check(reference)
    return [read_image(locate(text)) for text in reference.files]


def entry(reference: LookReference, images: list[bytes]) -> dict:
    """The body's "reference": the images as base64, the strength, the guidance window only when set."""
    out = {
        "images": [base64.b64encode(data).decode("ascii") for data in images],
        "strength": fraction(reference.strength),
    }
    if (reference.guidance_start, reference.guidance_end) != (0.0, 1.0):
        out["guidance_start"] = fraction(reference.guidance_start)
        out["guidance_end"] = fraction(reference.guidance_end)
    return out


def record(reference: LookReference, images: list[bytes]) -> dict:
    """What a preview strip records of the reference it was made with: files as written, their sha256 (the
    server's job record says the same), strength, window and where it came from."""
    return {
        "files": list(reference.files),
        "sha256": [hashlib.sha256(data).hexdigest() for data in images],
        "strength": fraction(reference.strength),
        "guidance": [fraction(reference.guidance_start), fraction(reference.guidance_end)],
        "source": reference.source,
    }


def unavailable(models: dict | None) -> str | None:
    """Why the server (its GET /v1/models) cannot take a reference, as a sentence; None when it can or when it
    was not asked."""
    if models is None:
        return None
    if "ip_adapter" not in models:
        return "Look reference unavailable: the server is older than reference images; update it"
    if models["ip_adapter"] is None:
        return (
            "Look reference unavailable: the server has no IP-Adapter; add one under [model.ip_adapter] "
            "(docs/weights.md)"
        )
    return None


def frame_file_name(strip_name: str, frame: int, job_id: str = "") -> str:
    """The file a Sequencer frame grabbed as a reference is written to: the strip's name made safe, its job (two
    files beside each other may have strips of one name), the frame."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in strip_name).strip("_") or "take"
    job = "".join(c for c in job_id if c.isalnum())[:8]
    return f"{safe}_{job}_frame{frame}.png" if job else f"{safe}_frame{frame}.png"
