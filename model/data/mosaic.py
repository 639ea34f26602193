"""Multi-image augmentations of the YOLOX training pipeline: mosaic and mixup.

Same conventions as :mod:`model.data.transforms`: images ``(H, W, 3)`` BGR uint8, labels
``(N, 5)`` float ``x1, y1, x2, y2, class`` in pixels of their image. Both follow the official
``yolox/data/datasets/mosaicdetection.py``; the random draws are split from the geometry so that
the geometry can be tested with hand-placed values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np

from model.data.transforms import PAD_VALUE, box_candidates, letterbox, resize_to_fit

Rect = tuple[int, int, int, int]  # x1, y1, x2, y2 (exclusive ends), integer pixels

MIXUP_MIN_BOX = 5.0  # official mixup keeps pasted boxes wider and taller than 5 px after the crop


def mosaic_placement(
    quadrant: int, xc: int, yc: int, w: int, h: int, size: int
) -> tuple[Rect, Rect]:
    """Where tile ``quadrant`` (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right) of size
    ``w`` x ``h`` goes on the ``2*size`` square canvas around the centre ``(xc, yc)``.

    Returns ``(canvas_rect, tile_rect)``: ``canvas[cy1:cy2, cx1:cx2] = tile[ty1:ty2, tx1:tx2]``.
    Each tile touches the centre with its inner corner and is cut where it leaves the canvas.
    """
    big = 2 * size
    if quadrant == 0:
        c = (max(xc - w, 0), max(yc - h, 0), xc, yc)
        t = (w - (c[2] - c[0]), h - (c[3] - c[1]), w, h)
    elif quadrant == 1:
        c = (xc, max(yc - h, 0), min(xc + w, big), yc)
        t = (0, h - (c[3] - c[1]), min(w, c[2] - c[0]), h)
    elif quadrant == 2:
        c = (max(xc - w, 0), yc, xc, min(big, yc + h))
        t = (w - (c[2] - c[0]), 0, w, min(c[3] - c[1], h))
    elif quadrant == 3:
        c = (xc, yc, min(xc + w, big), min(big, yc + h))
        t = (0, 0, min(w, c[2] - c[0]), min(c[3] - c[1], h))
    else:
        raise ValueError(f"mosaic quadrant must be 0, 1, 2 or 3, got {quadrant}")
    return c, t


def compose_mosaic(
    tiles: Sequence[tuple[np.ndarray, np.ndarray]], xc: int, yc: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Paste four ``(image, labels)`` tiles around ``(xc, yc)`` on a ``2*size`` square canvas.

    Each tile is first resized to fit ``size`` (a no-op for images the loader already resized).
    Returns ``(canvas (2*size, 2*size, 3) uint8 padded with 114, labels (N, 5))``; boxes are
    shifted with their tile and clipped to the canvas but not dropped (official), so a box of a
    tile's hidden part comes back with zero width or height.
    """
    if len(tiles) != 4:
        raise ValueError(f"a mosaic needs 4 tiles, got {len(tiles)}")
    canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, dtype=np.uint8)
    parts = []
    for quadrant, (img, labels) in enumerate(tiles):
        img, r = resize_to_fit(img, size)
        h, w = img.shape[:2]
        (cx1, cy1, cx2, cy2), (tx1, ty1, tx2, ty2) = mosaic_placement(quadrant, xc, yc, w, h, size)
        canvas[cy1:cy2, cx1:cx2] = img[ty1:ty2, tx1:tx2]
        moved = labels.astype(np.float32, copy=True)
        moved[:, [0, 2]] = labels[:, [0, 2]] * r + (cx1 - tx1)
        moved[:, [1, 3]] = labels[:, [1, 3]] * r + (cy1 - ty1)
        parts.append(moved)
    out = np.concatenate(parts, 0)
    out[:, :4] = out[:, :4].clip(0, 2 * size)
    return canvas, out


def random_mosaic_centre(rng: np.random.Generator, size: int) -> tuple[int, int]:
    """The official mosaic centre ``(xc, yc)``, each ``int(uniform(size/2, 3*size/2))``."""
    xc = int(rng.uniform(0.5 * size, 1.5 * size))
    yc = int(rng.uniform(0.5 * size, 1.5 * size))
    return xc, yc


class MixupDraw(NamedTuple):
    """The random draws of one mixup: canvas ``jitter``, mirror, crop offsets in pixels."""

    jitter: float
    flip: bool
    x_offset: int
    y_offset: int


