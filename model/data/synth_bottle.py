"""One floating plastic bottle: its shape, its material, and its rendering into the frame.

A bottle is a body, a shoulder, a neck and a cap, optionally with a label band, lying on the water
plane at any orientation. Part of it may be under water: that part is drawn faint and tinted by the
water and does not count as visible. The annotation box is the tight box of the visible pixels,
where a pixel is visible when at least a quarter of its sub-pixels show the above-water bottle
(a quarter rather than half: the cap of a small bottle is often thinner than a pixel, and its
strong colour is plainly visible, so an annotator would include it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from model.data.synth_raster import (
    FULL,
    Patch,
    blend,
    coverage,
    fill_polys,
    new_canvas,
    patch_around,
    pixel_grid,
    to_image,
    to_local,
)

Colour = tuple[float, float, float]  # BGR, 0-255

# Outline stations along the axis, as fractions of the length from the centre.
_BODY_END, _SHOULDER_END, _CAP_START = 0.12, 0.29, 0.38
_NECK, _CAP = 0.45, 0.58  # neck and cap half-widths as fractions of the body radius
_SUB_TINT = np.array([0.95, 0.9, 0.6], np.float32)  # water absorbs red first
_SUB_ALPHA = 0.3  # opacity of the submerged part


@dataclass(frozen=True)
class Bottle:
    """A bottle on the water plane. Lengths are in image pixels, angles in radians."""

    cx: float
    cy: float
    length: float  # end to end along the axis (before foreshortening)
    radius: float  # body radius
    angle: float  # axis direction in the water plane
    squash: float  # vertical foreshortening of the water plane, (0, 1]
    body: Colour
    opacity: float  # material opacity: clear plastic is see-through
    clear: bool  # clear plastic: bright rims, water shows through
    cap: Colour
    label: Colour | None  # label band colour, None = no label
    label_span: tuple[float, float]  # label band along the axis, fractions of the length
    sub_side: int  # +1 / -1: which long side sinks
    sub_level: float  # waterline across the body in radius units; <= -1 means fully afloat
    sub_tilt: float  # waterline slope along the axis (one end lower than the other)
    specular: float  # strength of the highlight stripe, 0-1
    blur: float  # Gaussian sigma of the optical blur, pixels
    vx: float = 0.0  # drift, pixels per frame
    vy: float = 0.0
    spin: float = 0.0  # radians per frame


@dataclass(frozen=True)
class BottleDraw:
    """What was drawn: the visible-pixel mask of the patch and its tight box (None if invisible)."""

    patch: Patch
    visible: np.ndarray  # (h, w) bool, pixels >= 1/4 covered by the above-water bottle
    box: tuple[int, int, int, int] | None  # xmin, ymin, xmax, ymax: pixel edges, max exclusive
    truncated: bool  # the bottle reaches past the image border


def _outline(b: Bottle) -> np.ndarray:
    """Closed outline in sprite-local (u, v) pixels, ``(N, 2)``."""
    half, r = b.length / 2.0, b.radius
    bevel = 0.3 * r
    right = [(-half, r - bevel), (-half + bevel, r), (_BODY_END * b.length, r)]
    for k in range(1, 5):  # rounded shoulder from the body radius down to the neck
        f = k / 4.0
        w = _NECK + (1.0 - _NECK) * 0.5 * (1.0 + math.cos(math.pi * f))
        right.append(((_BODY_END + (_SHOULDER_END - _BODY_END) * f) * b.length, w * r))
    right += [(_CAP_START * b.length, _NECK * r), (_CAP_START * b.length, _CAP * r),
              (half, _CAP * r)]
    pts = right + [(u, -v) for u, v in reversed(right)]
    return np.array(pts, np.float64)


def _rect(u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], np.float64)


def _submerged(b: Bottle) -> np.ndarray:
    """Local polygon of the sunken half-plane ``side * v / r < level + tilt * u / half``."""
    half, r, reach = b.length / 2.0, b.radius, 1.2
    lo, hi = b.sub_level - b.sub_tilt * reach, b.sub_level + b.sub_tilt * reach
    deep = min(lo, hi, -1.0) - 2.0
    quad = np.array([(-reach * half, deep * r), (reach * half, deep * r),
                     (reach * half, hi * r), (-reach * half, lo * r)], np.float64)
    quad[:, 1] *= b.sub_side
    return quad


def bottle_outline(b: Bottle, t: float = 0.0) -> np.ndarray:
    """The bottle's outline in image coordinates at frame time t, ``(N, 2)`` x, y."""
    return to_image(_outline(b), b.cx + b.vx * t, b.cy + b.vy * t, b.angle + b.spin * t, b.squash)


