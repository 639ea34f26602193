"""Foreground/background crops from detection annotations (the center-loss pretraining data).

Positives: a square crop of side about ``crop_size`` (scaled 0.8-1.2) placed at random around one
object so that the whole object lies inside it. Negatives: random square crops of the same side
distribution that overlap no object at all. Every crop is resized to ``crop_size`` for batching.

Crop boxes are integers ``(x0, y0, side)`` in original-image pixels, half-open:
columns ``x0 .. x0 + side - 1``. An object's box (COCO x, y, w, h, floats) is widened to the whole
pixels it touches, ``[floor(x), ceil(x + w))``, so "contains" and "overlaps" are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from model.pretraining.common import PAD_VALUE, PretrainDataError

CropBox = tuple[int, int, int]  # x0, y0, side
PixelBox = tuple[int, int, int, int]  # x0, y0, x1, y1 (half-open)

SCALE_RANGE = (0.8, 1.2)  # crop side relative to crop_size
NEGATIVE_TRIES = 50  # placements tried per image before giving up on it


def pixel_box(bbox: list[float] | tuple[float, ...]) -> PixelBox:
    """COCO (x, y, w, h) -> the half-open integer box of the pixels it touches."""
    x, y, w, h = (float(v) for v in bbox)
    return math.floor(x), math.floor(y), math.ceil(x + w), math.ceil(y + h)


def _side(rng: np.random.Generator, crop_size: int) -> int:
    return max(1, round(crop_size * rng.uniform(*SCALE_RANGE)))


def _place(rng: np.random.Generator, lo: int, hi: int, side: int, limit: int) -> int:
    """A start in [lo, hi] that keeps [start, start + side) inside [0, limit) when possible."""
    in_lo, in_hi = max(lo, 0), min(hi, limit - side)
    if in_lo <= in_hi:
        return int(rng.integers(in_lo, in_hi + 1))
    # The image is too small (or the object too near its border) for the crop to fit inside it:
    # it reaches past the border, which is padded when the crop is cut out.
    return int(rng.integers(lo, hi + 1))


def sample_positive(
    rng: np.random.Generator, box: PixelBox, img_w: int, img_h: int, crop_size: int
) -> CropBox:
    """A square crop that contains ``box`` entirely, side ~ crop_size x U(0.8, 1.2).

    An object larger than the drawn side gets a crop exactly its size (it must fit whole).
    """
    bx0, by0, bx1, by1 = box
    side = max(_side(rng, crop_size), bx1 - bx0, by1 - by0)
    # x0 <= bx0 and x0 + side >= bx1, i.e. x0 in [bx1 - side, bx0].
    x0 = _place(rng, bx1 - side, bx0, side, img_w)
    y0 = _place(rng, by1 - side, by0, side, img_h)
    return x0, y0, side


def overlaps_any(crop: CropBox, boxes: list[PixelBox]) -> bool:
    """True when the crop shares at least one pixel with any of ``boxes``."""
    x0, y0, s = crop
    return any(
        x0 < bx1 and bx0 < x0 + s and y0 < by1 and by0 < y0 + s for bx0, by0, bx1, by1 in boxes
    )


def sample_negative(
    rng: np.random.Generator,
    boxes: list[PixelBox],
    img_w: int,
    img_h: int,
    crop_size: int,
    tries: int = NEGATIVE_TRIES,
) -> CropBox | None:
    """A square crop inside the image that overlaps none of ``boxes``; None if none was found."""
    for _ in range(tries):
        side = min(_side(rng, crop_size), img_w, img_h)
        x0 = int(rng.integers(0, img_w - side + 1))
        y0 = int(rng.integers(0, img_h - side + 1))
        if not overlaps_any((x0, y0, side), boxes):
            return x0, y0, side
    return None


@dataclass(frozen=True)
class CropSpec:
    """One crop to cut: the image file, the crop box, and its label (1 object, 0 background)."""

    file_name: str
    box: CropBox
    label: int


def plan_crops(
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    crop_size: int,
    rng: np.random.Generator,
    source: str,
) -> list[CropSpec]:
    """One positive crop per object and as many negatives, drawn from random images.

    ``images`` / ``annotations`` are COCO-style dicts (see ``model.data.dataset``); ``source`` names
    the dataset in errors. Raises PretrainDataError when there is no object, or no background.
    """
    by_image: dict[int, list[PixelBox]] = {int(im["id"]): [] for im in images}
    for ann in annotations:
        by_image.setdefault(int(ann["image_id"]), []).append(pixel_box(ann["bbox"]))
    info = {int(im["id"]): im for im in images}
    n_objects = sum(len(v) for k, v in by_image.items() if k in info)
    if n_objects == 0:
        raise PretrainDataError(
            f"no objects to crop: the training split of {source} has {len(images)} images and "
            "0 boxes; center-loss pretraining needs annotated objects (use pretrain: ssl for "
            "unlabeled data)"
        )
    specs: list[CropSpec] = []
    for image_id, boxes in by_image.items():
        im = info.get(image_id)
        if im is None:
            continue
        for box in boxes:
            crop = sample_positive(rng, box, int(im["width"]), int(im["height"]), crop_size)
            specs.append(CropSpec(str(im["file_name"]), crop, 1))
    ids = list(info)
    negatives = 0
    for _ in range(n_objects * NEGATIVE_TRIES):
        if negatives == n_objects:
            break
        im = info[ids[int(rng.integers(len(ids)))]]
        crop = sample_negative(
            rng, by_image[int(im["id"])], int(im["width"]), int(im["height"]), crop_size, tries=4
        )
        if crop is not None:
            specs.append(CropSpec(str(im["file_name"]), crop, 0))
            negatives += 1
    if negatives == 0:
        raise PretrainDataError(
            f"no background crops: every square crop of about {crop_size} px in the training "
            f"images of {source} overlaps an object; lower crop_size"
        )
    return specs


def cut_crop(image: np.ndarray, crop: CropBox, out_size: int) -> np.ndarray:
    """Cut ``crop`` from an (H, W, 3) uint8 image, pad past the border, resize to (S, S, 3)."""
    x0, y0, s = crop
    h, w = image.shape[:2]
    patch = np.full((s, s, 3), PAD_VALUE, dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + s, w), min(y0 + s, h)
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    if s == out_size:
        return patch
    interp = cv2.INTER_AREA if s > out_size else cv2.INTER_LINEAR
    return cv2.resize(patch, (out_size, out_size), interpolation=interp)


def read_image(path: str | Path) -> np.ndarray:
    """BGR uint8 (H, W, 3); an unreadable file is a PretrainDataError naming it."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise PretrainDataError(f"cannot read image {path}: missing or not an image file")
    return image


def cut_all(specs: list[CropSpec], out_size: int, *, progress: bool = True) -> np.ndarray:
    """Cut every crop, reading each image once. Returns uint8 (N, S, S, 3) BGR, ``specs`` order."""
    out = np.empty((len(specs), out_size, out_size, 3), dtype=np.uint8)
    by_file: dict[str, list[int]] = {}
    for i, spec in enumerate(specs):
        by_file.setdefault(spec.file_name, []).append(i)
    for file_name, idx in tqdm(
        by_file.items(), desc="cutting crops", unit="img", disable=not progress, leave=False
    ):
        image = read_image(file_name)
        for i in idx:
            out[i] = cut_crop(image, specs[i].box, out_size)
    return out


def split_held_out(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out): ``fraction`` of each label held out, deterministic by ``seed``.

    Stratified so that both the foreground and the background accuracy can be measured.
    """
    rng = np.random.default_rng([seed, 20160916])  # separate stream from the crop sampling
    train, held = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_held = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        held.append(idx[:n_held])
        train.append(idx[n_held:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))