def draw_mixup(
    rng: np.random.Generator, base_hw: tuple[int, int], scale_range: tuple[float, float]
) -> MixupDraw:
    """The official mixup draws for a base of ``base_hw`` (H, W): jitter in ``scale_range``,
    mirror with probability 1/2, crop offsets uniform over the part of the jittered canvas (H
    square) past the base."""
    jitter = rng.uniform(*scale_range)
    flip = bool(rng.uniform() > 0.5)
    target_h, target_w = base_hw
    cp_side = int(target_h * jitter)
    # Official randint(0, extra - 1): the last offset is never drawn; kept for parity.
    y_offset = int(rng.integers(0, cp_side - target_h)) if cp_side > target_h else 0
    x_offset = int(rng.integers(0, cp_side - target_w)) if cp_side > target_w else 0
    return MixupDraw(jitter, flip, x_offset, y_offset)


def mixup_labels(
    base_labels: np.ndarray,
    other_labels: np.ndarray,
    ratio: float,
    base_hw: tuple[int, int],
    draw: MixupDraw,
) -> np.ndarray | None:
    """The boxes of :func:`mixup`: ``base_labels`` plus the boxes of ``other`` that survive, or
    None when none survives (then mixup leaves the base unchanged, official).

    ``other_labels`` (M, 5) are in pixels of ``other``; ``ratio`` is its letterbox ratio into the
    ``H`` square canvas (``resize_to_fit``'s ``r``).
    """
    target_h, target_w = base_hw
    side = int(target_h * draw.jitter)  # the jittered canvas, square
    boxes = other_labels[:, :4].astype(np.float64) * (ratio * draw.jitter)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, side)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, side)
    if draw.flip:
        boxes[:, [0, 2]] = side - boxes[:, [2, 0]]
    moved = boxes.copy()
    moved[:, [0, 2]] = (boxes[:, [0, 2]] - draw.x_offset).clip(0, target_w)
    moved[:, [1, 3]] = (boxes[:, [1, 3]] - draw.y_offset).clip(0, target_h)
    keep = box_candidates(boxes, moved, wh_thr=MIXUP_MIN_BOX)
    if not keep.any():
        return None
    added = np.concatenate([moved[keep], other_labels[keep, 4:5]], 1).astype(np.float32)
    return np.concatenate([base_labels.astype(np.float32), added], 0)


def mixup_image(base: np.ndarray, other_canvas: np.ndarray, draw: MixupDraw) -> np.ndarray:
    """The pixels of :func:`mixup`: ``other_canvas`` (the other image letterboxed into an H x H
    canvas, pad 114) resized by the jitter, mirrored, placed on black, cropped and blended
    ``floor(0.5 * base + 0.5 * crop)`` into ``base`` (H, W, 3)."""
    target_h, target_w = base.shape[:2]
    side = int(target_h * draw.jitter)
    cp = cv2.resize(other_canvas, (side, side))
    if draw.flip:
        cp = cp[:, ::-1]
    padded = np.zeros((max(side, target_h), max(side, target_w), 3), dtype=np.uint8)
    padded[:side, :side] = cp
    y, x = draw.y_offset, draw.x_offset
    crop = padded[y : y + target_h, x : x + target_w]
    return ((base.astype(np.uint16) + crop) >> 1).astype(np.uint8)


def mixup(
    base: np.ndarray,
    base_labels: np.ndarray,
    other: np.ndarray,
    other_labels: np.ndarray,
    *,
    jitter: float,
    flip: bool,
    x_offset: int,
    y_offset: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``other`` into ``base`` half and half, adding the boxes of ``other`` that survive.

    ``other`` is letterboxed (top-left, pad 114) into a canvas of ``base``'s height H, then that
    canvas is resized by ``jitter``, optionally mirrored, placed top-left on a black canvas of at
    least ``base``'s size and cropped at ``(x_offset, y_offset)`` to H x W. Its boxes follow, are
    clipped to the crop and kept when :func:`box_candidates` passes with a 5 px minimum. If none
    survives, ``base`` and its labels come back unchanged (official). The blend is
    ``floor(0.5 * base + 0.5 * other)`` per channel, the official float blend's exact result.
    (:func:`mixup_labels` and :func:`mixup_image` are the two halves.)

    Returns ``(image (H, W, 3) uint8, labels (N + kept, 5))``.
    """
    draw = MixupDraw(jitter, flip, x_offset, y_offset)
    canvas, ratio = letterbox(other, base.shape[0])
    labels = mixup_labels(base_labels, other_labels, ratio, base.shape[:2], draw)
    if labels is None:
        return base, base_labels
    return mixup_image(base, canvas, draw), labels


def random_mixup(
    rng: np.random.Generator,
    base: np.ndarray,
    base_labels: np.ndarray,
    other: np.ndarray,
    other_labels: np.ndarray,
    scale_range: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mixup` with the official draws (:func:`draw_mixup`)."""
    d = draw_mixup(rng, base.shape[:2], scale_range)
    return mixup(
        base, base_labels, other, other_labels,
        jitter=d.jitter, flip=d.flip, x_offset=d.x_offset, y_offset=d.y_offset,
    )
