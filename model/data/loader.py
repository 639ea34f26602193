"""Training and evaluation data loaders over a ``DetectionSplit``.

Training: :func:`build_train_loader` wraps a torch ``DataLoader`` whose batch sampler yields keys
``(epoch, position, image index, augment)``; workers compute each sample from its key alone
(:func:`model.data.augment.train_sample` with :func:`~model.data.augment.sample_rng`), so batches
are identical for any worker count and survive persistent workers (the sampler runs in the main
process, where ``set_epoch`` and ``close_mosaic`` change it). For a CUDA device, workers send
``uint8`` batches, a quarter of the bytes of the official float32 ones, and the float conversion
happens on the GPU after the pinned, non-blocking copy. For the CPU, workers convert (in their
collate), which keeps that work off the training process.

An epoch is ``ceil(N / batch_size)`` full batches: the shuffled order is extended by wrapping
around, like the official infinite sampler (``drop_last=False`` on an endless stream), so every
image is seen at least once per epoch and no batch is short.

With ``input_mode: tiles`` the source is :class:`model.data.tiles.TileImages` (native-resolution
crops) instead of :class:`SplitImages`; each sample also carries the counts of boxes its crops
cut, which the loader sums per epoch (:meth:`TrainLoader.take_cut_counts`).

Evaluation: :func:`build_eval_loader` letterboxes each image (top-left, pad 114) and reports the
ratio, so a box in input pixels divided by it is in original pixels. :func:`build_frame_loader`
yields the frames as they are, for sliced inference (:mod:`model.sliced`).
"""

from __future__ import annotations

import functools
import logging
import math
import random
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from model.config import TrialConfig
from model.data.augment import (
    STREAM_SHUFFLE,
    AugmentParams,
    ImageSource,
    sample_rng,
    train_sample,
)
from model.data.device_augment import (
    PlannedSample,
    collate_planned,
    placement,
    plan_sample,
    render_batch,
)
from model.data.frame_cache import FULL, CachedFrames, FrameCacheSpaceError, open_frame_cache
from model.data.tiles import TileImages
from model.data.transforms import fit_ratio, letterbox, read_image, resize_to_fit

logger = logging.getLogger(__name__)
SampleKey = tuple[int, int, int, bool]  # epoch, position in the epoch, image index, augment
SUBSET_SEED = 0  # max_train_images picks the same images for every trial seed


def split_labels(split: Any) -> dict[int, np.ndarray]:
    """Labels per image id: ``(N, 5)`` float32 ``x1, y1, x2, y2, class`` in original pixels.

    COCO ``[x, y, w, h]`` boxes are clipped to the image; boxes left with no area are skipped;
    ``class = category_id - 1``.
    """
    size = {im["id"]: (im["width"], im["height"]) for im in split.images}
    rows: dict[int, list[list[float]]] = {im["id"]: [] for im in split.images}
    for ann in split.annotations:
        w_img, h_img = size[ann["image_id"]]
        x, y, w, h = (float(v) for v in ann["bbox"])
        x1, y1 = min(max(x, 0.0), w_img), min(max(y, 0.0), h_img)
        x2, y2 = min(max(x + w, 0.0), w_img), min(max(y + h, 0.0), h_img)
        if x2 > x1 and y2 > y1:
            rows[ann["image_id"]].append([x1, y1, x2, y2, float(ann["category_id"] - 1)])
    return {k: np.array(v, dtype=np.float32).reshape(-1, 5) for k, v in rows.items()}


def subset_indices(n_images: int, max_images: int) -> np.ndarray:
    """Indices of the images a trial trains on: all, or ``max_images`` of them drawn with a
    fixed seed (not the trial seed, so that seeds compare on the same images), in split order."""
    if max_images <= 0 or max_images >= n_images:
        return np.arange(n_images)
    pick = np.random.default_rng(SUBSET_SEED).permutation(n_images)[:max_images]
    return np.sort(pick)


