"""Native-resolution training tiles: crops of the frame the network sees at the frame's own scale.

With ``input_mode: tiles`` a training sample is not the whole frame shrunk into the input (the
letterbox of :class:`model.data.loader.SplitImages`) but a ``tile_size`` square crop of it,
never scaled up: a frame narrower or shorter than the tile is padded (grey 114, bottom and
right, like the letterbox). :class:`TileImages` is an ``ImageSource`` like ``SplitImages``, so
every stage of :mod:`model.data.augment` works on crops unchanged: each of the four mosaic
pieces and mixup's second image are crops, and the no-augmentation tail trains on plain crops.

Placement (:func:`place_tile`). With probability ``object_share`` (and only in an image with
boxes) the crop contains a box picked uniformly, at a uniformly random position of the crop, so
the network does not learn that objects sit in the middle; a box larger than the tile is
centred. Otherwise the crop is uniform over the frame, so water, glints and leaves are learnt
as background. Every draw comes from the sample's generator (:func:`model.data.augment.
sample_rng`): the same seed gives the same tiles, whatever the worker count or a resume.

Cut boxes (:func:`crop_tile`). A box the crop edge cuts is clipped to the crop when at least
``min_visible`` of its area is inside, else dropped; both are counted (``TileImages.counts``)
and the training loader sums them into the epoch log. Boxes wholly outside the crop are simply
not in this sample and are not counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from model.data.transforms import PAD_VALUE, read_image

if TYPE_CHECKING:
    from model.data.frame_cache import CachedFrames

# Columns of the cut counts: boxes wholly inside a crop, clipped by its edge, dropped.
COUNT_WHOLE, COUNT_CLIPPED, COUNT_DROPPED = 0, 1, 2
FULL_INSIDE = 1.0 - 1e-6  # visible fraction above which a box counts as whole (float rounding)


def _uniform_origin(rng: np.random.Generator, length: int, tile: int) -> int:
    return int(rng.integers(0, length - tile + 1)) if length > tile else 0


def _origin_containing(
    rng: np.random.Generator, lo_edge: float, hi_edge: float, length: int, tile: int
) -> int:
    """An origin ``o`` of a ``tile`` window in ``[0, length - tile]`` with the interval
    ``[lo_edge, hi_edge]`` inside ``[o, o + tile]``, uniform over the choices; centred on the
    interval when none exists (it is longer than the tile)."""
    if length <= tile:
        return 0
    lo = max(0, int(np.ceil(hi_edge - tile)))
    hi = min(int(np.floor(lo_edge)), length - tile)
    if lo <= hi:
        return int(rng.integers(lo, hi + 1))
    centre = 0.5 * (lo_edge + hi_edge)
    return int(min(max(round(centre - tile / 2), 0), length - tile))


def place_tile(
    rng: np.random.Generator,
    labels: np.ndarray,
    width: int,
    height: int,
    tile: int,
    object_share: float,
) -> tuple[int, int]:
    """The top-left corner ``(x0, y0)`` of a training crop of a ``width`` x ``height`` frame.

    ``labels`` (N, 5) ``x1, y1, x2, y2, class`` in frame pixels. Draws, in this order: one
    uniform for the object/uniform choice, then (object) the box index and the two origins, or
    (uniform) the two origins.
    """
    if rng.uniform() < object_share and len(labels):
        x1, y1, x2, y2 = labels[int(rng.integers(0, len(labels))), :4]
        x0 = _origin_containing(rng, float(x1), float(x2), width, tile)
        y0 = _origin_containing(rng, float(y1), float(y2), height, tile)
        return x0, y0
    return _uniform_origin(rng, width, tile), _uniform_origin(rng, height, tile)


def crop_tile(
    img: np.ndarray, labels: np.ndarray, x0: int, y0: int, tile: int, min_visible: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``tile`` square crop of ``img`` at ``(x0, y0)``, padded with 114 past the frame.

    ``labels`` (N, 5) ``x1, y1, x2, y2, class`` in frame pixels. Returns ``(crop (tile, tile, 3)
    uint8, labels (M, 5) float32 in crop pixels, counts (3,) int64 whole, clipped, dropped)``:
    boxes wholly inside keep their exact coordinates shifted by ``(x0, y0)``; boxes the edge cuts
    are clipped to the crop and kept when their visible area is at least ``min_visible`` of the
    whole, else dropped. Boxes outside the crop are left out and not counted.
    """
    h, w = img.shape[:2]
    crop = np.full((tile, tile, 3), PAD_VALUE, dtype=np.uint8)
    part = img[y0 : y0 + tile, x0 : x0 + tile]
    crop[: part.shape[0], : part.shape[1]] = part
    counts = np.zeros(3, dtype=np.int64)
    if len(labels) == 0:
        return crop, np.zeros((0, 5), dtype=np.float32), counts
    boxes = labels[:, :4].astype(np.float64)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    moved = boxes - np.array([x0, y0, x0, y0], dtype=np.float64)
    # The visible part of the frame inside the crop (the padding holds no object).
    right, bottom = min(tile, w - x0), min(tile, h - y0)
    clipped = moved.copy()
    clipped[:, [0, 2]] = moved[:, [0, 2]].clip(0, right)
    clipped[:, [1, 3]] = moved[:, [1, 3]].clip(0, bottom)
    inside = (clipped[:, 2] - clipped[:, 0]).clip(0) * (clipped[:, 3] - clipped[:, 1]).clip(0)
    frac = np.divide(inside, area, out=np.zeros_like(area), where=area > 0)
    whole = frac >= FULL_INSIDE
    cut = (frac > 0) & ~whole
    kept_cut = cut & (frac >= min_visible)
    counts[COUNT_WHOLE] = int(whole.sum())
    counts[COUNT_CLIPPED] = int(kept_cut.sum())
    counts[COUNT_DROPPED] = int((cut & ~kept_cut).sum())
    keep = whole | kept_cut
    out = np.concatenate([np.where(whole[:, None], moved, clipped), labels[:, 4:5]], 1)
    return crop, out[keep].astype(np.float32), counts


