"""Render buffers -> condition images. numpy only (Blender bundles it); no bpy, so it is tested directly.

Buffers are top row first: Z (camera distance along the view axis, huge where nothing was hit), world
normals, alpha (0 where the background shows) and, for line art, one id per object and per material
(Cryptomatte's rank-0 hashes; any value that differs between objects will do).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Camera Z at or beyond this is "nothing hit" (Cycles writes 1e10 for the background).
BACKGROUND_Z = 1e9
# The grey of the farthest surface of the shot; the background alone is black.
FAR_GREY = 24
# Line art: a depth step of more than this fraction of the distance where the surface around cannot be told
# (thin things), a depth that misses what the neighbouring surface predicts by more than this fraction, or a
# fold sharper than this angle.
DEPTH_STEP = 0.03
PLANE_MISS = 0.01
CREASE_DEGREES = 35.0


@dataclass(frozen=True)
class RenderBuffers:
    z: np.ndarray  # (h, w) float
    alpha: np.ndarray  # (h, w) float
    normal: np.ndarray | None = None  # (h, w, 3) float: line art's creases (depth needs none)
    object_id: np.ndarray | None = None  # (h, w) float: equal within an object, different between objects
    material_id: np.ndarray | None = None  # (h, w) float: the same per material

    @property
    def foreground(self) -> np.ndarray:
        return (self.alpha > 0.5) & (self.z < BACKGROUND_Z)


@dataclass(frozen=True)
class DepthRange:
    near: float
    far: float


def shot_depth_range(buffers: list[RenderBuffers]) -> DepthRange:
    """One near/far for all keyframes of a shot, so one distance is one grey on every keyframe."""
    values = [b.z[b.foreground] for b in buffers if b.foreground.any()]
    if not values:
        return DepthRange(1.0, 1.0)
    z = np.concatenate(values)
    return DepthRange(float(z.min()), float(z.max()))


def depth_image(buffers: RenderBuffers, shot: DepthRange) -> np.ndarray:
    """Near = white, far = dark grey, background = black; linear in inverse depth (as depth estimators such
    as MiDaS, which depth ControlNets learnt from, present it). uint8 (h, w, 3), grey replicated to RGB."""
    fg = buffers.foreground
    grey = np.zeros(buffers.z.shape, np.float32)
    if shot.far > shot.near:
        inv = 1.0 / np.clip(buffers.z[fg], shot.near, shot.far)
        t = (inv - 1.0 / shot.far) / (1.0 / shot.near - 1.0 / shot.far)  # 1 at near, 0 at far
        grey[fg] = FAR_GREY + t * (255 - FAR_GREY)
    else:
        grey[fg] = 255
    out = np.round(grey).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)


def line_width(width: int, height: int) -> int:
    """Line thickness in pixels, scaled with the image: 1 px up to 256, 2 px at 512, 4 px at 1024."""
    return max(1, round(min(width, height) / 256))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy > radius * radius + radius:
                continue
            shifted = np.zeros_like(mask)
            shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
                max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
            ]
            out |= shifted
    return out


def _shift(a: np.ndarray, axis: int, by: int, fill) -> np.ndarray:
    """a shifted along `axis` so that out[i] = a[i + by] (`fill` beyond the edge)."""
    out = np.full_like(a, fill)
    n = a.shape[axis]
    src = [slice(None)] * a.ndim
    dst = [slice(None)] * a.ndim
    if by >= 0:
        src[axis], dst[axis] = slice(by, n), slice(0, n - by)
    else:
        src[axis], dst[axis] = slice(0, n + by), slice(-by, n)
    out[tuple(dst)] = a[tuple(src)]
    return out


def depth_breaks(z: np.ndarray, fg: np.ndarray, axis: int, orthographic: bool = False) -> np.ndarray:
    """For each pixel pair (i, i+1) along `axis` (shape: one less along it), whether the depth breaks between
    them: neither side's surface, extended as a plane from its two pixels, reaches the other pixel. On a plane,
    inverse depth (depth itself for an orthographic camera) is linear across the image, so a floor seen at a
    grazing angle, whose depth grows fast from row to row, never breaks; a sign a few centimetres in front of a
    wall does. Pairs without two pixels of surface on either side fall back to a flat relative step."""
    q = np.where(fg, z if orthographic else 1.0 / np.maximum(z, 1e-9), np.nan).astype(np.float64)
    n = q.shape[axis]
    take = [slice(None)] * q.ndim

    def sl(lo, hi):
        take[axis] = slice(lo, hi)
        return tuple(take)

    q_prev = _shift(q, axis, -1, np.nan)[sl(0, n - 1)]  # pixel i-1
    q0, q1 = q[sl(0, n - 1)], q[sl(1, n)]
    q_next = _shift(q, axis, 2, np.nan)[sl(0, n - 1)]  # pixel i+2
    scale = np.maximum(np.abs(q0), np.abs(q1))
    with np.errstate(invalid="ignore", divide="ignore"):
        from_before = np.abs(q1 - (2 * q0 - q_prev)) / scale
        from_after = np.abs(q0 - (2 * q1 - q_next)) / scale
        miss = np.fmin(from_before, from_after)  # the better of the two predictions
        z0, z1 = z[sl(0, n - 1)], z[sl(1, n)]
        flat = np.abs(z0 - z1) > DEPTH_STEP * np.minimum(z0, z1)
    both = fg[sl(0, n - 1)] & fg[sl(1, n)]
    return both & np.where(np.isnan(miss), flat, miss > PLANE_MISS)


def lineart_image(buffers: RenderBuffers, width_px: int | None = None, orthographic: bool = False) -> np.ndarray:
    """White lines on black where the scene has real discontinuities: silhouettes (object vs background),
    object and material boundaries (ids), depth breaks (against the local surface's plane, so floors at grazing
    angles stay black) and creases (normal folds). uint8 (h, w, 3)."""
    if buffers.normal is None:
        raise ValueError("line art needs the normal pass")
    fg = buffers.foreground
    z = np.where(fg, buffers.z, np.inf)
    n = buffers.normal / np.maximum(np.linalg.norm(buffers.normal, axis=2, keepdims=True), 1e-6)
    cos_limit = np.cos(np.radians(CREASE_DEGREES))
    ids = [i for i in (buffers.object_id, buffers.material_id) if i is not None]
    edges = np.zeros(fg.shape, bool)
    for axis in (0, 1):
        a = (slice(None, -1), slice(None)) if axis == 0 else (slice(None), slice(None, -1))
        b = (slice(1, None), slice(None)) if axis == 0 else (slice(None), slice(1, None))
        both = fg[a] & fg[b]
        silhouette = fg[a] != fg[b]
        step = depth_breaks(buffers.z, fg, axis, orthographic)
        crease = both & ((n[a] * n[b]).sum(axis=2) < cos_limit)
        boundary = np.zeros_like(both)
        for id_map in ids:
            boundary |= both & (id_map[a] != id_map[b])
        edge = silhouette | step | crease | boundary
        # Draw the line on the nearer side of the pair (the object's outline, not the background's).
        nearer_a = z[a] <= z[b]
        edges[a] |= edge & nearer_a
        edges[b] |= edge & ~nearer_a
    h, w = fg.shape
    radius = (width_px or line_width(w, h)) // 2
    if radius:
        edges = _dilate(edges, radius)
    out = np.where(edges, 255, 0).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)