def _coverages(
    b: Bottle, patch: Patch, outline: np.ndarray, place: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Covered sub-pixels per pixel (h, w) of: the whole bottle, its above-water part, and the
    above-water parts of the cap and of the label band. ``place`` maps local points to the image.
    """
    L, r = b.length, b.radius
    full = new_canvas(patch)
    fill_polys(full, patch, [outline])
    above = full.copy()
    if b.sub_level > -1.0:
        fill_polys(above, patch, [place(_submerged(b))], value=0)
    cap = new_canvas(patch)
    fill_polys(cap, patch, [place(_rect(_CAP_START * L, L / 2.0, -_CAP * r, _CAP * r))])
    n_label = np.zeros((patch.h, patch.w), np.int32)
    if b.label is not None:
        lab = new_canvas(patch)
        u0, u1 = b.label_span  # within the straight body, so the rectangle needs no clipping
        fill_polys(lab, patch, [place(_rect(u0 * L, u1 * L, -r, r))])
        n_label = coverage(lab & above, patch)
    return coverage(full, patch), coverage(above, patch), coverage(cap & above, patch), n_label


def draw_bottle(img: np.ndarray, b: Bottle, t: float = 0.0) -> BottleDraw | None:
    """Render ``b`` at frame time ``t`` into ``img`` (H, W, 3) float32 BGR in place.

    Returns None when the bottle is entirely outside the image.
    """
    height, width = img.shape[:2]
    cx, cy, ang = b.cx + b.vx * t, b.cy + b.vy * t, b.angle + b.spin * t

    def place(local: np.ndarray) -> np.ndarray:
        return to_image(local, cx, cy, ang, b.squash)

    outline = place(_outline(b))
    patch = patch_around(outline, 3, width, height)
    if patch is None:
        return None
    truncated = bool(outline[:, 0].min() < 0 or outline[:, 1].min() < 0
                     or outline[:, 0].max() > width or outline[:, 1].max() > height)
    n_full, n_above, n_cap, n_label = _coverages(b, patch, outline, place)
    r = b.radius

    # Cylinder shading across the axis, a specular stripe, and bright rims for clear plastic.
    xs, ys = pixel_grid(patch)
    _, v = to_local(xs, ys, cx, cy, ang, b.squash)
    vn = np.clip(v / r, -1.0, 1.0)
    roundness = np.sqrt(1.0 - vn * vn)
    shade = (0.7 + 0.4 * roundness)[..., None]
    spec = (b.specular * 255.0 * np.exp(-(((vn - 0.4) / 0.22) ** 2)))[..., None]
    body_col = np.asarray(b.body, np.float32) * shade + spec
    body_alpha = np.full(vn.shape, b.opacity, np.float32)
    if b.clear:
        rim = np.exp(-(((np.abs(vn) - 0.9) / 0.12) ** 2))
        body_alpha = np.minimum(body_alpha + 0.45 * rim, 1.0)
        body_col = body_col + (70.0 * rim)[..., None]
    cap_col = np.asarray(b.cap, np.float32) * (0.75 + 0.35 * roundness)[..., None] + 0.5 * spec

    w_cap = n_cap.astype(np.float32) / FULL
    w_label = n_label.astype(np.float32) / FULL
    w_body = (n_above - n_cap - n_label).clip(0).astype(np.float32) / FULL
    w_sub = (n_full - n_above).astype(np.float32) / FULL
    alpha = w_body * body_alpha + w_cap + w_label + w_sub * _SUB_ALPHA
    premult = (body_col * (w_body * body_alpha)[..., None]
               + body_col * _SUB_TINT * (w_sub * _SUB_ALPHA)[..., None]
               + cap_col * w_cap[..., None])
    if b.label is not None:
        lab_col = np.asarray(b.label, np.float32) * shade
        premult += lab_col * w_label[..., None]

    # The waterline darkens the water right around the bottle (meniscus and shadow).
    halo = cv2.GaussianBlur(n_full.astype(np.float32) / FULL, (0, 0), 1.2)
    img[patch.slices] *= (1.0 - 0.3 * halo)[..., None]
    blend(img, patch, premult, alpha, b.blur)

    visible = n_above * 4 >= FULL
    return BottleDraw(patch, visible, _tight_box(visible, patch), truncated)


def _tight_box(mask: np.ndarray, patch: Patch) -> tuple[int, int, int, int] | None:
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        return None
    return (patch.x0 + int(cols[0]), patch.y0 + int(rows[0]),
            patch.x0 + int(cols[-1]) + 1, patch.y0 + int(rows[-1]) + 1)
