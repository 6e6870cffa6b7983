"""Render buffers -> condition images. numpy only (Blender bundles it); no bpy, so it is tested directly.

Buffers are top row first: Z (camera distance along the view axis, huge where nothing was hit), alpha (0 where
the background shows) and, for line art, the world position each pixel sees and one id per object and per
material (Cryptomatte's rank-0 hashes; any value that differs between objects will do).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Camera Z at or beyond this is "nothing hit" (Cycles writes 1e10 for the background).
BACKGROUND_Z = 1e9
# The grey of a frame's farthest surface; the background alone is black.
FAR_GREY = 24
# Depth's range (depth_ranges): each frame's own, between these percentiles of its surface's distances, followed
# over time with a Gaussian of this many timeline frames (sigma), then narrowed where needed so that the frame's
# own depths fill at least this share of the greys; frames whose own far is under this ratio of their near (one
# wall seen square on) keep the followed range.
DEPTH_PERCENTILES = (0.5, 99.5)
DEPTH_FOLLOW_FRAMES = 6.0
DEPTH_MIN_FILL = 0.75
DEPTH_FLAT_RATIO = 1.02
# Line art: a depth step of more than this fraction of the distance where the surface around cannot be told
# (thin things), a depth that misses what the neighbouring surface predicts by more than this fraction, or a
# fold sharper than this angle (the surface's own turn, counted across a bevel: folds()).
DEPTH_STEP = 0.03
PLANE_MISS = 0.01
CREASE_DEGREES = 35.0


@dataclass(frozen=True)
class RenderBuffers:
    z: np.ndarray  # (h, w) float
    alpha: np.ndarray  # (h, w) float
    position: np.ndarray | None = None  # (h, w, 3) float: what each pixel sees, in world space (line art's folds)
    object_id: np.ndarray | None = None  # (h, w) float: equal within an object, different between objects
    material_id: np.ndarray | None = None  # (h, w) float: the same per material

    @property
    def foreground(self) -> np.ndarray:
        return (self.alpha > 0.5) & (self.z < BACKGROUND_Z)


@dataclass(frozen=True)
class DepthRange:
    near: float
    far: float


def _own_range(buffers: RenderBuffers) -> tuple[float, float] | None:
    """A frame's own near and far: percentiles of its surface's camera Z, so a few stray pixels do not set it."""
    z = buffers.z[buffers.foreground]
    if not z.size:
        return None
    near, far = np.percentile(z, DEPTH_PERCENTILES)
    return float(near), float(far)


def _fill(own: np.ndarray, shown: np.ndarray) -> float:
    """The share of the greys between `shown`'s far and near that a frame's own depths cover (inverse depths)."""
    overlap = min(own[1], shown[1]) - max(own[0], shown[0])
    return max(overlap, 0.0) / max(shown[1] - shown[0], 1e-12)


def _keep_contrast(own: np.ndarray, followed: np.ndarray) -> np.ndarray:
    """`followed` (far, near inverse depth), moved toward the frame's own range just as far as needed for its own
    depths to fill DEPTH_MIN_FILL of the greys (bisection on the blend: the fill grows as the blend nears own)."""
    if _fill(own, followed) >= DEPTH_MIN_FILL:
        return followed
    lo, hi = 0.0, 1.0  # the share of `followed` kept: fill(lo) is 1, fill(hi) too low
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _fill(own, own + mid * (followed - own)) >= DEPTH_MIN_FILL else (lo, mid)
    return own + lo * (followed - own)


def depth_ranges(buffers: list[RenderBuffers], frames: list[int] | None = None) -> list[DepthRange]:
    """Near/far for each frame (its timeline frame in `frames`; consecutive if not given): the frames' own ranges,
    followed over time (a Gaussian of DEPTH_FOLLOW_FRAMES timeline frames, in log distance), so one distance keeps
    nearly one grey from frame to frame and one close-up moves its neighbours' ranges only a little; then pulled
    toward a frame's own range where needed so that its depths fill DEPTH_MIN_FILL of the greys (a frame with hardly
    any depth of its own, e.g. one wall seen square on, keeps the followed range)."""
    frames = list(range(len(buffers))) if frames is None else frames
    own = [_own_range(b) for b in buffers]
    seen = [i for i, r in enumerate(own) if r is not None]
    if not seen:
        return [DepthRange(1.0, 1.0) for _ in buffers]
    t = np.array([frames[i] for i in seen], np.float64)
    log_z = np.log(np.array([own[i] for i in seen], np.float64))  # (k, 2): log near, log far
    ranges = []
    for i, r in enumerate(own):
        if r is None:
            ranges.append(DepthRange(1.0, 1.0))
            continue
        weight = np.exp(-0.5 * ((t - frames[i]) / DEPTH_FOLLOW_FRAMES) ** 2)
        near, far = np.exp(weight @ log_z / weight.sum())
        if r[1] > DEPTH_FLAT_RATIO * r[0]:
            inv = _keep_contrast(np.array([1 / r[1], 1 / r[0]]), np.array([1 / far, 1 / near]))
            near, far = 1 / inv[1], 1 / inv[0]
        ranges.append(DepthRange(float(near), float(far)))
    return ranges


def depth_images(buffers: list[RenderBuffers], frames: list[int] | None = None) -> list[np.ndarray]:
    """The depth condition images of a shot's frames (their timeline frames in `frames`), each normalised by its
    range from depth_ranges: what the add-on renders and what training clips are made of."""
    return [depth_image(b, r) for b, r in zip(buffers, depth_ranges(buffers, frames), strict=True)]


def depth_image(buffers: RenderBuffers, shown: DepthRange) -> np.ndarray:
    """Near = white, far = dark grey, background = black; linear in inverse depth between `shown`'s near and far
    (clipped beyond them), as depth estimators such as MiDaS, which depth ControlNets learnt from, present it.
    uint8 (h, w, 3), grey replicated to RGB."""
    fg = buffers.foreground
    grey = np.zeros(buffers.z.shape, np.float32)
    if shown.far > shown.near:
        inv = 1.0 / np.clip(buffers.z[fg], shown.near, shown.far)
        t = (inv - 1.0 / shown.far) / (1.0 / shown.near - 1.0 / shown.far)  # 1 at near, 0 at far
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
    if abs(by) >= n:
        return out
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


def _along(axis: int, lo: int | None, hi: int | None) -> tuple:
    """The index that takes lo:hi along `axis` (0 or 1) and everything along the other."""
    return (slice(lo, hi), slice(None)) if axis == 0 else (slice(None), slice(lo, hi))


def folds(position: np.ndarray, continuous: np.ndarray, axis: int, reach: int) -> np.ndarray:
    """For each pixel pair (i, i+1) along `axis` (shape: one less along it), whether the surface folds there by
    more than CREASE_DEGREES. The surface's direction before the pair (P[i] - P[i-k]) is compared with its
    direction after it (P[i+1+k] - P[i+1]), from the geometry itself (world positions), not from shading normals:
    a smooth-shaded box's normals turn across whole faces and a bevel's over several pixels, each step under the
    limit. k is up to `reach` pixels, as far as the surface runs on (`continuous`: pairs with no silhouette, depth
    break or id change), so a bevel's turn is counted whole; on a plane the points are in line whatever the angle
    of view. A line goes only where the turn peaks along the axis (one line per fold, not a band of `reach`)."""
    if axis == 1:  # the same along columns: rows of the transposed image
        return folds(position.transpose(1, 0, 2), continuous.T, 0, reach).T
    n, w = continuous.shape[0] + 1, continuous.shape[1]
    k_before, k_after = np.zeros(continuous.shape, np.intp), np.zeros(continuous.shape, np.intp)
    ok_before, ok_after = np.ones(continuous.shape, bool), np.ones(continuous.shape, bool)
    for k in range(1, reach + 1):  # how many pairs on from the pair the surface runs, up to `reach`
        ok_before &= _shift(continuous, 0, -k, False)  # the pair (i-k, i-k+1) is on the same surface
        ok_after &= _shift(continuous, 0, k, False)  # and (i+k, i+k+1)
        k_before += ok_before
        k_after += ok_after
    rows, cols = np.arange(n - 1)[:, None], np.arange(w)[None, :]
    dot, before_sq, after_sq = (np.zeros(continuous.shape, np.float32) for _ in range(3))
    for c in range(3):  # one coordinate at a time: contiguous (h, w) arrays, several times faster
        p = np.ascontiguousarray(position[:, :, c], dtype=np.float32)
        before = p[:-1] - p[rows - k_before, cols]  # zero where the surface does not run on: no turn
        after = p[rows + 1 + k_after, cols] - p[1:]
        dot += before * after
        before_sq += before * before
        after_sq += after * after
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.nan_to_num(dot / np.sqrt(before_sq * after_sq), nan=1.0)  # 1: no turn
    peak = (cos <= _shift(cos, 0, -1, 1.0)) & (cos <= _shift(cos, 0, 1, 1.0))  # the sharpest of its neighbours
    return peak & (cos < np.cos(np.radians(CREASE_DEGREES)))


def lineart_image(buffers: RenderBuffers, width_px: int | None = None, orthographic: bool = False) -> np.ndarray:
    """White lines on black where the scene has real discontinuities: silhouettes (object vs background),
    object and material boundaries (ids), depth breaks (against the local surface's plane, so floors at grazing
    angles stay black) and folds of the geometry (creases, bevelled corners included). uint8 (h, w, 3)."""
    if buffers.position is None:
        raise ValueError("line art needs the position pass")
    fg = buffers.foreground
    z = np.where(fg, buffers.z, np.inf)
    h, w = fg.shape
    reach = 1 + 2 * line_width(w, h)  # 3 px at 256, 5 at 512, 9 at 1024: a bevel's size scales with the image
    ids = [i for i in (buffers.object_id, buffers.material_id) if i is not None]
    edges = np.zeros(fg.shape, bool)
    for axis in (0, 1):
        a, b = _along(axis, None, -1), _along(axis, 1, None)
        both = fg[a] & fg[b]
        silhouette = fg[a] != fg[b]
        step = depth_breaks(buffers.z, fg, axis, orthographic)
        boundary = np.zeros_like(both)
        for id_map in ids:
            boundary |= both & (id_map[a] != id_map[b])
        crease = both & folds(buffers.position, both & ~step & ~boundary, axis, reach)
        edge = silhouette | step | crease | boundary
        # Draw the line on the nearer side of the pair (the object's outline, not the background's).
        nearer_a = z[a] <= z[b]
        edges[a] |= edge & nearer_a
        edges[b] |= edge & ~nearer_a
    radius = (width_px or line_width(w, h)) // 2
    if radius:
        edges = _dilate(edges, radius)
    out = np.where(edges, 255, 0).astype(np.uint8)
    return np.repeat(out[:, :, None], 3, axis=2)
