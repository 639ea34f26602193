"""The one dataset representation every reader produces: COCO-style lists per split.

``DetectionSplit`` holds ``images`` ``{"id", "file_name" (absolute path), "width", "height"}``,
``annotations`` ``{"id", "image_id", "category_id" (1-based = class + 1), "bbox": [x, y, w, h] in
original-image pixels, "area" (w * h), "iscrowd": 0}`` and ``categories`` ``{"id": 1.., "name"}``.
Ids are fresh per split, from 1. :func:`load_dataset` reads any supported layout, checks it (see
:mod:`model.data.validate`) and returns a :class:`DetectionDataset` with the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.data.raw import DataError
from model.data.readers import read_raw
from model.data.validate import DataReport, check

__all__ = ["DataError", "DataReport", "DetectionDataset", "DetectionSplit", "load_dataset"]


@dataclass(frozen=True)
class DetectionSplit:
    """One split: COCO-style ``images``, ``annotations`` and ``categories`` lists."""

    name: str
    images: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    categories: list[dict[str, Any]]

    @property
    def class_names(self) -> list[str]:
        """Names in class-index order (class i has category_id i + 1)."""
        return [c["name"] for c in sorted(self.categories, key=lambda c: c["id"])]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def num_annotations(self) -> int:
        return len(self.annotations)

    def annotations_by_image(self) -> dict[int, list[dict[str, Any]]]:
        """image id → its annotations (an empty list for images without boxes), in image order."""
        by_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in self.images}
        for a in self.annotations:
            by_image[a["image_id"]].append(a)
        return by_image

    def to_coco_dict(self) -> dict[str, Any]:
        """A COCO detection JSON document (``pycocotools.coco.COCO`` loads it); fresh copies."""
        return {
            "info": {"description": f"split '{self.name}' (yolox-flow-study)", "version": "1.0"},
            "licenses": [],
            "images": [dict(im) for im in self.images],
            "annotations": [dict(a, bbox=list(a["bbox"])) for a in self.annotations],
            "categories": [{"supercategory": "", **c} for c in self.categories],
        }


@dataclass(frozen=True)
class DetectionDataset:
    """A checked dataset: its splits ("train", "val" and, where the layout has one, "test") and
    the data report."""

    root: Path
    layout: str
    splits: dict[str, DetectionSplit]
    report: DataReport
    val_held_out: bool = False  # val is a hold-out of the training images, not the layout's

    @property
    def train(self) -> DetectionSplit:
        if "train" not in self.splits:
            raise DataError(f"{self.root}: no training split (splits: {', '.join(self.splits)})")
        return self.splits["train"]

    @property
    def val_split(self) -> DetectionSplit:
        """The validation split: every choice (best.pt, early stopping, the search, the best
        trial) is made on it. The layout's own "val", else the hold-out of the training images
        that :func:`load_dataset` carved (``val_fraction``, seeded by ``split_seed``)."""
        if "val" in self.splits:
            return self.splits["val"]
        n_train = self.splits["train"].num_images if "train" in self.splits else 0
        why = (
            "val_fraction is 0" if n_train >= 2 else f"only {n_train} training image(s) to hold "
            "some out of"
        )
        raise DataError(
            f"{self.root}: no validation split to select checkpoints and trials on: the layout "
            f"has none of its own and {why}; set val_fraction > 0 (0.2 holds out a fifth of the "
            "training images) or add a val split to the dataset"
        )

    @property
    def test_split(self) -> DetectionSplit | None:
        """The test split, scored once per run on the checkpoint chosen on val; None when the
        layout has none (the figures are then validation figures, and say so)."""
        return self.splits.get("test")

    @property
    def class_names(self) -> list[str]:
        return next(iter(self.splits.values())).class_names if self.splits else []


def load_dataset(
    src: str | Path,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    strict: bool = False,
    classes: Sequence[str] | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> DetectionDataset:
    """Read, check and normalise the dataset at ``src`` (layout detected automatically).

    ``val_fraction``/``split_seed``: when the layout has no val split of its own, that share of
    the training images becomes "val", stratified by box count and class and chosen by a hash of
    (split_seed, file path) — the same seed gives the same split whatever order the files are
    listed in (:func:`model.data.raw.carve_validation`). ``classes``: the class names in
    order (others are dropped and counted); default: from the dataset. ``strict``: raise
    :class:`DataError` listing every problem instead of dropping/clipping and counting.
    ``workers``: decode threads; ``progress``: tqdm bar (None = only on a terminal).
    """
    raw = read_raw(src, val_fraction=val_fraction, split_seed=split_seed, classes=classes)
    raw.chosen_classes = bool(classes)
    result = check(raw, strict=strict, workers=workers, progress=progress)
    splits = {
        name: DetectionSplit(name, images, anns, [dict(c) for c in result.categories])
        for name, (images, anns) in result.splits.items()
    }
    return DetectionDataset(
        root=raw.root, layout=raw.layout, splits=splits, report=result.report,
        val_held_out=raw.val_held_out,
    )
