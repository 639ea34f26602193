"""Single-image transforms of the YOLOX training pipeline, each with its box update.

Conventions in this module:

- images are ``(H, W, 3)`` BGR ``uint8`` arrays as read by ``cv2.imread``;
- ``labels`` are ``(N, 5)`` float arrays ``x1, y1, x2, y2, class`` in pixels of the image they come
  with (corners, not centres; ``class`` 0-based), the layout the official pipeline carries between
  its stages;
- a transform never modifies its input arrays; it returns new ones.

Where the official implementation (Megvii-BaseDetection/YOLOX, ``yolox/data/data_augment.py``) is
followed to the pixel, the docstring says so; where we differ, a comment says why.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

PAD_VALUE = 114  # grey used for every border and letterbox padding, as official
MIN_BOX_SIZE = 1.0  # official TrainTransform keeps boxes with min(w, h) > 1 px after resizing


def fit_ratio(height: int, width: int, size: int) -> float:
    """The letterbox ratio ``min(size / height, size / width)``."""
    return min(size / height, size / width)


def resize_to_fit(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize ``img`` (H, W, 3) by ``r = min(size/H, size/W)`` with bilinear interpolation.

    Returns ``(resized (int(H*r), int(W*r), 3), r)``. The output size is truncated as official
    (``int(W * r)``), so boxes scaled by ``r`` may overhang the last pixel by less than one.
    The input is returned unchanged (not copied) when it already has that size.
    """
    h, w = img.shape[:2]
    r = fit_ratio(h, w, size)
    new_w, new_h = int(w * r), int(h * r)
    if (new_w, new_h) == (w, h):
        return img, r
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR), r


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize ``img`` (H, W, 3) to fit a ``size`` x ``size`` canvas, top-left, padded with 114.

    Returns ``(canvas (size, size, 3) uint8, r)``: a point ``(x, y)`` of ``img`` lands at
    ``(x * r, y * r)`` on the canvas, so a box on the canvas divided by ``r`` is in ``img`` pixels.
    Same pixels as the official ``preproc`` (before its HWC -> CHW transpose).
    """
    resized, r = resize_to_fit(img, size)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas, r


def hflip(img: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror ``img`` left-right; box ``[x1, x2]`` becomes ``[W - x2, W - x1]`` (W = image width).

    The returned image is a negative-stride view; callers copy it when they paste it anyway.
    """
    return img[:, ::-1], hflip_boxes(labels, img.shape[1])


def hflip_boxes(labels: np.ndarray, width: int) -> np.ndarray:
    """The boxes of :func:`hflip`: ``[x1, x2]`` becomes ``[width - x2, width - x1]``."""
    out = labels.copy()
    out[:, 0] = width - labels[:, 2]
    out[:, 2] = width - labels[:, 0]
    return out


def hsv_gains(rng: np.random.Generator) -> np.ndarray:
    """Draw the official HSV jitter: integer offsets ``(dh, ds, dv)``, int16.

    Each of hue, saturation and value is shifted with probability 1/2, by
    ``trunc(uniform(-1, 1) * gain)`` with gains 5 (hue, OpenCV's 0..179 scale), 30 and 30.
    """
    gains = rng.uniform(-1.0, 1.0, 3) * np.array([5.0, 30.0, 30.0])
    gains *= rng.integers(0, 2, 3)
    return gains.astype(np.int16)


