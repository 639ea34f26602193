"""What the layout readers hand to the checker: raw records, reader-level issues, the split rule.

Readers (``voc.py``, ``coco_json.py``, ``yolo_txt.py``) only parse annotation files; they never open
an image. :mod:`model.data.validate` decodes every image, converts YOLO's normalised boxes with the
decoded size, clips, drops and counts. Everything a reader cannot use (a malformed box, an XML that
does not parse, a COCO id that is used twice) is recorded as an :class:`Issue` here, so that every
image and box that was read ends up either in the dataset or in the report.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
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


def hash_split(keys: Iterable[str], val_fraction: float, seed: int) -> set[str]:
    """The keys that go to the validation split.

    Each key is ranked by a hash of (seed, key), so the split depends only on the seed and the set
    of keys, never on the order in which the file system lists them. ``round(n * val_fraction)``
    keys go to val, at least one when the fraction is positive and n > 1, and never all of them.
    """
    unique = sorted(set(keys))
    n = len(unique)
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if val_fraction == 0 or n < 2:
        return set()
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    ranked = sorted(unique, key=lambda k: (split_score(k, seed), k))
    return set(ranked[:n_val])


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
