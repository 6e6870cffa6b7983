"""Keyframe images fitted to the generation size the documented way: request/images.py's fit_to_size, which the
server also applies as a request arrives (so the engine finds most images at the generation size already)."""

from __future__ import annotations

from ..request.images import fit_to_size

__all__ = ["fit_to_size"]