def apply_hsv(img: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Shift hue (mod 180), saturation and value (clipped to 0..255) of a BGR image.

    Same result as the official ``augment_hsv`` (which does the arithmetic on an int16 copy of
    the whole image); we apply it through a per-channel lookup table, which is several times
    faster at 640 px and exact because every channel is a function of its own 256 values.
    Boxes are not affected.
    """
    x = np.arange(256, dtype=np.int16)
    lut = np.empty((256, 1, 3), dtype=np.uint8)
    lut[:, 0, 0] = ((x + gains[0]) % 180).astype(np.uint8)
    lut[:, 0, 1] = np.clip(x + gains[1], 0, 255).astype(np.uint8)
    lut[:, 0, 2] = np.clip(x + gains[2], 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    return cv2.cvtColor(cv2.LUT(hsv, lut), cv2.COLOR_HSV2BGR)


def affine_matrix(
    size: int,
    *,
    angle: float = 0.0,
    scale: float = 1.0,
    shear_x: float = 0.0,
    shear_y: float = 0.0,
    translate_x: float = 0.0,
    translate_y: float = 0.0,
) -> np.ndarray:
    """The official YOLOX affine matrix ``(2, 3)`` mapping source to output pixels.

    Rotation by ``angle`` degrees (counter-clockwise on screen, OpenCV's convention) and scaling
    by ``scale`` about the origin (the top-left corner, not the centre: official), then shear by
    ``shear_x``/``shear_y`` degrees, then a translation of ``translate_* * size`` pixels.
    With all defaults it is the identity.
    """
    a = math.radians(angle)
    alpha, beta = scale * math.cos(a), scale * math.sin(a)
    rot = np.array([[alpha, beta], [-beta, alpha]])
    tan_x, tan_y = math.tan(math.radians(shear_x)), math.tan(math.radians(shear_y))
    m = np.zeros((2, 3))
    m[0, :2] = rot[0] + tan_y * rot[1]
    m[1, :2] = rot[1] + tan_x * rot[0]
    m[0, 2] = translate_x * size
    m[1, 2] = translate_y * size
    return m


def random_affine_matrix(
    rng: np.random.Generator,
    size: int,
    *,
    degrees: float,
    translate: float,
    scale_range: tuple[float, float],
    shear: float,
) -> np.ndarray:
    """Draw the official random affine: angle in ±degrees, scale in scale_range, shears in
    ±shear degrees, translations in ±translate of the output size. Returns ``(2, 3)``."""
    angle = rng.uniform(-degrees, degrees)
    scale = rng.uniform(*scale_range)
    shear_x = rng.uniform(-shear, shear)
    shear_y = rng.uniform(-shear, shear)
    tx = rng.uniform(-translate, translate)
    ty = rng.uniform(-translate, translate)
    return affine_matrix(
        size,
        angle=angle,
        scale=scale,
        shear_x=shear_x,
        shear_y=shear_y,
        translate_x=tx,
        translate_y=ty,
    )


def centre_affine(matrix: np.ndarray, canvas_size: int, size: int) -> np.ndarray:
    """``matrix`` (2, 3) re-anchored so that it rotates, scales and shears about the centre of a
    ``canvas_size`` square source and puts that centre at the centre of the ``size`` output,
    its translation added on top.

    The official mosaic warps its ``2S`` canvas about the origin and keeps the top-left ``S``
    window, so scales above 1 zoom into the canvas corner, where a third of the pixels are
    padding on 16:9 frames. Warping about the centre is what YOLOv5 and early YOLOX releases did.
    """
    out = matrix.astype(np.float64, copy=True)
    centre = np.array([canvas_size / 2.0, canvas_size / 2.0])
    out[:, 2] = matrix[:, 2] + size / 2.0 - matrix[:, :2] @ centre
    return out


def warp_affine(
    img: np.ndarray, labels: np.ndarray, matrix: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``img`` through ``matrix`` (2, 3) onto a ``size`` x ``size`` canvas (border 114).

    Each box becomes the axis-aligned bounds of its four warped corners, clipped to the canvas.
    Boxes are not dropped here (official ``random_affine`` does not either): one that leaves the
    canvas is clipped to zero width or height and removed by :func:`filter_small_boxes` later.
    """
    return warp_image(img, matrix, size), warp_boxes(labels, matrix, size)


def warp_image(img: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The pixels of :func:`warp_affine`: bilinear, border 114, ``size`` x ``size``."""
    return cv2.warpAffine(img, matrix, dsize=(size, size), borderValue=(PAD_VALUE,) * 3)


def warp_boxes(labels: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The boxes of :func:`warp_affine`: bounds of the four warped corners, clipped to ``size``."""
    if len(labels) == 0:
        return labels.copy()
    corners = labels[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape(-1, 2).astype(np.float64)  # (4N, 2)
    warped = corners @ matrix[:, :2].T + matrix[:, 2]
    xs = warped[:, 0].reshape(-1, 4)  # (N, 4)
    ys = warped[:, 1].reshape(-1, 4)
    new = labels.copy()
    new[:, 0] = xs.min(1).clip(0, size)
    new[:, 1] = ys.min(1).clip(0, size)
    new[:, 2] = xs.max(1).clip(0, size)
    new[:, 3] = ys.max(1).clip(0, size)
    return new


def box_candidates(
    before: np.ndarray,
    after: np.ndarray,
    wh_thr: float = 2.0,
    ar_thr: float = 20.0,
    area_thr: float = 0.2,
) -> np.ndarray:
    """Boolean mask ``(N,)`` of boxes worth keeping after a crop: width and height above
    ``wh_thr`` pixels, area at least ``area_thr`` of the box before the crop, aspect ratio below
    ``ar_thr``. ``before`` and ``after`` are ``(N, 4+)`` x1, y1, x2, y2 arrays (official rule)."""
    w1, h1 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w2, h2 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    ar = np.maximum(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + 1e-16) > area_thr) & (ar < ar_thr)


def filter_small_boxes(labels: np.ndarray, min_size: float = MIN_BOX_SIZE) -> np.ndarray:
    """Keep the rows of ``labels`` (N, 5) whose width and height both exceed ``min_size``."""
    w = labels[:, 2] - labels[:, 0]
    h = labels[:, 3] - labels[:, 1]
    return labels[np.minimum(w, h) > min_size]


def to_targets(labels: np.ndarray, max_labels: int) -> np.ndarray:
    """Network targets ``(max_labels, 5)`` float32: ``class, cx, cy, w, h``; zero rows pad.

    ``labels`` (N, 5) are x1, y1, x2, y2, class; rows past ``max_labels`` are dropped (official).
    """
    out = np.zeros((max_labels, 5), dtype=np.float32)
    n = min(len(labels), max_labels)
    lab = labels[:n]
    out[:n, 0] = lab[:, 4]
    out[:n, 1] = (lab[:, 0] + lab[:, 2]) * 0.5
    out[:n, 2] = (lab[:, 1] + lab[:, 3]) * 0.5
    out[:n, 3] = lab[:, 2] - lab[:, 0]
    out[:n, 4] = lab[:, 3] - lab[:, 1]
    return out


def read_image(path: str) -> np.ndarray:
    """Decode ``path`` as a BGR uint8 ``(H, W, 3)`` array; raise naming the file if it fails."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(
            f"cannot read image {path!r}: the file is missing or not an image; "
            "check the dataset with `python -m model.data check <dataset>`"
        )
    return img
