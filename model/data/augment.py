"""The YOLOX training augmentation pipeline for one sample, every parameter from ``TrialConfig``.

With augmentation on (the official ``MosaicDetection`` + ``TrainTransform``):

1. with probability ``mosaic_prob``: a mosaic of the sample and 3 random images around a random
   centre on a ``2S`` canvas (:mod:`model.data.mosaic`), then a random affine (``degrees``,
   ``translate``, scale in ``mosaic_scale_min..max``, ``shear``) onto the ``S`` x ``S`` input
   (about the canvas origin, as official, so the input shows the canvas's top-left window; with
   ``mosaic_centre_crop`` about the canvas centre instead, onto the input's centre), then with
   probability ``mixup_prob`` (only after a mosaic with label rows, counting boxes the affine
   clipped away, as official) a mixup with a random labelled image (jitter in
   ``mixup_scale_min..max``, random mirror);
   otherwise the sample alone;
2. HSV jitter with probability ``hsv_prob``, horizontal flip with probability ``flip_prob``;
3. letterbox to ``S`` (top-left, pad 114), boxes with ``min(w, h) <= 1`` px dropped, targets
   padded to ``max_labels`` rows.

With augmentation off (``close_mosaic()``, the last ``no_aug_epochs``) only step 1 changes: the
sample alone, no mosaic, affine or mixup. HSV jitter and flip stay on, as official: its
``close_mosaic`` only switches the batch sampler's mosaic flag, and ``TrainTransform`` (which owns
HSV and flip) runs for every sample either way.

Randomness: every draw comes from the ``np.random.Generator`` passed in; the loader derives it
from ``(seed, epoch, position in the epoch)`` (:func:`sample_rng`), so a sample is the same
whatever the worker count or which process computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple, Protocol

import numpy as np

from model.config import TrialConfig, config_keys
from model.data.mosaic import (
    MixupDraw,
    compose_mosaic,
    draw_mixup,
    mixup_image,
    mixup_labels,
    random_mosaic_centre,
)
from model.data.transforms import (
    apply_hsv,
    centre_affine,
    filter_small_boxes,
    fit_ratio,
    hflip_boxes,
    hsv_gains,
    letterbox,
    random_affine_matrix,
    to_targets,
    warp_boxes,
    warp_image,
)

# Stream tags keep the shuffle and the per-sample draws of one (seed, epoch) independent.
STREAM_SHUFFLE = 0
STREAM_SAMPLE = 1


def sample_rng(
    seed: int, epoch: int, position: int, stream: int = STREAM_SAMPLE
) -> np.random.Generator:
    """The generator of one sample: a pure function of ``(seed, epoch, stream, position)``."""
    return np.random.default_rng([seed % 2**64, epoch, stream, position])


class ImageSource(Protocol):
    """Decoded training images, resized to fit the input size (the official ``pull_item``)."""

    def __len__(self) -> int: ...

    def load(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``(image (h, w, 3) BGR uint8 with max(h, w) ~ S, labels (N, 5) x1 y1 x2 y2 class)``.

        ``rng`` is the sample's generator: a source that draws (the crop of a tile source) draws
        from it, so the sample stays a function of its key; a whole-image source ignores it.
        """
        ...

    @property
    def labelled(self) -> np.ndarray:
        """Indices ``(M,)`` of the images with at least one box (the mixup partners)."""
        ...


_DEFAULTS = TrialConfig()  # AugmentParams' defaults are the trial config's: one set of values


@dataclass(frozen=True)
class AugmentParams:
    """The augmentation settings of :func:`train_sample`, read from a ``TrialConfig``
    (:meth:`from_config`); each default is the config's. Fields named as a config key take that
    key; ``img_size`` is the config's ``input_size`` and the two scales its ``*_min``/``*_max``."""

    img_size: int = _DEFAULTS.input_size
    mosaic_prob: float = _DEFAULTS.mosaic_prob
    mixup_prob: float = _DEFAULTS.mixup_prob
    hsv_prob: float = _DEFAULTS.hsv_prob
    flip_prob: float = _DEFAULTS.flip_prob
    degrees: float = _DEFAULTS.degrees
    translate: float = _DEFAULTS.translate
    mosaic_scale: tuple[float, float] = (_DEFAULTS.mosaic_scale_min, _DEFAULTS.mosaic_scale_max)
    mixup_scale: tuple[float, float] = (_DEFAULTS.mixup_scale_min, _DEFAULTS.mixup_scale_max)
    shear: float = _DEFAULTS.shear
    max_labels: int = _DEFAULTS.max_labels
    mosaic_centre_crop: bool = _DEFAULTS.mosaic_centre_crop

    @classmethod
    def from_config(cls, cfg: TrialConfig) -> AugmentParams:
        keys = set(config_keys())
        same = {f.name: getattr(cfg, f.name) for f in fields(cls) if f.name in keys}
        return cls(
            **same
            | {
                "img_size": cfg.input_size,  # (tile_size with tiles)
                "mosaic_scale": (cfg.mosaic_scale_min, cfg.mosaic_scale_max),
                "mixup_scale": (cfg.mixup_scale_min, cfg.mixup_scale_max),
            }
        )


class MosaicPlan(NamedTuple):
    """A mosaic sample before its pixels are warped: what :func:`plan_mosaic` decided.

    ``canvas`` (2S, 2S, 3) uint8 the four pieces pasted (pad 114); ``matrix`` (2, 3) the affine
    from canvas to input pixels; ``labels`` (N, 5) in input pixels after the affine and the
    mixup; ``mixup`` the other image letterboxed into an S x S canvas and its draws, or None when
    there is no mixup (not drawn, or none of its boxes survived: then the pixels stay as well).
    """

    canvas: np.ndarray
    matrix: np.ndarray
    labels: np.ndarray
    mixup: tuple[np.ndarray, MixupDraw] | None