class SplitImages:
    """The training images of a split, resized to fit ``img_size`` (an ``ImageSource``).

    ``load(i)`` decodes image ``i`` (or takes it from the RAM cache) and resizes it by
    ``r = min(S/h, S/w)`` as the official ``pull_item`` does, so mosaic and mixup work on
    small images; labels are scaled by the same ``r``. With ``cache=True`` every resized image
    is decoded once here, in the parent process, so forked workers share the memory.
    """

    def __init__(
        self,
        split: Any,
        img_size: int,
        *,
        indices: np.ndarray | None = None,
        cache: bool = False,
        progress: bool = True,
        frames: CachedFrames | None = None,
    ) -> None:
        images = split.images if indices is None else [split.images[int(i)] for i in indices]
        per_image = split_labels(split)
        self.img_size = img_size
        self.paths = [im["file_name"] for im in images]
        self.image_ids = [im["id"] for im in images]
        self.labels = [per_image[im["id"]] for im in images]  # original pixels
        self._labelled = np.array([i for i, lab in enumerate(self.labels) if len(lab)], np.int64)
        self._cache: list[tuple[np.ndarray, float]] | None = None
        # (issue 26) the node's frame cache, when given: frames of this source's paths, native
        # or already fit to img_size (then a load is a slice of the mapping)
        self.frames = frames
        if cache and not (frames is not None and frames.fit == img_size):
            it = tqdm(range(len(self.paths)), desc="caching train images", unit="img",
                      disable=not progress)
            self._cache = [self._decode(i) for i in it]

    def _decode(self, index: int) -> tuple[np.ndarray, float]:
        """Image ``index`` resized to fit ``img_size``, and the ratio."""
        if self.frames is None:
            return resize_to_fit(read_image(self.paths[index]), self.img_size)
        if self.frames.fit == self.img_size:  # stored fit: the same pixels resize_to_fit gives
            h, w = self.frames.original_size(index)
            return self.frames.frame(index), fit_ratio(h, w, self.img_size)
        return resize_to_fit(self.frames.frame(index), self.img_size)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> np.ndarray:
        return self._labelled

    def load(
        self, index: int, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(image (h, w, 3) uint8 with max side ~ img_size, labels (N, 5) scaled alike)``.

        ``rng`` is not used (the whole image is served). The image may be the cached array
        itself: callers must not modify it in place.
        """
        img, r = self._cache[index] if self._cache is not None else self._decode(index)
        labels = self.labels[index].copy()
        labels[:, :4] *= r
        return img, labels


def cache_fit(cfg: TrialConfig) -> int:
    """The frame-cache resolution a trial reads: native (0) for tiles, ``img_size`` else."""
    return FULL if cfg.input_mode == "tiles" else cfg.img_size


def open_frames(
    images: list[dict[str, Any]], cfg: TrialConfig, *, progress: bool = True
) -> CachedFrames | None:
    """The node's cached frames of ``images`` (split image dicts) for ``cfg``, built when no
    cache holds them; None when ``cfg.frame_cache`` is off, or when the disk cannot hold the
    cache (a warning naming the sizes: the trial then decodes per load, as without the cache)."""
    if not cfg.frame_cache:
        return None
    paths = [im["file_name"] for im in images]
    sizes = [(int(im["height"]), int(im["width"])) for im in images]
    try:
        return open_frame_cache(
            paths, sizes, cache_fit(cfg), cfg.frame_cache_dir or None, progress=progress
        )
    except FrameCacheSpaceError as e:
        logger.warning("frame cache off for this trial: %s", e)
        return None


def training_source(
    split: Any,
    cfg: TrialConfig,
    *,
    indices: np.ndarray | None = None,
    cache: bool = False,
    progress: bool = True,
) -> SplitImages | TileImages:
    """The ``ImageSource`` of ``cfg.input_mode``: whole images resized to fit ``img_size``
    (letterbox, official) or native-resolution ``tile_size`` crops (tiles); frames from the
    node's frame cache with ``cfg.frame_cache``."""
    images = split.images if indices is None else [split.images[int(i)] for i in indices]
    frames = open_frames(images, cfg, progress=progress)
    if cfg.input_mode == "letterbox":
        return SplitImages(
            split, cfg.img_size, indices=indices, cache=cache, progress=progress, frames=frames
        )
    per_image = split_labels(split)
    return TileImages(
        [im["file_name"] for im in images],
        [per_image[im["id"]] for im in images],
        cfg.tile_size,
        object_share=cfg.tile_object_share,
        min_visible=cfg.tile_min_visible,
        cache=cache and frames is None,
        progress=progress,
        frames=frames,
    )


class AugmentedDataset(Dataset):
    """Map-style dataset indexed by :data:`SampleKey`; returns ``(image (3, S, S) uint8 CHW,
    targets (max_labels, 5) float32, cut counts (3,) int64)``; the counts are the boxes this
    sample's tile crops kept whole, clipped and dropped (zeros for a letterbox source).

    With ``planned`` (``augment_on: device``) it returns ``(PlannedSample, cut counts)``
    instead: the same draws and targets, the pixels left to
    :func:`model.data.device_augment.render_batch`."""

    def __init__(
        self, source: ImageSource, params: AugmentParams, seed: int, *, planned: bool = False
    ) -> None:
        self.source = source
        self.params = params
        self.seed = seed
        self.planned = planned

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: SampleKey) -> tuple[Any, ...]:
        epoch, position, index, augment = key
        rng = sample_rng(self.seed, epoch, position)
        counts = getattr(self.source, "counts", None)
        before = counts.copy() if counts is not None else None
        if self.planned:
            plan = plan_sample(self.source, index, rng, self.params, augment=augment)
        else:
            img, targets = train_sample(self.source, index, rng, self.params, augment=augment)
        cut = counts - before if counts is not None else np.zeros(3, dtype=np.int64)
        if self.planned:
            return plan, cut
        return np.ascontiguousarray(img.transpose(2, 0, 1)), targets, cut