class TileImages:
    """The training frames of a split at native resolution, served as crops (an ``ImageSource``).

    ``load(index, rng)`` places a crop with :func:`place_tile` and cuts it with
    :func:`crop_tile`; it adds the crop's cut counts to ``self.counts`` (whole, clipped, dropped),
    which the training dataset reads per sample. With ``cache=True`` the decoded frames (not
    crops) are kept in RAM: a 1920x1080 frame takes 6 MB.
    """

    def __init__(
        self,
        paths: list[str],
        labels: list[np.ndarray],
        tile: int,
        *,
        object_share: float,
        min_visible: float,
        cache: bool = False,
        progress: bool = True,
        frames: CachedFrames | None = None,
    ) -> None:
        self.frames = frames  # (issue 26) the node's frame cache (native resolution), or None
        self.paths = paths
        self.labels = labels  # frame pixels
        self.tile = tile
        self.object_share = object_share
        self.min_visible = min_visible
        self.counts = np.zeros(3, dtype=np.int64)
        self._labelled = np.array([i for i, lab in enumerate(labels) if len(lab)], np.int64)
        self._cache: list[np.ndarray] | None = None
        if cache:
            it = tqdm(paths, desc="caching train frames", unit="img", disable=not progress)
            self._cache = [read_image(p) for p in it]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> np.ndarray:
        return self._labelled

    def frame(self, index: int) -> np.ndarray:
        """The full frame ``index`` (H, W, 3) BGR uint8; the cached array itself (or a read-only
        view of the frame cache) when cached: callers must not modify it."""
        if self._cache is not None:
            return self._cache[index]
        if self.frames is not None:
            return self.frames.frame(index)
        return read_image(self.paths[index])

    def load(self, index: int, rng: np.random.Generator | None = None) -> tuple[Any, np.ndarray]:
        """``(crop (tile, tile, 3) uint8, labels (N, 5) in crop pixels)`` of frame ``index``.

        ``rng`` is the sample's generator (a fresh unseeded one when None, for ad-hoc looks).
        """
        rng = rng if rng is not None else np.random.default_rng()
        img = self.frame(index)
        labels = self.labels[index]
        h, w = img.shape[:2]
        x0, y0 = place_tile(rng, labels, w, h, self.tile, self.object_share)
        crop, kept, counts = crop_tile(img, labels, x0, y0, self.tile, self.min_visible)
        self.counts += counts
        return crop, kept
