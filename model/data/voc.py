"""Pascal VOC XML readers: FloW-Img, the VOC devkit layout, and flat images/ + annotations/.

Coordinates follow the official YOLOX VOC reader (``yolox/data/datasets/voc.py``): VOC corners are
1-based pixel indices, so ``x = xmin - 1``, ``y = ymin - 1``, ``w = xmax - xmin``,
``h = ymax - ymin`` (COCO x, y, w, h in original pixels). A writer of VOC files that wants a box
(x, y, w, h) to come back exactly writes ``xmin = x + 1``, ``xmax = x + w + 1`` (same for y).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from model.data.raw import (
    SPLIT_ORDER,
    DataError,
    Issue,
    RawBox,
    RawDataset,
    RawImage,
    list_images,
    ordered_class_names,
)

# (image or None, annotation XML or None) — one of the two is always set.
Item = tuple[Path | None, Path | None]

FLOW_CLASS = "bottle"


def is_flow(root: Path) -> bool:
    return (root / "training" / "images").is_dir() and (root / "training" / "annotations").is_dir()


def is_voc(root: Path) -> bool:
    return (root / "JPEGImages").is_dir() and (root / "Annotations").is_dir()


def is_flat_voc(root: Path) -> bool:
    ann = root / "annotations"
    return (root / "images").is_dir() and ann.is_dir() and any(ann.glob("*.xml"))


def read_flow(root: Path, *, classes: Sequence[str] | None) -> RawDataset:
    """FloW-Img: ``training/{images,annotations}`` → split "train", ``test/…`` → split "test"."""
    splits = {
        "train": _pair_folder(root / "training" / "images", root / "training" / "annotations")
    }
    if (root / "test" / "images").is_dir():
        splits["test"] = _pair_folder(root / "test" / "images", root / "test" / "annotations")
    raw = _read(root, "flow", splits, classes, first=FLOW_CLASS)
    raw.layout_classes = (FLOW_CLASS,)
    return raw


def read_flat_voc(root: Path, *, classes: Sequence[str] | None) -> RawDataset:
    """``images/`` + ``annotations/*.xml`` with no split of its own (all training images: the
    validation hold-out is carved by :func:`model.data.raw.carve_validation`)."""
    splits = {"train": _pair_folder(root / "images", root / "annotations")}
    return _read(root, "voc", splits, classes)


def read_voc(root: Path, *, classes: Sequence[str] | None) -> RawDataset:
    """``JPEGImages/`` + ``Annotations/`` (+ ``ImageSets/Main/{train,val,test,trainval}.txt``).

    ``train.txt`` (else ``trainval.txt``) is the training split, ``val.txt`` is used only next to
    ``train.txt`` (it is part of ``trainval``), ``test.txt`` is the test split. Without any list,
    every annotated image is a training image (val is held out of them).
    """
    img_dir, ann_dir, sets = root / "JPEGImages", root / "Annotations", root / "ImageSets" / "Main"
    lists = {n: sets / f"{n}.txt" for n in ("train", "val", "test", "trainval")}
    lists = {n: p for n, p in lists.items() if p.is_file()}
    notes: list[str] = []
    if not lists:
        splits = {"train": _pair_folder(img_dir, ann_dir, images_need_xml=True)}
    else:
        if "train" not in lists and "trainval" not in lists:
            raise DataError(
                f"{sets}: has {', '.join(f'{n}.txt' for n in lists)} but no train.txt or "
                f"trainval.txt; add the list of training image ids"
            )
        by_stem = {p.stem: p for p in list_images(img_dir)}
        chosen = {"train": lists["train"] if "train" in lists else lists["trainval"]}
        if "train" in lists and "val" in lists:
            chosen["val"] = lists["val"]
        if "test" in lists:
            chosen["test"] = lists["test"]
        splits = {}
        listed: set[str] = set()
        for split, list_file in chosen.items():
            ids = _read_id_list(list_file)
            listed.update(ids)
            splits[split] = [
                (by_stem.get(i, img_dir / f"{i}.jpg"), ann_dir / f"{i}.xml") for i in ids
            ]
        unused = sorted(set(by_stem) - listed)
        if unused:
            notes.append(
                f"{len(unused)} images in {img_dir} are in no ImageSets/Main list (not read) "
                f"(e.g. {unused[0]})"
            )
    raw = _read(root, "voc", splits, classes)
    raw.notes.extend(notes)
    return raw


def _read_id_list(path: Path) -> list[str]:
    # Main/<class>_train.txt style lines carry a second column; the id is always the first token.
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _pair_folder(img_dir: Path, ann_dir: Path, *, images_need_xml: bool = False) -> list[Item]:
    """Pair images and XMLs by file stem, else by the XML's <filename>; a side may be missing
    (an image alone is kept with zero boxes, an XML alone is reported as a missing image)."""
    images = list_images(img_dir)
    xmls = {p.stem: p for p in sorted(ann_dir.glob("*.xml"))} if ann_dir.is_dir() else {}
    pairs: dict[Path, Path | None] = {}
    stems: set[str] = set()
    for img in images:
        # a.jpg and a.png share the stem "a": only the first gets a.xml, the rest have none.
        pairs[img] = None if img.stem in stems else xmls.get(img.stem)
        stems.add(img.stem)
    by_name = {img.name: img for img, xml in pairs.items() if xml is None}
    orphans: list[Item] = []
    for stem, xml in xmls.items():
        if stem in stems:
            continue
        img = by_name.pop(_filename_tag(xml), None)  # a renamed XML still names its image
        if img is not None:
            pairs[img] = xml
        else:
            orphans.append((None, xml))
    items: list[Item] = [
        (img, xml) for img, xml in pairs.items() if xml is not None or not images_need_xml
    ]
    return items + orphans


def _filename_tag(xml: Path) -> str:
    try:
        return Path((ET.parse(xml).getroot().findtext("filename") or "").strip()).name
    except ET.ParseError:
        return ""  # reported when the XML is read


def _read(
    root: Path,
    layout: str,
    splits: dict[str, list[Item]],
    classes: Sequence[str] | None,
    first: str | None = None,
) -> RawDataset:
    raw = RawDataset(root=root, layout=layout, class_names=[])
    found: set[str] = set()
    for split in SPLIT_ORDER:
        if split not in splits:
            continue
        out = raw.add_split(split)
        for img, xml in splits[split]:
            image = _read_item(img, xml, split, raw)
            if image is None:
                continue
            found.update(b.label for b in image.boxes)
            out.append(image)
    # FloW's bottle comes first when present; a FloW-layout folder with boxes of other classes
    # only has those classes (the report says that it has no bottle). Without any box, the
    # layout's own class (the report says it has no box).
    raw.class_names = list(classes) if classes else ordered_class_names(found, first)
    if not raw.class_names:
        raw.class_names = [first] if first else []
    return raw


def _read_item(img: Path | None, xml: Path | None, split: str, raw: RawDataset) -> RawImage | None:
    """One (image, XML) pair as a RawImage, or None when its annotation file is unusable."""
    raw.count_read(split, images=1)
    if xml is None:
        assert img is not None
        raw.note("images without an annotation file (kept with zero boxes)")
        return RawImage(path=img, source="")
    tree = _parse_annotation(img, xml, split, raw)
    if tree is None:
        return None
    if img is None:
        img = _image_for(xml, (tree.findtext("filename") or "").strip())
    image = RawImage(path=img, source=str(xml), declared_size=_declared_size(tree))
    _read_objects(tree, image, split, raw)
    return image


def _parse_annotation(
    img: Path | None, xml: Path, split: str, raw: RawDataset
) -> ET.Element | None:
    """The root of ``xml``, or None (the image dropped and reported) when the file is missing,
    empty or not valid XML."""
    if not xml.is_file():
        # listed in ImageSets but the XML is missing: the image is unlabelled, not background.
        reason = "annotation file not found"
        _report_unusable(raw, split, "missing_annotation", reason, str(img or ""), xml)
        return None
    text = xml.read_bytes()
    if not text.strip():
        # not "no objects" (that is an <annotation> without <object>): the boxes were lost, and
        # keeping the image would teach its bottles as background
        reason = (
            "annotation file is empty; an image without objects needs an <annotation> "
            "with no <object>"
        )
        shown = str(img or _image_for(xml, ""))
        _report_unusable(raw, split, "empty_annotation", reason, shown, xml)
        return None
    try:
        return ET.fromstring(text)
    except ET.ParseError as e:
        reason = f"annotation file is not valid XML ({e})"
        _report_unusable(raw, split, "unreadable_annotation", reason, str(img or ""), xml)
        return None


def _report_unusable(
    raw: RawDataset, split: str, kind: str, reason: str, image: str, xml: Path
) -> None:
    """Report the image of an unusable annotation file ``xml`` as dropped."""
    raw.issues.append(Issue(split, "dropped image", kind, reason, image=image, source=str(xml)))


def _read_objects(tree: ET.Element, image: RawImage, split: str, raw: RawDataset) -> None:
    """Append the <object>s of ``tree`` to ``image.boxes``; report the malformed ones."""
    objects = tree.findall("object")
    raw.count_read(split, boxes=len(objects))
    for index, obj in enumerate(objects):
        box = _parse_object(obj, index)
        if isinstance(box, str):
            raw.issues.append(
                Issue(
                    split,
                    "dropped box",
                    "malformed_box",
                    box,
                    image=str(image.path),
                    source=image.source,
                    box_index=index,
                )
            )
        else:
            image.boxes.append(box)


def _image_for(xml: Path, filename: str) -> Path:
    """Where the image of an XML with no same-stem image should be: its <filename>, else
    ``<stem>.jpg``, in the sibling image folder (a missing file is reported later, with its boxes).
    """
    folder = "JPEGImages" if xml.parent.name == "Annotations" else "images"
    return xml.parent.parent / folder / (Path(filename).name or f"{xml.stem}.jpg")


def _declared_size(tree: ET.Element) -> tuple[int, int] | None:
    try:
        w = int(float(tree.findtext("size/width") or 0))
        h = int(float(tree.findtext("size/height") or 0))
    except ValueError:
        return None
    # Some tools write 0 when they do not know the size: treat that as "not stated".
    return (w, h) if w > 0 and h > 0 else None


def _parse_object(obj: ET.Element, index: int) -> RawBox | str:
    """A RawBox, or the reason the <object> cannot be used."""
    name = (obj.findtext("name") or "").strip()
    if not name:
        return "<object> has no <name>"
    bnd = obj.find("bndbox")
    if bnd is None:
        return f"<object> '{name}' has no <bndbox>"
    corners = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = bnd.findtext(tag)
        try:
            corners.append(float(text))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return f"<bndbox> <{tag}> is {text!r}, not a number"
    xmin, ymin, xmax, ymax = corners
    try:
        difficult = int(float(obj.findtext("difficult") or 0)) == 1
    except ValueError:
        difficult = False
    return RawBox((xmin - 1, ymin - 1, xmax - xmin, ymax - ymin), name, index, difficult)