def epoch_order(n: int, total: int, seed: int, epoch: int) -> np.ndarray:
    """Image indices ``(total,)`` of one epoch: a seeded permutation of ``n``, wrapped around."""
    perm = sample_rng(seed, epoch, 0, stream=STREAM_SHUFFLE).permutation(n)
    return np.resize(perm, total)


class EpochBatchSampler(Sampler):
    """Yields ``ceil(n / batch_size)`` lists of :data:`SampleKey`, all full, for ``epoch``."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        if n == 0:
            raise ValueError("the training split has no images; check the dataset and its split")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch = 0
        self.augment = True

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        # Read the state once: an epoch started stays one epoch even if set_epoch comes early.
        b, epoch, augment = self.batch_size, self.epoch, self.augment
        order = epoch_order(self.n, len(self) * b, self.seed, epoch)
        for start in range(0, len(order), b):
            yield [(epoch, p, int(order[p]), augment) for p in range(start, start + b)]


def _collate(
    batch: list[tuple[np.ndarray, ...]], to_float: bool = False
) -> tuple[torch.Tensor, ...]:
    """Stack samples into ``(images [B, 3, S, S] uint8 or float32, targets [B, M, 5])``, plus
    the summed cut counts ``(3,)`` when the samples carry them."""
    images = torch.from_numpy(np.stack([b[0] for b in batch]))
    if to_float:
        images = images.float()
    targets = torch.from_numpy(np.stack([b[1] for b in batch]))
    if len(batch[0]) > 2:
        return images, targets, torch.from_numpy(np.sum([b[2] for b in batch], axis=0))
    return images, targets


def _collate_planned(
    batch: list[tuple[PlannedSample, np.ndarray]], size: int
) -> tuple[torch.Tensor, ...]:
    """:func:`~model.data.device_augment.collate_planned`'s tensors plus the summed cut counts."""
    counts = torch.from_numpy(np.sum([b[1] for b in batch], axis=0))
    return (*collate_planned([b[0] for b in batch], size), counts)


def _worker_init(worker_id: int) -> None:
    # Samples use their own generators; the globals are seeded only for code that might not.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # One torch thread per worker process: the workers already fill the cores. (OpenCV threads
    # were switched off in the parent before the fork; see _loader_kwargs.)
    torch.set_num_threads(1)


def _loader_kwargs(
    workers: int, device: torch.device, seed: int, *, persistent: bool
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda" and torch.cuda.is_available(),
        "worker_init_fn": _worker_init,
        "generator": torch.Generator().manual_seed(seed),
    }
    if workers > 0:
        # Training keeps its workers across epochs; evaluation (a loader per call) does not.
        kwargs.update(persistent_workers=persistent, prefetch_factor=2)
        # A forked worker inherits OpenCV's thread pool in whatever state the parent left it and
        # can hang in its first threaded call (or in setNumThreads itself, which we observed).
        # Like the official configure_module, switch OpenCV threading off in the parent before
        # any worker exists; this is process-wide, and the workers provide the parallelism.
        cv2.setNumThreads(0)
    return kwargs


