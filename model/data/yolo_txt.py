"""YOLO txt reader: ``data.yaml`` + ``images/<split>/`` + ``labels/<split>/*.txt``.

``data.yaml`` (at the dataset root, or in ``labels/`` as some exporters leave it) follows the
Ultralytics keys: ``path`` (the root), ``train``, ``val``, ``test`` (a folder, a list of folders or
a .txt list of images, relative to ``path``), ``names`` (a list, or a dict {0: name, …}) and
optionally ``nc``. Ultralytics takes a relative ``path`` under its own DATASETS_DIR, which we
cannot know, so the root is the first of these under which every split entry exists: ``path``
relative to the YAML's folder, ``path`` relative to the working directory, the YAML's folder, its
parent (an absolute ``path`` is tried first, as it is). Like Ultralytics, an entry
``../x`` that does not exist is also tried as ``x`` (Roboflow writes ``train: ../train/images``
next to ``train/``). Labels are found by Ultralytics' rule: the last ``images`` folder of an image's
path becomes ``labels``. Without a YAML, ``images/{train,val,test}`` (or a flat ``images/``) next
to ``labels/`` is read, with names from ``classes.txt``. A label line is ``class cx cy w h``
normalised to [0, 1] (or ``class x1 y1 x2 y2 …``, a polygon, whose bounding box is taken); the
checker turns them into pixels with the decoded image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from model.data.raw import (
    IMAGE_SUFFIXES,
    SPLIT_ORDER,
    DataError,
    Issue,
    RawBox,
    RawDataset,
    RawImage,
    list_images,
)

YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml", "dataset.yml")


def find_yaml(root: Path) -> Path | None:
    """The data YAML of ``root``: at the root, else in ``labels/``; None when there is none."""
    for folder in (root, root / "labels"):
        for name in YAML_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def is_yolo_folders(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "labels").is_dir()


def read_yolo(
    root: Path,
    *,
    classes: Sequence[str] | None,
    yaml_path: Path | None = None,
) -> RawDataset:
    yaml_path = yaml_path or find_yaml(root)
    if yaml_path is not None:
        names, split_images, root = _from_yaml(yaml_path)
    else:
        names = _names_from_classes_txt(root)
        split_images = _from_folders(root)
    raw = RawDataset(root=root, layout="yolo", class_names=list(classes) if classes else names)
    for split in SPLIT_ORDER:
        if split in split_images:
            out = raw.add_split(split)
            for img in split_images[split]:
                out.append(_read_label(img, split, names, raw))
    return raw


def _from_yaml(path: Path) -> tuple[list[str], dict[str, list[Path]], Path]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: cannot read the YOLO data YAML: {e}") from e
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a mapping with keys path, train, val, names")
    names = _parse_names(doc.get("names"), path)
    nc = doc.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(
            f"{path}: key 'nc' is {nc!r} but 'names' lists {len(names)} classes; make them agree"
        )
    if "train" not in doc:
        raise DataError(f"{path}: key 'train' is missing (folder or .txt list of training images)")
    entries = {
        split: [str(e) for e in (doc[split] if isinstance(doc[split], list) else [doc[split]])]
        for split in SPLIT_ORDER
        if doc.get(split)
    }
    roots = _root_candidates(path, doc.get("path"))
    found = [{(s, e): _resolve_entry(r, e) for s, es in entries.items() for e in es} for r in roots]
    best = max(range(len(roots)), key=lambda i: (sum(v is not None for v in found[i].values()), -i))
    for (split, entry), target in found[best].items():
        if target is None:
            tried = list(dict.fromkeys(str(c) for r in roots for c in _entry_candidates(r, entry)))
            raise DataError(
                f"{path}: key '{split}' points to {entry!r}, which is in none of the dataset roots "
                f"tried for path: {doc.get('path')!r} (tried {', '.join(tried)}); set path: in "
                "the YAML to the dataset folder (absolute, or relative to the YAML)"
            )
    root, targets = roots[best], found[best]
    splits: dict[str, list[Path]] = {}
    for split, es in entries.items():
        images = {p for e in es for p in _images_of(root, targets[(split, e)] or root)}
        splits[split] = sorted(images)
    return names, splits, root


def _root_candidates(yaml_path: Path, given: Any) -> list[Path]:
    """Where the dataset root may be, in the order tried (see the module docstring)."""
    here = yaml_path.parent
    out: list[Path] = []
    if given:
        p = Path(str(given)).expanduser()
        out += [p] if p.is_absolute() else [here / p, Path.cwd() / p]
    out += [here, here.parent]
    return list(dict.fromkeys(c.resolve() for c in out))


def _entry_candidates(root: Path, entry: str) -> list[Path]:
    target = Path(entry).expanduser()
    if target.is_absolute():
        return [target]
    out = [(root / target).resolve()]
    if entry.startswith("../"):  # Ultralytics' fallback (Roboflow exports rely on it)
        out.append((root / entry[3:]).resolve())
    return out


def _resolve_entry(root: Path, entry: str) -> Path | None:
    """The folder or .txt list ``entry`` names under ``root``, or None when there is none."""
    for cand in _entry_candidates(root, entry):
        if cand.is_dir() or (cand.is_file() and cand.suffix == ".txt"):
            return cand
    return None


def _parse_names(names: Any, path: Path) -> list[str]:
    if isinstance(names, list) and names and all(isinstance(n, (str, int)) for n in names):
        return [str(n) for n in names]
    if isinstance(names, dict) and names:
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DataError(
                f"{path}: key 'names' must map 0..{len(keys) - 1} to class names, got keys {keys}"
            )
        return [str(names[k]) for k in keys]
    raise DataError(
        f"{path}: key 'names' must be a non-empty list of class names or a dict {{0: name, ...}}, "
        f"got {names!r}"
    )


def _images_of(root: Path, target: Path) -> list[Path]:
    """The images of a resolved entry: a folder's (recursively), or a .txt list's lines (each
    relative to the list's folder, else to the root, when not absolute)."""
    if target.is_dir():
        return sorted(
            p for p in target.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
    out = []
    for line in (s.strip() for s in target.read_text().splitlines()):
        if not line:
            continue
        p = Path(line)
        if not p.is_absolute():
            near, under_root = target.parent / p, root / p
            p = near if near.exists() or not under_root.exists() else under_root
        out.append(p)
    return out


def _names_from_classes_txt(root: Path) -> list[str]:
    for cand in (root / "classes.txt", root / "labels" / "classes.txt"):
        if cand.is_file():
            names = [s.strip() for s in cand.read_text().splitlines() if s.strip()]
            if names:
                return names
    raise DataError(
        f"{root}: YOLO folders images/ + labels/ found but no class names: add a data.yaml with "
        f"'names' (and train/val), or a classes.txt with one name per line"
    )


def _from_folders(root: Path) -> dict[str, list[Path]]:
    subs = {s: root / "images" / s for s in SPLIT_ORDER if (root / "images" / s).is_dir()}
    if subs:
        return {s: list_images(folder) for s, folder in subs.items()}
    return {"train": list_images(root / "images")}


def label_path(img: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder of the path becomes ``labels``, suffix .txt."""
    parts = list(img.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return img.with_suffix(".txt")


def _read_label(img: Path, split: str, names: list[str], raw: RawDataset) -> RawImage:
    raw.count_read(split, images=1)
    txt = label_path(img)
    if not txt.is_file():
        raw.note("images without a label file (kept with zero boxes)")
        return RawImage(path=img, source="", normalized=True)
    image = RawImage(path=img, source=str(txt), normalized=True)
    lines = [s for s in txt.read_text().splitlines() if s.strip()]
    if not lines:
        raw.note("empty label files (images kept with zero boxes)")
    raw.count_read(split, boxes=len(lines))
    for index, line in enumerate(lines):
        box = _parse_line(line, names)
        if isinstance(box, tuple):
            kind, reason = box
            raw.issues.append(
                Issue(
                    split,
                    "dropped box",
                    kind,
                    reason,
                    image=str(img),
                    source=str(txt),
                    box_index=index,
                )
            )
        else:
            box.index = index
            image.boxes.append(box)
    return image


def _parse_line(line: str, names: list[str]) -> RawBox | tuple[str, str]:
    """A RawBox in normalised (x, y, w, h), or (kind, reason) when the line cannot be used."""
    tokens = line.split()
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        return "malformed_box", f"line {line.strip()!r} is not all numbers"
    if not all(math.isfinite(v) for v in values):
        return "malformed_box", f"line {line.strip()!r} has a non-finite value"
    if len(values) == 5:
        cls, cx, cy, w, h = values
        x, y = cx - w / 2, cy - h / 2
    elif len(values) >= 7 and len(values) % 2 == 1:  # class x1 y1 x2 y2 ... (segment)
        cls = values[0]
        xs, ys = values[1::2], values[2::2]
        x, y, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    else:
        return "malformed_box", (
            f"line {line.strip()!r} has {len(values)} values; expected "
            f"'class cx cy w h' or a polygon 'class x1 y1 x2 y2 x3 y3 ...'"
        )
    if cls != int(cls) or not 0 <= cls < len(names):
        return "unknown_class", (
            f"class index {tokens[0]} is not one of 0..{len(names) - 1} (names: {', '.join(names)})"
        )
    return RawBox((x, y, w, h), names[int(cls)], 0)
