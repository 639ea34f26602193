"""Layout detection: which reader a dataset folder needs, and the error when none fits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from model.data import coco_json, voc, yolo_txt
from model.data.raw import DataError, RawDataset, carve_validation

# What each layout expects, shown when a folder matches none of them.
LAYOUTS: dict[str, str] = {
    "flow": "FloW-Img: training/{images,annotations}/ and test/{images,annotations}/ "
    "(Pascal VOC XML, class 'bottle')",
    "voc": "Pascal VOC: JPEGImages/ + Annotations/*.xml (+ ImageSets/Main/{train,val,test}.txt), "
    "or images/ + annotations/*.xml (all training images)",
    "coco": "COCO JSON: annotations/instances_{train,val}*.json + image folders, or "
    "train.json/val.json/test.json next to the images",
    "yolo": "YOLO txt: data.yaml (names, path, train, val; at the root or in labels/) + "
    "images/{train,val}/ + labels/{train,val}/*.txt (or images/ + labels/ + classes.txt)",
}


def detect_layout(src: Path) -> str:
    """The layout name of ``src`` (a folder, a data.yaml or a COCO .json); DataError if none."""
    if not src.exists():
        raise DataError(f"dataset path {src} does not exist")
    if src.is_file():
        if src.suffix in (".yaml", ".yml"):
            return "yolo"
        if src.suffix == ".json":
            return "coco"
        raise DataError(f"{src}: a dataset file must be a YOLO data.yaml or a COCO .json")
    if voc.is_flow(src):
        return "flow"
    if voc.is_voc(src) or voc.is_flat_voc(src):
        return "voc"
    if yolo_txt.find_yaml(src) is not None:
        return "yolo"
    if coco_json.find_coco_jsons(src):
        return "coco"
    if yolo_txt.is_yolo_folders(src):
        return "yolo"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in src.iterdir())
    shown = ", ".join(entries[:12]) + (", …" if len(entries) > 12 else "") or "(empty folder)"
    expected = "\n".join(f"  {name:5s} {text}" for name, text in LAYOUTS.items())
    raise DataError(
        f"{src}: unrecognised dataset layout (found: {shown}). Supported layouts:\n{expected}"
    )


def read_raw(
    src: str | Path,
    *,
    val_fraction: float = 0.2,
    split_seed: int = 0,
    classes: Sequence[str] | None = None,
) -> RawDataset:
    """Parse the annotations of ``src`` (layout detected) without opening any image; without a
    val split of its own, ``val_fraction`` of the training images become "val"
    (:func:`~model.data.raw.carve_validation`, seeded by ``split_seed``)."""
    if str(src).strip() == "":
        # Path("") is the working directory: never guess, say what an empty path means instead.
        raise DataError(
            "no dataset path given (an empty cfg.data means the embedded dataset: pass "
            "model.data.embedded.embedded_dataset_dir() instead)"
        )
    src = Path(src).expanduser().resolve()
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if classes is not None and len(set(classes)) != len(classes):
        raise DataError(f"classes must be unique names, got {list(classes)}")
    raw = _read_layout(src, detect_layout(src), classes)
    carve_validation(raw, val_fraction, split_seed)
    return raw


def _read_layout(src: Path, layout: str, classes: Sequence[str] | None) -> RawDataset:
    if layout == "flow":
        return voc.read_flow(src, classes=classes)
    if layout == "voc":
        if voc.is_voc(src):
            return voc.read_voc(src, classes=classes)
        return voc.read_flat_voc(src, classes=classes)
    if layout == "coco":
        if src.is_file():
            files = {coco_json.split_of(src) or "train": src}
            return coco_json.read_coco(src.parent, files=files, classes=classes)
        return coco_json.read_coco(src, classes=classes)
    if src.is_file():
        return yolo_txt.read_yolo(src.parent, yaml_path=src, classes=classes)
    return yolo_txt.read_yolo(src, classes=classes)