def _cuda_prefetch(
    batches: Iterator[tuple], device: torch.device, *, to_float: bool = True
) -> Iterator[tuple]:
    """Copy and convert the next batch on a side stream while the current one is used.

    Tensors (uint8 images first) are copied ``non_blocking`` from pinned memory and the first
    cast to float (unless ``to_float`` is False) on the side stream; ``record_stream`` keeps the
    allocator from reusing their memory before the compute stream is done with them.
    """
    stream = torch.cuda.Stream(device)

    def upload(batch: tuple) -> tuple:
        with torch.cuda.stream(stream):
            images = batch[0].to(device, non_blocking=True)
            images = images.float() if to_float else images
            rest = tuple(
                t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t
                for t in batch[1:]
            )
        return (images, *rest)

    it = iter(batches)
    first = next(it, None)
    nxt = upload(first) if first is not None else None
    while nxt is not None:
        main = torch.cuda.current_stream(device)
        main.wait_stream(stream)  # the copy of `cur` is complete before main uses it
        cur = nxt
        for t in cur:
            if isinstance(t, torch.Tensor):
                t.record_stream(main)
        following = next(it, None)
        nxt = upload(following) if following is not None else None
        yield cur


def _to_device(batches: Iterator[tuple], device: torch.device) -> Iterator[tuple]:
    if device.type == "cuda" and torch.cuda.is_available():
        yield from _cuda_prefetch(batches, device)
        return
    for images, *rest in batches:
        yield (images.to(device).float(), *rest)


class TrainLoader:
    """Iterable over one epoch of ``(images float [B, 3, S, S] BGR 0-255 on device,
    targets float [B, max_labels, 5] class, cx, cy, w, h in input pixels, zero rows padding)``.

    ``len()`` is the number of iterations per epoch. Call ``set_epoch(e)`` before iterating
    epoch ``e`` (shuffle and augmentation are functions of ``(cfg.seed, e)``) and
    ``close_mosaic()`` for the last ``no_aug_epochs``.
    """

    def __init__(
        self,
        dataset: AugmentedDataset,
        sampler: EpochBatchSampler,
        workers: int,
        device: torch.device,
        seed: int,
    ) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.device = device
        self.cut_counts = np.zeros(3, dtype=np.int64)  # whole, clipped, dropped since last take
        if dataset.planned:  # (issue 26) augment_on: device
            collate: Any = functools.partial(_collate_planned, size=dataset.params.img_size)
        else:
            collate = functools.partial(_collate, to_float=device.type != "cuda")
        self._loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate,
            **_loader_kwargs(workers, device, seed, persistent=True),
        )

    @property
    def placement(self) -> str:
        """Where the augmentation runs: ``"loader"`` or ``"device"`` (``augment_on``)."""
        return "device" if self.dataset.planned else "loader"

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def augment(self) -> bool:
        """False once :meth:`close_mosaic` has been called."""
        return self.sampler.augment

    def set_epoch(self, epoch: int) -> None:
        self.sampler.epoch = epoch

    def close_mosaic(self) -> None:
        """No mosaic, affine or mixup from the next epoch on; HSV and flip stay, as official."""
        self.sampler.augment = False

    def take_cut_counts(self) -> dict[str, int]:
        """Boxes the tile crops kept whole, clipped and dropped in the batches consumed since
        the last call (all zero with letterbox input); resets the counts."""
        whole, clipped, dropped = (int(v) for v in self.cut_counts)
        self.cut_counts[:] = 0
        return {"tile_boxes_whole": whole, "tile_boxes_clipped": clipped,
                "tile_boxes_dropped": dropped}

    def _strip_counts(self) -> Iterator[tuple[torch.Tensor, ...]]:
        for *batch, counts in self._loader:
            self.cut_counts += counts.numpy()
            yield tuple(batch)

    def _rendered(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The planned batches moved to the device (uint8) and augmented there."""
        batches = self._strip_counts()
        if self.device.type == "cuda" and torch.cuda.is_available():
            batches = _cuda_prefetch(batches, self.device, to_float=False)
        size = self.dataset.params.img_size
        for canvas, params, other, targets in batches:
            canvas, params, other = (t.to(self.device) for t in (canvas, params, other))
            yield render_batch(canvas, params, other, size), targets.to(self.device)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.dataset.planned:
            return self._rendered()
        return _to_device(self._strip_counts(), self.device)


def build_train_loader(
    split: Any,
    cfg: TrialConfig,
    *,
    device: str | torch.device = "cpu",
    cache: bool | None = None,
    progress: bool = True,
) -> TrainLoader:
    """The training loader of ``split`` (a ``DetectionSplit``) for ``cfg``.

    Augmentation runs where ``cfg.augment_on`` says (:func:`~model.data.device_augment.
    placement`: with auto, on the device for CUDA, in the loader for the CPU). ``cache``
    (default ``cfg.cache_images``) keeps the decoded images in RAM (resized with letterbox
    input, native frames with tiles); ``cfg.max_train_images > 0`` trains on a fixed subset of
    that many images; ``cfg.frame_cache`` reads the frames from the node's frame cache.
    """
    indices = subset_indices(len(split.images), cfg.max_train_images)
    use_cache = cfg.cache_images if cache is None else cache
    source = training_source(split, cfg, indices=indices, cache=use_cache, progress=progress)
    device = torch.device(device)
    planned = placement(cfg.augment_on, device) == "device"
    dataset = AugmentedDataset(source, AugmentParams.from_config(cfg), cfg.seed, planned=planned)
    sampler = EpochBatchSampler(len(source), cfg.batch_size, cfg.seed)
    return TrainLoader(dataset, sampler, cfg.workers, device, cfg.seed)


def random_input_size(cfg: TrialConfig, rng: np.random.Generator) -> int:
    """A multi-scale input size: ``32 * k`` for ``k`` uniform in ``S/32 ± cfg.multiscale``
    (both ends included, as official ``random.randint``), ``S = cfg.input_size`` (the tile size
    with tiles); ``S`` when multiscale is 0."""
    base = cfg.input_size // 32
    lo, hi = max(1, base - cfg.multiscale), base + cfg.multiscale
    return 32 * int(rng.integers(lo, hi + 1))


def rescale_batch(
    images: torch.Tensor, targets: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize a square batch to ``size`` (official multi-scale ``preprocess``).

    ``images`` [B, 3, S, S] float are resized bilinearly (``align_corners=False``); ``targets``
    [B, M, 5] (class, cx, cy, w, h) get their box columns scaled by ``size / S``; padding rows stay
    zero. Returns new tensors, or the inputs themselves when ``size == S``.
    """
    current = images.shape[-1]
    if size == current:
        return images, targets
    scale = size / current
    images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    targets = targets.clone()
    targets[..., 1:5] *= scale
    return images, targets


class EvalDataset(Dataset):
    """Letterboxed evaluation images: ``(image (3, S, S) uint8, image_id, ratio)``."""

    def __init__(self, split: Any, img_size: int) -> None:
        self.paths = [im["file_name"] for im in split.images]
        self.image_ids = [int(im["id"]) for im in split.images]
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, float]:
        img, r = letterbox(read_image(self.paths[i]), self.img_size)
        return np.ascontiguousarray(img.transpose(2, 0, 1)), self.image_ids[i], r


