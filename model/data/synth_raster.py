"""Anti-aliased rasterisation into small patches, shared by the bottle and distractor sprites.

Polygons are filled on a ``SS``x supersampled uint8 canvas with cv2.fillPoly (fixed-point
vertices), and a pixel's coverage is the count of its covered sub-pixels (0..SS*SS). Everything
after the vertex coordinates is integer arithmetic, so masks — and the boxes computed from them —
do not depend on the floating-point details of the machine. Compositing works on small patches,
never on the whole frame, which keeps a scene with a dozen sprites fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

SS = 4  # sub-pixels per pixel side
FULL = SS * SS  # coverage count of a fully covered pixel
_SHIFT = 4  # fractional bits of the fillPoly vertex coordinates


@dataclass(frozen=True)
class Patch:
    """An image-pixel rectangle ``[x0, x0 + w) x [y0, y0 + h)``, already clipped to the image."""

    x0: int
    y0: int
    w: int
    h: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y0 + self.h), slice(self.x0, self.x0 + self.w)


def patch_around(pts: np.ndarray, margin: int, width: int, height: int) -> Patch | None:
    """The rectangle holding the points ``(N, 2)`` (x, y) plus ``margin``; None if off-image."""
    x0 = max(math.floor(float(pts[:, 0].min())) - margin, 0)
    y0 = max(math.floor(float(pts[:, 1].min())) - margin, 0)
    x1 = min(math.ceil(float(pts[:, 0].max())) + margin, width)
    y1 = min(math.ceil(float(pts[:, 1].max())) + margin, height)
    if x1 <= x0 or y1 <= y0:
        return None
    return Patch(x0, y0, x1 - x0, y1 - y0)


def new_canvas(patch: Patch) -> np.ndarray:
    """A zero supersampled canvas ``(h*SS, w*SS)`` uint8 for ``patch``."""
    return np.zeros((patch.h * SS, patch.w * SS), np.uint8)


def fill_polys(canvas: np.ndarray, patch: Patch, polys: list[np.ndarray], value: int = 1) -> None:
    """Fill polygons given in image coordinates (each ``(N, 2)`` x, y) on the canvas.

    Canvas pixel j stands for the sub-pixel centred at patch coordinate ``(j + 0.5) / SS``, so a
    point at continuous image coordinate x lands on canvas coordinate ``(x - x0) * SS - 0.5``.
    """
    origin = np.array([patch.x0, patch.y0], np.float64)
    scale = float(1 << _SHIFT)
    for p in polys:  # one call each: a single call with overlapping polygons fills even-odd
        pts = np.round(((p - origin) * SS - 0.5) * scale).astype(np.int32)
        cv2.fillPoly(canvas, [pts], int(value), lineType=cv2.LINE_8, shift=_SHIFT)


def coverage(canvas: np.ndarray, patch: Patch) -> np.ndarray:
    """Covered sub-pixels per pixel: ``(h, w)`` int32 in 0..FULL (canvas values are 0/1)."""
    return canvas.reshape(patch.h, SS, patch.w, SS).sum(axis=(1, 3), dtype=np.int32)


def blend(
    img: np.ndarray,
    patch: Patch,
    premult: np.ndarray,
    alpha: np.ndarray,
    blur_sigma: float = 0.0,
) -> None:
    """Alpha-composite a sprite over ``img`` (H, W, 3) float32 in place.

    premult: (h, w, 3) BGR 0-255 already multiplied by the opacity; alpha: (h, w) opacity 0-1.
    The optional Gaussian blur acts on the sprite alone (premultiplied colour and alpha together),
    so it softens the sprite's edges without blurring the water behind it.
    """
    if blur_sigma > 0:
        premult = cv2.GaussianBlur(premult, (0, 0), blur_sigma)
        alpha = cv2.GaussianBlur(alpha, (0, 0), blur_sigma)
    region = img[patch.slices]
    region *= 1.0 - alpha[..., None]
    region += premult


def to_image(local: np.ndarray, cx: float, cy: float, angle: float, squash: float) -> np.ndarray:
    """Sprite-local points ``(N, 2)`` (u along the sprite axis, v across, pixels) to image x, y.

    The sprite lies on the water plane: rotate by ``angle`` in that plane, then compress the
    vertical image axis by ``squash`` (the oblique camera foreshortens the plane).
    """
    c, s = math.cos(angle), math.sin(angle)
    u, v = local[:, 0], local[:, 1]
    return np.stack([cx + u * c - v * s, cy + (u * s + v * c) * squash], axis=1)


def to_local(
    xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, angle: float, squash: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_image` for pixel-centre grids (x ``(1, w)``, y ``(h, 1)``)."""
    c, s = math.cos(angle), math.sin(angle)
    dx = xs - cx
    dy = (ys - cy) / squash
    return dx * c + dy * s, -dx * s + dy * c


def pixel_grid(patch: Patch) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of the patch: x ``(1, w)`` and y ``(h, 1)`` float32."""
    xs = np.arange(patch.w, dtype=np.float32)[None, :] + (patch.x0 + 0.5)
    ys = np.arange(patch.h, dtype=np.float32)[:, None] + (patch.y0 + 0.5)
    return xs, ys
