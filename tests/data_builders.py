"""Tiny datasets written into tmp_path for the data tests (64x48 images, hand-chosen boxes)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

W, H = 64, 48

# (name, xmin, ymin, xmax, ymax) or (name, xmin, ymin, xmax, ymax, difficult)
VocObject = tuple[Any, ...]


def write_image(path: Path, w: int = W, h: int = H, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes (a corrupt JPEG)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_voc_xml(
    path: Path, objects: Sequence[VocObject], *, filename: str = "", size: tuple[int, int] = (W, H)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    objs = []
    for o in objects:
        name, xmin, ymin, xmax, ymax = o[:5]
        difficult = o[5] if len(o) > 5 else 0
        objs.append(
            f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
            f"<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
            f"</bndbox></object>"
        )
    path.write_text(
        f"<annotation><filename>{filename or path.stem + '.jpg'}</filename>"
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        + "".join(objs)
        + "</annotation>"
    )
    return path


def make_voc_folder(
    img_dir: Path, ann_dir: Path, items: dict[str, Sequence[VocObject]], ext: str = ".jpg"
) -> None:
    for i, (stem, objects) in enumerate(items.items()):
        write_image(img_dir / f"{stem}{ext}", seed=i)
        write_voc_xml(ann_dir / f"{stem}.xml", objects, filename=f"{stem}{ext}")


def make_flow(
    root: Path,
    train: dict[str, Sequence[VocObject]],
    test: dict[str, Sequence[VocObject]] | None = None,
) -> Path:
    make_voc_folder(root / "training" / "images", root / "training" / "annotations", train)
    if test is not None:
        make_voc_folder(root / "test" / "images", root / "test" / "annotations", test)
    return root


def make_yolo(
    root: Path,
    splits: dict[str, dict[str, list[str]]],
    names: Any = ("bottle", "can"),
    *,
    yaml_doc: dict[str, Any] | None = None,
) -> Path:
    """``splits``: {split: {stem: [label lines]}}; writes data.yaml unless ``names`` is None."""
    for split, items in splits.items():
        for i, (stem, lines) in enumerate(items.items()):
            write_image(root / "images" / split / f"{stem}.png", seed=i)
            label = root / "labels" / split / f"{stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("".join(line + "\n" for line in lines))
    if names is not None:
        doc = yaml_doc or {
            "path": ".",
            **{s: f"images/{s}" for s in splits},
            "names": list(names) if isinstance(names, tuple) else names,
        }
        (root / "data.yaml").write_text(yaml.safe_dump(doc))
    return root


def coco_doc(
    images: list[tuple[int, str]],
    annotations: list[tuple[int, int, int, list[float]]],
    categories: list[tuple[int, str]],
) -> dict[str, Any]:
    """A COCO document from tuples: images (id, file_name); annotations (id, image_id,
    category_id, bbox); categories (id, name)."""
    return {
        "images": [{"id": i, "file_name": f, "width": W, "height": H} for i, f in images],
        "annotations": [
            {
                "id": a,
                "image_id": im,
                "category_id": c,
                "bbox": b,
                "area": b[2] * b[3] if len(b) == 4 else 0,
                "iscrowd": 0,
            }
            for a, im, c, b in annotations
        ],
        "categories": [{"id": i, "name": n} for i, n in categories],
    }


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def boxes_of(split: Any) -> dict[str, list[tuple[str, list[float]]]]:
    """{image file name: [(class name, bbox), ...]} of a DetectionSplit, for exact comparisons."""
    names = {c["id"]: c["name"] for c in split.categories}
    files = {im["id"]: Path(im["file_name"]).name for im in split.images}
    out: dict[str, list[tuple[str, list[float]]]] = {f: [] for f in files.values()}
    for a in split.annotations:
        out[files[a["image_id"]]].append((names[a["category_id"]], list(a["bbox"])))
    return out