def _collate_eval(
    batch: list[tuple[np.ndarray, int, float]],
) -> tuple[torch.Tensor, list[int], list[float]]:
    images = torch.from_numpy(np.stack([b[0] for b in batch]))
    return images, [b[1] for b in batch], [b[2] for b in batch]


class EvalLoader:
    """Iterable of ``(images float [B, 3, S, S] BGR 0-255, image_ids list[int],
    ratios list[float])`` in split order; ``ratio = min(S / h, S / w)`` of each original image."""

    def __init__(self, dataset: EvalDataset, batch_size: int, workers: int, device: torch.device):
        self.dataset = dataset
        self.device = device
        kwargs = _loader_kwargs(workers, device, seed=0, persistent=False)
        self._loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate_eval, **kwargs
        )

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[int], list[float]]]:
        return _to_device(iter(self._loader), self.device)


def build_eval_loader(
    split: Any,
    img_size: int,
    *,
    batch_size: int = 8,
    workers: int = 0,
    device: str | torch.device = "cpu",
) -> EvalLoader:
    """The evaluation loader of ``split`` at input size ``img_size`` (no augmentation)."""
    return EvalLoader(EvalDataset(split, img_size), batch_size, workers, torch.device(device))


class FrameDataset(Dataset):
    """The evaluation frames as they are: ``(image (H, W, 3) BGR uint8, image_id)``."""

    def __init__(self, split: Any) -> None:
        self.paths = [im["file_name"] for im in split.images]
        self.image_ids = [int(im["id"]) for im in split.images]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return read_image(self.paths[i]), self.image_ids[i]


def _collate_frames(batch: list[tuple[np.ndarray, int]]) -> tuple[list[np.ndarray], list[int]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def build_frame_loader(
    split: Any, *, batch_size: int = 8, workers: int = 0
) -> DataLoader:
    """Batches ``(frames list[(H, W, 3) uint8], image_ids list[int])`` of ``split`` in order,
    decoded by ``workers`` processes; frames stay on the CPU (sliced inference crops them)."""
    kwargs = _loader_kwargs(workers, torch.device("cpu"), seed=0, persistent=False)
    return DataLoader(
        FrameDataset(split), batch_size=batch_size, shuffle=False, collate_fn=_collate_frames,
        **kwargs,
    )
