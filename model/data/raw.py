"""What the layout readers hand to the checker: raw records, reader-level issues, the split rule.

Readers (``voc.py``, ``coco_json.py``, ``yolo_txt.py``) only parse annotation files; they never open
an image. :mod:`model.data.validate` decodes every image, converts YOLO's normalised boxes with the
decoded size, clips, drops and counts. Everything a reader cannot use (a malformed box, an XML that
does not parse, a COCO id that is used twice) is recorded as an :class:`Issue` here, so that every
image and box that was read ends up either in the dataset or in the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_ORDER = ("train", "val", "test")

Action = Literal["dropped image", "dropped box", "clipped box", "fixed"]


class DataError(ValueError):
    """A dataset cannot be read (unknown layout, bad data.yaml…), or ``strict=True`` found problems.

    The message names the file (and key or box) concerned and says what was expected.
    """


@dataclass(frozen=True)
class Issue:
    """One thing that was dropped, clipped or fixed, naming the file and box concerned.

    ``kind`` is a short stable code used for counting (``missing_image``, ``zero_area``, …);
    ``reason`` is the human sentence. ``box_index`` is 0-based within the annotation source
    (``<object>`` order in a VOC XML, line order in a YOLO txt, order in the COCO JSON).
    ``n_boxes`` is the number of boxes dropped together with a dropped image.
    """

    split: str
    action: Action
    kind: str
    reason: str
    image: str = ""
    source: str = ""  # the annotation file the boxes came from
    box_index: int | None = None
    bbox: tuple[float, ...] | None = None  # as read (pixels; normalised for YOLO)
    new_bbox: tuple[float, ...] | None = None  # after clipping
    n_boxes: int = 0

    def line(self) -> str:
        where = f"[{self.split}] {self.action}"
        if self.box_index is not None:
            where += f" {self.box_index}"
        if self.bbox is not None:
            where += f" {_fmt_box(self.bbox)}"
        if self.new_bbox is not None:
            where += f" -> {_fmt_box(self.new_bbox)}"
        files = self.image or self.source
        if self.image and self.source and self.source != self.image:
            files = f"{self.image} (annotations {self.source})"
        text = f"{where} {'of' if self.box_index is not None else ''} {files}: {self.reason}"
        text = " ".join(text.split())
        if self.n_boxes:
            text += f" ({plural(self.n_boxes, 'box')} dropped with it)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "action": self.action,
            "kind": self.kind,
            "reason": self.reason,
            "image": self.image,
            "source": self.source,
            "box_index": self.box_index,
            "bbox": list(self.bbox) if self.bbox is not None else None,
            "new_bbox": list(self.new_bbox) if self.new_bbox is not None else None,
            "n_boxes": self.n_boxes,
        }


def plural(n: int, word: str) -> str:
    """``plural(1, "box")`` → "1 box", ``plural(2, "box")`` → "2 boxes"."""
    if n == 1:
        return f"1 {word}"
    return f"{n} {word}es" if word.endswith(("s", "x")) else f"{n} {word}s"


def _fmt_box(b: Iterable[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in b) + "]"


@dataclass
class RawBox:
    """One box as read: COCO (x, y, w, h), in pixels, or normalised to [0, 1] for YOLO."""

    bbox: tuple[float, float, float, float]
    label: str  # class name
    index: int  # 0-based position in the annotation source
    difficult: bool = False


@dataclass
class RawImage:
    path: Path
    source: str  # annotation file ("" when the image has none)
    boxes: list[RawBox] = field(default_factory=list)
    declared_size: tuple[int, int] | None = None  # (width, height) stated by the annotation file
    normalized: bool = False  # YOLO: boxes are fractions of the image size


@dataclass
class RawDataset:
    """A parsed dataset before checking. ``read`` counts [images, boxes] found per split."""

    root: Path
    layout: str
    class_names: list[str]
    splits: dict[str, list[RawImage]] = field(default_factory=dict)
    # (added, issue 14) the classes the layout itself defines (FloW: bottle), checked against
    # those found; and whether class_names were chosen by the caller (others are dropped)
    layout_classes: tuple[str, ...] = ()
    chosen_classes: bool = False
    issues: list[Issue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    note_counts: dict[str, int] = field(default_factory=dict)  # "empty annotation files": 3
    read: dict[str, list[int]] = field(default_factory=dict)
    # (issue 23) "val" was held out of the training images (carve_validation), not the layout's
    val_held_out: bool = False

    def add_split(self, name: str) -> list[RawImage]:
        self.read.setdefault(name, [0, 0])
        return self.splits.setdefault(name, [])

    def note(self, what: str, n: int = 1) -> None:
        """Count something worth knowing that is not a problem (kept as it is)."""
        self.note_counts[what] = self.note_counts.get(what, 0) + n

    def count_read(self, split: str, images: int = 0, boxes: int = 0) -> None:
        counts = self.read.setdefault(split, [0, 0])
        counts[0] += images
        counts[1] += boxes


def ordered_class_names(found: Iterable[str], first: str | None = None) -> list[str]:
    """Sorted unique names, with ``first`` (e.g. FloW's ``bottle``) in front when present."""
    names = sorted(set(found))
    if first is not None and first in names:
        names = [first] + [n for n in names if n != first]
    return names


def split_score(key: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")


# The hold-out's strata: an image's box count falls in one of these bins (0, 1, 2-3, 4-7, 8+),
# crossed with its most frequent class, so that val sees empty frames, crowded frames and every
# class in the training split's proportions.
BOX_COUNT_BINS = (0, 1, 2, 4, 8)
SPLIT_RULE = "stratified-v1"  # in the pretraining cache key: a new rule is a new split


def hash_split(
    keys: Iterable[str],
    val_fraction: float,
    seed: int,
    strata: dict[str, Any] | None = None,
) -> set[str]:
    """The keys that go to the validation split: a seeded, stratified, order-free hold-out.

    ``round(n * val_fraction)`` keys go to val, at least one when the fraction is positive and
    n > 1, and never all of them. ``strata`` (key -> any hashable) divides that number between
    the strata in proportion to their sizes (largest remainder, ties by stratum order), and
    within a stratum the keys with the smallest hash of (seed, key) go. The split depends only
    on the seed, the keys and their strata, never on the order the file system lists them in.
    """
    unique = sorted(set(keys))
    n = len(unique)
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if val_fraction == 0 or n < 2:
        return set()
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    groups: dict[Any, list[str]] = {}
    for k in unique:
        groups.setdefault((strata or {}).get(k), []).append(k)
    order = sorted(groups, key=repr)
    quota = {g: len(groups[g]) * n_val // n for g in order}
    # the rest by the largest remainder of the exact share (n_val * size / n)
    rest = sorted(order, key=lambda g: -((len(groups[g]) * n_val) % n))
    for g in rest[: n_val - sum(quota.values())]:
        quota[g] += 1
    chosen: set[str] = set()
    for g in order:
        ranked = sorted(groups[g], key=lambda k: (split_score(k, seed), k))
        chosen.update(ranked[: quota[g]])
    return chosen


def image_stratum(boxes: Sequence[RawBox]) -> tuple[int, str]:
    """(box-count bin, most frequent class; ties: the first in name order) of an image."""
    bin_ = max(i for i, lo in enumerate(BOX_COUNT_BINS) if len(boxes) >= lo)
    labels: dict[str, int] = {}
    for b in boxes:
        labels[b.label] = labels.get(b.label, 0) + 1
    top = min(labels, key=lambda name: (-labels[name], name)) if labels else ""
    return bin_, top


def carve_validation(raw: RawDataset, val_fraction: float, seed: int) -> None:
    """Hold out a stratified share of the training images as "val" when the layout has no val
    split of its own (FloW-Img and the embedded data have train and test only): every choice a
    study makes (best.pt, early stopping, the search, the best trial) is made on val, and the
    test split is scored once, at the end.

    The images move with their read counts and their reader-level issues. Nothing happens with
    ``val_fraction`` 0 or fewer than two training images: the dataset then has no val split,
    which :attr:`model.data.dataset.DetectionDataset.val_split` reports as an error.
    """
    train = raw.splits.get("train")
    if "val" in raw.splits or not train:
        return
    keys = {rel_key(im.path, raw.root): im for im in train}
    strata = {k: image_stratum(im.boxes) for k, im in keys.items()}
    val_keys = hash_split(keys, val_fraction, seed, strata)
    if not val_keys:
        return
    moved = [keys[k] for k in sorted(val_keys)]
    raw.splits["train"] = [im for im in train if rel_key(im.path, raw.root) not in val_keys]
    raw.add_split("val").extend(moved)
    raw.val_held_out = True
    n_boxes = sum(len(im.boxes) for im in moved)
    raw.count_read("train", images=-len(moved), boxes=-n_boxes)
    raw.count_read("val", images=len(moved), boxes=n_boxes)
    paths = {str(im.path) for im in moved}
    raw.issues = [
        replace(i, split="val") if i.split == "train" and i.image in paths else i
        for i in raw.issues
    ]
    # the splits in reading order (train, val, test), as a layout with its own val has them
    raw.splits = {s: raw.splits[s] for s in SPLIT_ORDER if s in raw.splits}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (not recursive), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def rel_key(path: Path, root: Path) -> str:
    """A path relative to the dataset root in POSIX form (the split key; stable across machines)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
