"""COCO JSON reader: ``annotations/instances_<split>*.json``, or ``{train,val,test}.json``.

The split of a JSON file comes from the words of its name (``instances_val2017`` → val,
``trainval`` → train). Relative ``file_name``s are looked up in the first of a few usual image
folders (next to the JSON, the root, ``images/``, ``<name>2017/``, ``images/<split>/`` …) that holds
any of them; absolute ones (as our ``convert`` writes) are used as they are.
Category ids need not be contiguous: categories are renumbered 1..K in id order.
Crowd annotations (``iscrowd=1``) are dropped and counted — our representation has none, as in
the official YOLOX COCO reader, which skips them.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.data.raw import SPLIT_ORDER, DataError, Issue, RawBox, RawDataset, RawImage


def split_of(path: Path) -> str | None:
    words = re.split(r"[^a-z]+", path.stem.lower())
    for split, aliases in (
        ("test", ("test",)),
        ("val", ("val",)),
        ("train", ("train", "trainval")),
    ):
        if any(a in words for a in aliases):
            return split
    return None


def find_coco_jsons(root: Path) -> dict[str, Path]:
    """The split JSON files under ``root`` and ``root/annotations`` (empty dict when none)."""
    found: dict[str, list[Path]] = {}
    for folder in (root, root / "annotations"):
        if folder.is_dir():
            for p in sorted(folder.glob("*.json")):
                split = split_of(p)
                if split is not None:
                    found.setdefault(split, []).append(p)
    chosen: dict[str, Path] = {}
    for split, paths in found.items():
        if len(paths) > 1:  # COCO ships captions_/person_keypoints_ next to instances_
            paths = [p for p in paths if p.name.startswith("instances")] or paths
        if len(paths) > 1:
            raise DataError(
                f"{root}: several COCO JSON files for split '{split}': "
                f"{', '.join(str(p) for p in paths)}; keep one (or name the boxes one instances_*)"
            )
        chosen[split] = paths[0]
    return chosen


def read_coco(
    root: Path,
    *,
    classes: Sequence[str] | None,
    files: dict[str, Path] | None = None,
) -> RawDataset:
    files = files if files is not None else find_coco_jsons(root)
    docs = {split: _load(files[split]) for split in SPLIT_ORDER if split in files}
    names: list[str] = []
    for doc in docs.values():  # train's categories first, in id order; then any new ones
        for cat in sorted(doc["categories"], key=lambda c: c["id"]):
            if cat["name"] not in names:
                names.append(cat["name"])
    raw = RawDataset(root=root, layout="coco", class_names=list(classes) if classes else names)
    for split in SPLIT_ORDER:
        if split in docs:
            raw.add_split(split)
            _read_doc(raw, split, files[split], docs[split])
    return raw


def _load(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read COCO JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{path}: not a COCO detection file (needs an 'images' list)")
    cats = doc.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{path}: needs a non-empty 'categories' list of {{'id', 'name'}}")
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or "id" not in c:
            raise DataError(f"{path}: categories[{i}] needs an 'id' and a string 'name', got {c!r}")
    anns = doc.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{path}: 'annotations' must be a list")
    return doc


def _image_base(path: Path, root: Path, split: str, names: list[str]) -> Path:
    tag = path.stem.split("_")[-1]  # instances_train2017 -> train2017
    bases = [
        path.parent,
        root,
        root / "images",
        root / tag,
        root / "images" / tag,
        root / split,
        root / "images" / split,
    ]
    sample = [n for n in names if not Path(n).is_absolute()][:20]
    for base in dict.fromkeys(bases):
        if any((base / n).is_file() for n in sample):
            return base
    return path.parent


def _read_doc(
    raw: RawDataset,
    split: str,
    path: Path,
    doc: dict[str, Any],
) -> None:
    """Add the images of one checked COCO ``doc`` to ``split`` of ``raw``, then their boxes."""
    cat_names = {c["id"]: c["name"] for c in doc["categories"]}
    images, id_count = _read_images(raw, split, path, doc["images"])
    _read_annotations(raw, split, str(path), doc, images, id_count, cat_names)
    if "annotations" not in doc:
        raw.notes.append(f"{path}: no 'annotations' list (all images have zero boxes)")


def _read_images(
    raw: RawDataset, split: str, path: Path, entries: list[Any]
) -> tuple[dict[Any, tuple[str, RawImage]], Counter]:
    """The usable ``images`` entries by id (each with its split) and the count of every id.

    A malformed entry, and every entry of an id used more than once, is dropped and reported.
    """
    src = str(path)
    good = [e for e in entries if _image_ok(e)]
    base = _image_base(path, raw.root, split, [e["file_name"] for e in good])
    id_count = Counter(e["id"] for e in good)
    images: dict[Any, tuple[str, RawImage]] = {}
    for i, e in enumerate(entries):
        image = _read_image(raw, split, src, i, e, base, id_count)
        if image is not None:
            images[e["id"]] = (split, image)
            raw.splits[split].append(image)
    return images, id_count


def _read_image(
    raw: RawDataset, split: str, src: str, i: int, e: Any, base: Path, id_count: Counter
) -> RawImage | None:
    """``images[i]`` as a RawImage (a relative file under ``base``), or None when dropped."""
    raw.count_read(split, images=1)
    if not _image_ok(e):
        reason = f"images[{i}] needs an 'id' and a 'file_name', got {e!r}"
        raw.issues.append(Issue(split, "dropped image", "malformed_image", reason, source=src))
        return None
    file = Path(e["file_name"])
    file = file if file.is_absolute() else base / file
    if id_count[e["id"]] > 1:
        raw.issues.append(
            Issue(
                split,
                "dropped image",
                "duplicate_image_id",
                f"image id {e['id']} is used by {id_count[e['id']]} images",
                image=str(file),
                source=src,
            )
        )
        return None
    w, h = e.get("width"), e.get("height")
    size = (w, h) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None
    return RawImage(path=file, source=src, declared_size=size)


def _read_annotations(
    raw: RawDataset,
    split: str,
    src: str,
    doc: dict[str, Any],
    images: dict[Any, tuple[str, RawImage]],
    id_count: Counter,
    cat_names: dict[Any, str],
) -> None:
    """Add each usable annotation of ``doc`` to its image's boxes; report the rest."""
    seen_ann_ids: set[Any] = set()
    for i, a in enumerate(doc.get("annotations", [])):
        image_id = a.get("image_id") if isinstance(a, dict) else None
        where, image = images.get(image_id, (split, None))
        raw.count_read(where, boxes=1)
        reason, kind = _ann_problem(a, image, id_count, cat_names, seen_ann_ids)
        if reason:
            raw.issues.append(
                Issue(
                    where,
                    "dropped box",
                    kind,
                    reason,
                    image=str(image.path) if image else "",
                    source=src,
                    box_index=i,
                    bbox=_bbox_or_none(a),
                )
            )
            continue
        assert image is not None
        x, y, bw, bh = (float(v) for v in a["bbox"])
        image.boxes.append(RawBox((x, y, bw, bh), cat_names[a["category_id"]], i))