def plan_mosaic(
    source: ImageSource, index: int, rng: np.random.Generator, p: AugmentParams
) -> MosaicPlan:
    """Every draw and every box of :func:`mosaic_stage`, the pixels left for later.

    The mosaic is composed here (pasting is a copy); the affine warp and the mixup blend are
    what :func:`mosaic_stage` (OpenCV, in the loader) or :mod:`model.data.device_augment`
    (tensors on the training device) do with the plan, so both paths share the draws and boxes.
    """
    size = p.img_size
    xc, yc = random_mosaic_centre(rng, size)
    others = rng.integers(0, len(source), 3)
    tiles = [source.load(int(i), rng) for i in (index, *others)]
    canvas, labels = compose_mosaic(tiles, xc, yc, size)
    matrix = random_affine_matrix(
        rng,
        size,
        degrees=p.degrees,
        translate=p.translate,
        scale_range=p.mosaic_scale,
        shear=p.shear,
    )
    if p.mosaic_centre_crop:
        matrix = centre_affine(matrix, 2 * size, size)
    labels = warp_boxes(labels, matrix, size)
    # Official condition: mixup only when the mosaic has label rows (even clipped-away ones).
    partners = source.labelled
    mix = None
    if len(labels) and len(partners) and rng.uniform() < p.mixup_prob:
        other, other_labels = source.load(int(partners[rng.integers(0, len(partners))]), rng)
        draw = draw_mixup(rng, (size, size), p.mixup_scale)
        other_canvas, ratio = letterbox(other, size)
        mixed = mixup_labels(labels, other_labels, ratio, (size, size), draw)
        if mixed is not None:
            labels, mix = mixed, (other_canvas, draw)
    return MosaicPlan(canvas, matrix, labels, mix)


def mosaic_stage(
    source: ImageSource, index: int, rng: np.random.Generator, p: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic of ``index`` and 3 random images, random affine, then maybe mixup.

    Returns ``(image (S, S, 3) uint8, labels (N, 5))``; labels may include boxes clipped to zero
    size (dropped later by the final filter, as official).
    """
    plan = plan_mosaic(source, index, rng, p)
    img = warp_image(plan.canvas, plan.matrix, p.img_size)
    if plan.mixup is not None:
        img = mixup_image(img, *plan.mixup)
    return img, plan.labels


class FinishPlan(NamedTuple):
    """What :func:`plan_finish` decided: HSV ``gains`` (int16 (3,)) or None for no jitter,
    ``flip``, and the ``targets`` (max_labels, 5) of the letterboxed sample."""

    gains: np.ndarray | None
    flip: bool
    targets: np.ndarray


def plan_finish(
    hw: tuple[int, int], labels: np.ndarray, rng: np.random.Generator, p: AugmentParams
) -> FinishPlan:
    """The draws and boxes of :func:`finish_sample` for an image of ``hw`` (H, W) pixels.

    If the filter removes every box, the sample falls back to its input without HSV and flip,
    as official, but keeping only boxes of positive width and height: the official fallback also
    keeps zero-size boxes, which the loss would count as objects with no area.
    """
    jitter = rng.uniform() < p.hsv_prob
    gains = hsv_gains(rng)  # drawn either way so one switch does not shift the later draws
    flip = bool(rng.uniform() < p.flip_prob)
    if len(labels) == 0:
        return FinishPlan(None, False, to_targets(labels, p.max_labels))
    r = fit_ratio(hw[0], hw[1], p.img_size)  # the letterbox ratio
    scaled = (hflip_boxes(labels, hw[1]) if flip else labels).astype(np.float32, copy=True)
    scaled[:, :4] *= r
    kept = filter_small_boxes(scaled)
    if len(kept):
        return FinishPlan(gains if jitter else None, flip, to_targets(kept, p.max_labels))
    scaled = labels.astype(np.float32, copy=True)
    scaled[:, :4] *= r
    w, h = scaled[:, 2] - scaled[:, 0], scaled[:, 3] - scaled[:, 1]
    return FinishPlan(None, False, to_targets(scaled[(w > 0) & (h > 0)], p.max_labels))


def finish_sample(
    img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, p: AugmentParams
) -> tuple[np.ndarray, np.ndarray]:
    """HSV jitter, flip, letterbox and box filtering (the official ``TrainTransform``).

    Returns ``(image (S, S, 3) uint8, targets (max_labels, 5) float32 class, cx, cy, w, h)``;
    the draws and the fallback are :func:`plan_finish`'s.
    """
    plan = plan_finish(img.shape[:2], labels, rng, p)
    aug = apply_hsv(img, plan.gains) if plan.gains is not None else img
    if plan.flip:
        aug = aug[:, ::-1]
    out, _ = letterbox(aug, p.img_size)
    return out, plan.targets


def train_sample(
    source: ImageSource,
    index: int,
    rng: np.random.Generator,
    params: AugmentParams,
    *,
    augment: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample for image ``index`` of ``source``.

    ``augment=False`` is the no-augmentation mode of the last epochs (see the module docstring).
    Returns ``(image (S, S, 3) BGR uint8 HWC, targets (max_labels, 5) float32)``; targets are
    ``class, cx, cy, w, h`` in input pixels, all-zero rows are padding.
    """
    use_mosaic = rng.uniform() < params.mosaic_prob
    if augment and use_mosaic:
        img, labels = mosaic_stage(source, index, rng, params)
    else:
        img, labels = source.load(index, rng)
    return finish_sample(img, labels, rng, params)
