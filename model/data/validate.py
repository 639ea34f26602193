"""Check a parsed dataset: decode every image, fit every box, and account for everything dropped.

Default behaviour is warn, drop and count: boxes that stick out are clipped, boxes with no area
(before or after clipping) or an unknown class are dropped, images that are missing, do not decode
or repeat a file already seen are dropped with their boxes. Each of these is an :class:`Issue` in
the :class:`DataReport`; ``strict=True`` raises :class:`DataError` listing every one instead.
Boxes of classes left out on purpose (``classes=``) are dropped and counted too, but are not
problems. The report also counts every class found (boxes, files) and warns about what is
surprising without being wrong: a class with no box, a class FloW does not have.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from model.data.raw import DataError, Issue, RawBox, RawDataset, RawImage, plural, rel_key

SMALL_MAX = 32**2  # COCO area ranges: small < 32², medium up to 96², large > 96²
LARGE_MIN = 96**2


@dataclass
class SplitStats:
    """Counts for one split: read = kept + dropped for both images and boxes."""

    images_read: int = 0
    boxes_read: int = 0
    images: int = 0  # kept
    boxes: int = 0  # kept
    images_dropped: int = 0
    boxes_dropped: int = 0  # including the boxes of dropped images
    boxes_clipped: int = 0  # kept, clipped to the image
    empty_images: int = 0  # kept with zero boxes
    difficult: int = 0  # kept VOC difficult=1 boxes
    small: int = 0  # kept boxes by COCO area range (after clipping)
    medium: int = 0
    large: int = 0

    @property
    def accounted(self) -> bool:
        return (
            self.images_read == self.images + self.images_dropped
            and self.boxes_read == self.boxes + self.boxes_dropped
        )


# (column header, SplitStats attribute) of the report table
_COLUMNS = (
    ("images", "images"),
    ("img drop", "images_dropped"),
    ("boxes", "boxes"),
    ("box drop", "boxes_dropped"),
    ("clipped", "boxes_clipped"),
    ("small", "small"),
    ("medium", "medium"),
    ("large", "large"),
    ("difficult", "difficult"),
    ("no boxes", "empty_images"),
)


EXCLUDED = "excluded_class"  # the Issue kind of a box whose class was left out on purpose
_EXAMPLES = 3  # files named per class
_LAYOUT_NAMES = {"flow": "FloW"}  # as the warnings spell a layout


@dataclass
class ClassStats:
    """One class as found in the annotations: ``boxes`` read (before checking), in ``files``
    annotation files (the image file for COCO), ``kept`` after checking; ``examples``: the first
    few of those files, relative to the dataset root."""

    boxes: int = 0
    files: int = 0
    kept: int = 0
    examples: list[str] = field(default_factory=list)

    def describe(self, name: str) -> str:
        """'can: 3 boxes in 2 files (a.xml, b.xml)', with 'e.g.' when not every file is named."""
        shown = ", ".join(self.examples)
        more = "e.g. " if self.files > len(self.examples) else ""
        where = f" ({more}{shown})" if shown else ""
        return f"{name}: {plural(self.boxes, 'box')} in {plural(self.files, 'file')}{where}"


@dataclass
class DataReport:
    """What a dataset held and what checking it changed, naming every file and box concerned."""

    root: str
    layout: str
    class_names: list[str]
    splits: dict[str, SplitStats] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)  # every drop, clip and fix
    notes: list[str] = field(default_factory=list)  # worth knowing, not a problem
    # (added, issue 14) every class found, kept or not; and what deserves a look
    classes: dict[str, ClassStats] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Issue]:
        """The issues, less the boxes of classes left out on purpose."""
        return [i for i in self.issues if i.kind != EXCLUDED]

    @property
    def ok(self) -> bool:
        """True when nothing was dropped, clipped or fixed (but boxes of classes left out)."""
        return not self.problems

    def describe_class(self, name: str) -> str:
        """'can: 3 boxes in 2 files (a.xml, b.xml)'; a class of no box says so."""
        return self.classes.get(name, ClassStats()).describe(name)

    def total(self, key: str) -> int:
        return sum(getattr(s, key) for s in self.splits.values())

    def reason_counts(self) -> dict[str, dict[str, int]]:
        """{kind: {"images": n, "boxes": n}} over every issue (boxes of dropped images included)."""
        out: dict[str, dict[str, int]] = {}
        for i in self.issues:
            c = out.setdefault(f"{i.action}: {i.kind}", {"images": 0, "boxes": 0})
            if i.action in ("dropped image", "fixed"):
                c["images"] += 1
                c["boxes"] += i.n_boxes
            else:
                c["boxes"] += 1
        return out

    def summary(self) -> str:
        """One line: kept images/boxes per split and what was dropped or clipped."""
        parts = ", ".join(
            f"{n} {plural(s.images, 'image')} / {plural(s.boxes, 'box')}"
            for n, s in self.splits.items()
        )
        return (
            f"{self.layout} dataset {self.root}: {parts}; dropped "
            f"{plural(self.total('images_dropped'), 'image')} and "
            f"{plural(self.total('boxes_dropped'), 'box')}, "
            f"clipped {plural(self.total('boxes_clipped'), 'box')}"
        )

    def format(self, max_issues: int | None = 30) -> str:
        """The report as text; at most ``max_issues`` issue lines (None: all)."""
        lines = [
            f"Dataset {self.root} (layout {self.layout}), "
            f"{plural(len(self.class_names), 'class')}: {', '.join(self.class_names) or '-'}",
            " ".join(f"{h:>9s}" for h in ("split", *(c for c, _ in _COLUMNS))),
        ]
        for name, s in self.splits.items():
            lines.append(" ".join([f"{name:>9s}"] + [f"{getattr(s, a):>9d}" for _, a in _COLUMNS]))
        lines.append("(kept images and boxes; small < 32², large > 96² px, after clipping)")
        if self.classes:
            lines.append("Classes found (boxes as read, and kept):")
            for name, c in self.classes.items():
                left_out = " (not among the chosen classes)" if name not in self.class_names else ""
                lines.append(f"  {c.describe(name)}; {c.kept} kept{left_out}")
        problems = self.problems
        if self.issues:
            lines.append("Dropped / clipped / fixed, by reason:")
            for kind, c in sorted(self.reason_counts().items()):
                lines.append(
                    f"  {kind}: {plural(c['images'], 'image')}, {plural(c['boxes'], 'box')}"
                )
        if problems:
            shown = problems if max_issues is None else problems[:max_issues]
            lines.append(f"Problems ({len(shown)} of {len(problems)} shown):")
            lines.extend(f"  {i.line()}" for i in shown)
        elif self.issues:
            lines.append("No problems: only the boxes of classes left out were dropped.")
        else:
            lines.append("No problems: nothing dropped, clipped or fixed.")
        if self.warnings:
            lines.append("Warnings:")
            lines.extend(f"  {w}" for w in self.warnings)
        if self.notes:
            lines.append("Notes:")
            lines.extend(f"  {n}" for n in self.notes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layout": self.layout,
            "class_names": list(self.class_names),
            "splits": {n: {**asdict(s), "accounted": s.accounted} for n, s in self.splits.items()},
            "reasons": self.reason_counts(),
            "issues": [i.to_dict() for i in self.issues],
            "notes": list(self.notes),
            "classes": {n: asdict(c) for n, c in self.classes.items()},
            "warnings": list(self.warnings),
        }


@dataclass
class CheckResult:
    """COCO-style lists per split (fresh ids from 1), the categories and the report."""

    splits: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]
    categories: list[dict[str, Any]]
    report: DataReport


def probe_image(path: Path) -> tuple[int, int] | tuple[str, str]:
    """(width, height) of a decodable image, else (kind, reason)."""
    if not path.is_file():
        return "missing_image", "image file not found"
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        return "corrupt_image", f"cannot read the image file: {e}"
    if data.size == 0:
        return "corrupt_image", "image file is empty (0 bytes)"
    if data.size >= 2 and data[0] == 0xFF and data[1] == 0xD8:
        # cv2.imread fills a truncated JPEG with grey and returns it with only a stderr warning,
        # so the loaders would train on it: require an end-of-image marker after the last scan.
        buf = data.tobytes()
        if buf.rfind(b"\xff\xd9") < buf.rfind(b"\xff\xda"):
            return "corrupt_image", "truncated JPEG (no end-of-image marker after the last scan)"
    # IMREAD_COLOR as in the loaders (it applies EXIF orientation, so the size is the one they see).
    img = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if img is None:
        return "corrupt_image", "image does not decode (corrupt or not a supported format)"
    return int(img.shape[1]), int(img.shape[0])


def fit_box(
    bbox: Sequence[float], width: int, height: int
) -> tuple[tuple[float, float, float, float] | None, str, str]:
    """Fit a COCO (x, y, w, h) pixel box to a width x height image.

    Returns (box, kind, reason): (box, "", "") when inside, (clipped box, "clipped", reason) when
    it stuck out, (None, kind, reason) when it must be dropped.
    """
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, "malformed_box", "box has a non-finite coordinate"
    if w <= 0 or h <= 0:
        return None, "zero_area", f"box has no area (width {w:g}, height {h:g})"
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        return None, "outside_image", f"box lies outside the {width}x{height} image"
    if (x1, y1, x2, y2) == (x, y, x + w, y + h):
        return (x, y, w, h), "", ""
    return (x1, y1, x2 - x1, y2 - y1), "clipped", f"box sticks out of the {width}x{height} image"


def check(
    raw: RawDataset,
    *,
    strict: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
) -> CheckResult:
    """Decode every image (thread pool, tqdm bar), fit every box, build COCO lists and the report.

    ``progress=None`` shows the bar only on a terminal. Nothing is cached: each call reads the
    files again, so the report always describes the data as it is now.
    """
    issues = list(raw.issues)
    todo = _unique_files(raw, issues)
    sizes = _decode_all([img.path for _, img in todo], workers, progress)
    class_ids = {name: i + 1 for i, name in enumerate(raw.class_names)}
    out: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
        s: ([], []) for s in raw.splits
    }
    difficult = dict.fromkeys(raw.splits, 0)
    for (split, img), size in zip(todo, sizes, strict=True):
        if isinstance(size[0], str):
            issues.append(_drop_image(split, img, str(size[0]), str(size[1])))
            continue
        images, anns = out[split]
        images.append(
            {
                "id": len(images) + 1,
                "file_name": str(img.path.resolve()),
                "width": int(size[0]),
                "height": int(size[1]),
            }
        )
        difficult[split] += _fit_boxes(
            split, img, images[-1], anns, class_ids, issues, raw.chosen_classes
        )
    classes = _class_stats(raw, out)
    report = DataReport(
        root=str(raw.root),
        layout=raw.layout,
        class_names=list(raw.class_names),
        splits=_split_stats(raw, out, issues, difficult),
        issues=issues,
        notes=[f"{n} {what}" for what, n in raw.note_counts.items()] + list(raw.notes),
        classes=classes,
        warnings=_class_warnings(raw, classes),
    )
    if strict and report.problems:
        problems = report.problems
        raise DataError(
            f"{raw.root}: {len(problems)} problems (strict=True; without it they are dropped, "
            f"clipped or fixed and counted):\n" + "\n".join(f"  {i.line()}" for i in problems)
        )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(raw.class_names)]
    return CheckResult(splits=out, categories=categories, report=report)


def _drop_image(split: str, img: RawImage, kind: str, reason: str) -> Issue:
    return Issue(
        split,
        "dropped image",
        kind,
        reason,
        image=str(img.path),
        source=img.source,
        n_boxes=len(img.boxes),
    )


def _unique_files(raw: RawDataset, issues: list[Issue]) -> list[tuple[str, RawImage]]:
    """(split, image) pairs to check; a file seen before (in any split) is dropped here."""
    first_seen: dict[str, str] = {}
    todo: list[tuple[str, RawImage]] = []
    for split, images in raw.splits.items():
        for img in images:
            key = os.path.normcase(str(img.path.resolve()))
            if key in first_seen:
                reason = f"same file as an image already in split '{first_seen[key]}'"
                issues.append(_drop_image(split, img, "duplicate_file", reason))
            else:
                first_seen[key] = split
                todo.append((split, img))
    return todo


def _decode_all(
    paths: list[Path], workers: int | None, progress: bool | None
) -> list[tuple[int, int] | tuple[str, str]]:
    n_workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        # cv2 releases the GIL while decoding, so threads decode in parallel.
        results = pool.map(probe_image, paths)
        disable = None if progress is None else not progress
        return list(
            tqdm(results, total=len(paths), desc="checking images", unit="img", disable=disable)
        )


def _fit_boxes(
    split: str,
    img: RawImage,
    image: dict[str, Any],
    anns: list[dict[str, Any]],
    class_ids: dict[str, int],
    issues: list[Issue],
    chosen: bool = False,
) -> int:
    """Append the usable boxes of ``img`` to ``anns``; record issues; return kept difficult.

    ``chosen``: the class names were chosen by the caller, so a box of another class is left
    out on purpose (kind ``excluded_class``), not an unknown class.
    """
    width, height = image["width"], image["height"]
    _check_declared_size(split, img, width, height, issues)
    difficult = 0
    for box in img.boxes:
        fitted = _fit_one_box(split, img, box, (width, height), class_ids, issues, chosen)
        if fitted is None:
            continue
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": image["id"],
                "category_id": class_ids[box.label],
                "bbox": list(fitted),
                "area": fitted[2] * fitted[3],
                "iscrowd": 0,
            }
        )
        difficult += box.difficult
    return difficult


def _check_declared_size(
    split: str, img: RawImage, width: int, height: int, issues: list[Issue]
) -> None:
    """Record a ``size_mismatch`` when the annotation states another size than the decoded one."""
    if img.declared_size is not None and img.declared_size != (width, height):
        dw, dh = img.declared_size
        reason = (
            f"annotation says {dw}x{dh}, the image is {width}x{height}; boxes were "
            f"checked against the image"
        )
        issues.append(
            Issue(split, "fixed", "size_mismatch", reason, image=str(img.path), source=img.source)
        )


def _fit_one_box(
    split: str,
    img: RawImage,
    box: RawBox,
    size: tuple[int, int],
    class_ids: dict[str, int],
    issues: list[Issue],
    chosen: bool,
) -> tuple[float, float, float, float] | None:
    """``box`` in pixels fitted to the (width, height) image, or None when dropped; records the
    issue of a dropped or clipped box."""
    width, height = size
    bbox = box.bbox
    if img.normalized:
        bbox = (bbox[0] * width, bbox[1] * height, bbox[2] * width, bbox[3] * height)
    where = {
        "image": str(img.path),
        "source": img.source,
        "box_index": box.index,
        "bbox": tuple(bbox),
    }
    if box.label not in class_ids and chosen:
        reason = f"class '{box.label}' is not among the chosen classes ({', '.join(class_ids)})"
        issues.append(Issue(split, "dropped box", EXCLUDED, reason, **where))
        return None
    if box.label not in class_ids:
        reason = f"unknown class '{box.label}' (classes: {', '.join(class_ids)})"
        issues.append(Issue(split, "dropped box", "unknown_class", reason, **where))
        return None
    fitted, kind, reason = fit_box(bbox, width, height)
    if fitted is None:
        issues.append(Issue(split, "dropped box", kind, reason, **where))
        return None
    if kind == "clipped":
        issues.append(Issue(split, "clipped box", "clipped", reason, new_bbox=fitted, **where))
    return fitted


def _split_stats(
    raw: RawDataset,
    out: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]],
    issues: list[Issue],
    difficult: dict[str, int],
) -> dict[str, SplitStats]:
    stats = {s: SplitStats() for s in raw.splits}
    for split, (images, anns) in out.items():
        s = stats[split]
        s.images_read, s.boxes_read = raw.read.get(split, [0, 0])
        s.images, s.boxes, s.difficult = len(images), len(anns), difficult[split]
        with_boxes = {a["image_id"] for a in anns}
        s.empty_images = sum(1 for im in images if im["id"] not in with_boxes)
        for a in anns:
            if a["area"] < SMALL_MAX:
                s.small += 1
            elif a["area"] > LARGE_MIN:
                s.large += 1
            else:
                s.medium += 1
    for i in issues:
        s = stats.setdefault(i.split, SplitStats())
        if i.action == "dropped image":
            s.images_dropped += 1
            s.boxes_dropped += i.n_boxes
        elif i.action == "dropped box":
            s.boxes_dropped += 1
        elif i.action == "clipped box":
            s.boxes_clipped += 1
    return stats


def _class_stats(
    raw: RawDataset, out: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]
) -> dict[str, ClassStats]:
    """Every class of the annotations (chosen classes first, in order, then the others by
    name): boxes and files as read, boxes kept."""
    stats = {name: ClassStats() for name in raw.class_names}
    seen: dict[str, set[str]] = {}
    found: dict[str, ClassStats] = {}
    for images in raw.splits.values():
        for img in images:
            # COCO keeps every split in one JSON: the image is what tells boxes apart there
            where = img.source if img.source and raw.layout != "coco" else str(img.path)
            for box in img.boxes:
                if box.label in stats:
                    c = stats[box.label]
                else:
                    c = found.setdefault(box.label, ClassStats())
                c.boxes += 1
                files = seen.setdefault(box.label, set())
                if where not in files:
                    files.add(where)
                    c.files += 1
                    if len(c.examples) < _EXAMPLES:
                        c.examples.append(rel_key(Path(where), raw.root))
    stats.update(sorted(found.items()))
    kept = Counter(a["category_id"] for _, anns in out.values() for a in anns)
    for i, name in enumerate(raw.class_names):
        stats[name].kept = kept[i + 1]
    return stats


def _class_warnings(raw: RawDataset, classes: dict[str, ClassStats]) -> list[str]:
    """What a user who expected other classes must be told: classes of no box, classes the
    layout does not have (FloW: only bottle), and how to keep only some."""
    warnings: list[str] = []
    empty = [n for n in raw.class_names if classes[n].boxes == 0]
    if empty:
        warnings.append(
            f"{plural(len(empty), 'class')} of the dataset {'has' if len(empty) == 1 else 'have'} "
            f"no box: {', '.join(empty)} (a detector trained on it never sees one)"
        )
    if raw.layout_classes and not raw.chosen_classes:
        own = ",".join(raw.layout_classes)
        layout = _LAYOUT_NAMES.get(raw.layout, raw.layout)
        extra = [n for n in raw.class_names if n not in raw.layout_classes]
        if extra and not any(n in raw.class_names for n in raw.layout_classes):
            found = "; ".join(classes[n].describe(n) for n in extra)
            warnings.append(
                f"no box of class {own} in this {layout}-layout dataset: its classes are "
                f"the ones found ({found}); train them with num_classes: {len(extra)}, or "
                "keep some with --classes NAME,... (trial config: classes: NAME,...)"
            )
        else:
            for name in extra:
                warnings.append(
                    f"class {classes[name].describe(name)} is not a {layout} class (the "
                    f"layout has {own}); to keep only {own}: --classes {own} (trial config: "
                    f"classes: {own})"
                )
    return warnings