def _image_ok(e: Any) -> bool:
    return (
        isinstance(e, dict)
        and isinstance(e.get("id"), (int, str))
        and isinstance(e.get("file_name"), str)
        and bool(e["file_name"])
    )


def _bbox_or_none(a: Any) -> tuple[float, ...] | None:
    b = a.get("bbox") if isinstance(a, dict) else None
    if isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b):
        return tuple(float(v) for v in b)
    return None


def _ann_problem(
    a: Any,
    image: RawImage | None,
    id_count: Counter,
    cat_names: dict[Any, str],
    seen_ann_ids: set[Any],
) -> tuple[str, str]:
    """("", "") when the annotation is usable, else (reason, kind)."""
    if not isinstance(a, dict):
        return f"annotation is {a!r}, not an object", "malformed_box"
    label = f"annotation id {a.get('id')}"
    if image is None:
        if id_count.get(a.get("image_id"), 0) > 1:
            return (
                f"{label}: image id {a.get('image_id')} is used by several images",
                "duplicate_image_id",
            )
        return f"{label}: image_id {a.get('image_id')!r} is not in 'images'", "unknown_image_id"
    if "id" in a:
        if a["id"] in seen_ann_ids:
            return f"{label} is used twice (this one dropped)", "duplicate_annotation_id"
        seen_ann_ids.add(a["id"])
    b = _bbox_or_none(a)
    if b is None or not all(math.isfinite(v) for v in b):
        return f"{label}: bbox {a.get('bbox')!r} is not 4 finite numbers", "malformed_box"
    if a.get("category_id") not in cat_names:
        known = ", ".join(str(k) for k in cat_names)
        return (
            f"{label}: unknown category_id {a.get('category_id')!r} (file has {known})",
            "unknown_class",
        )
    if a.get("iscrowd", 0):
        return f"{label}: crowd annotation (iscrowd=1)", "crowd"
    return "", ""
