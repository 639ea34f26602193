"""Checking: every bad image and box is dropped, clipped or fixed — and counted and named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.data import DataError, load_dataset
from model.data.validate import fit_box, probe_image
from tests.data_builders import (
    boxes_of,
    coco_doc,
    make_flow,
    make_yolo,
    truncate,
    write_image,
    write_json,
    write_voc_xml,
)

FAST = {"progress": False, "workers": 2}


def kinds(ds) -> list[tuple[str, str, str]]:  # (split, action, kind) of every issue, in order
    return [(i.split, i.action, i.kind) for i in ds.report.issues]


@pytest.mark.parametrize(
    "bbox, expected",
    [
        ((10, 5, 10, 10), ((10.0, 5.0, 10.0, 10.0), "", "")),
        (
            (-10, 40, 20, 18),
            ((0.0, 40.0, 10.0, 8.0), "clipped", "box sticks out of the 64x48 image"),
        ),
        (
            (60, -2, 10, 52),
            ((60.0, 0.0, 4.0, 48.0), "clipped", "box sticks out of the 64x48 image"),
        ),
        ((64, 0, 5, 5), (None, "outside_image", "box lies outside the 64x48 image")),
        ((3, 3, 0, 5), (None, "zero_area", "box has no area (width 0, height 5)")),
        ((3, 3, 4, -1), (None, "zero_area", "box has no area (width 4, height -1)")),
        ((float("nan"), 3, 4, 4), (None, "malformed_box", "box has a non-finite coordinate")),
    ],
)
def test_fit_box(bbox: tuple[float, ...], expected: tuple) -> None:
    assert fit_box(bbox, 64, 48) == expected


def test_probe_image(tmp_path: Path) -> None:
    good = write_image(tmp_path / "good.jpg")
    assert probe_image(good) == (64, 48)
    assert probe_image(write_image(tmp_path / "good.png", w=7, h=5)) == (7, 5)
    cut = truncate(write_image(tmp_path / "cut.jpg"), keep=0.6)
    assert probe_image(cut) == (
        "corrupt_image",
        "truncated JPEG (no end-of-image marker after the last scan)",
    )
    assert probe_image(truncate(write_image(tmp_path / "cut.png"), 0.5))[0] == "corrupt_image"
    (tmp_path / "text.jpg").write_text("not an image at all")
    assert probe_image(tmp_path / "text.jpg")[0] == "corrupt_image"
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert probe_image(tmp_path / "empty.jpg") == ("corrupt_image", "image file is empty (0 bytes)")
    assert probe_image(tmp_path / "nope.jpg") == ("missing_image", "image file not found")


def _flow_with_problems(root: Path) -> Path:
    make_flow(
        root,
        train={
            "ok": [("bottle", 11, 6, 21, 16)],
            "cut": [("bottle", 1, 1, 5, 5), ("bottle", 2, 2, 6, 6)],  # corrupt image: both boxes go
            "edge": [
                ("bottle", -9, 41, 11, 59),  # sticks out: clipped
                ("bottle", 101, 1, 111, 11),  # wholly outside: dropped
                ("bottle", 11, 11, 11, 21),  # zero width: dropped
                ("can", 2, 2, 6, 6),
            ],  # unknown when classes=["bottle"]
        },
        test={"t": [("bottle", 5, 5, 9, 9)]},
    )
    truncate(root / "training" / "images" / "cut.jpg")
    # an XML whose image is missing; an empty XML; an XML that does not parse
    write_voc_xml(root / "training" / "annotations" / "ghost.xml", [("bottle", 1, 1, 3, 3)])
    write_image(root / "training" / "images" / "blank.jpg", seed=5)
    (root / "training" / "annotations" / "blank.xml").write_text("")
    write_image(root / "training" / "images" / "broken.jpg", seed=6)
    (root / "training" / "annotations" / "broken.xml").write_text("<annotation><object>")
    return root


def test_problems_are_dropped_clipped_and_counted(tmp_path: Path) -> None:
    ds = load_dataset(_flow_with_problems(tmp_path), classes=["bottle"], val_fraction=0, **FAST)
    train = tmp_path / "training"
    assert sorted(kinds(ds)) == sorted(
        [
            ("train", "dropped image", "unreadable_annotation"),
            ("train", "dropped image", "corrupt_image"),
            ("train", "clipped box", "clipped"),
            ("train", "dropped box", "outside_image"),
            ("train", "dropped box", "zero_area"),
            ("train", "dropped box", "excluded_class"),
            ("train", "dropped image", "missing_image"),
            ("train", "dropped image", "empty_annotation"),
        ]
    )
    assert boxes_of(ds.train) == {  # an empty XML lost its boxes: its image is not background
        "edge.jpg": [("bottle", [0.0, 40.0, 10.0, 8.0])],
        "ok.jpg": [("bottle", [10.0, 5.0, 10.0, 10.0])],
    }
    by_kind = {i.kind: i for i in ds.report.issues}
    clip = by_kind["clipped"]
    assert (clip.box_index, clip.bbox, clip.new_bbox) == (
        0,
        (-10.0, 40.0, 20.0, 18.0),
        (0.0, 40.0, 10.0, 8.0),
    )
    assert clip.image == str(train / "images" / "edge.jpg")
    assert clip.source == str(train / "annotations" / "edge.xml")
    assert (by_kind["outside_image"].box_index, by_kind["zero_area"].box_index) == (1, 2)
    # left out on purpose (classes=["bottle"]): dropped and counted, but not a problem
    assert by_kind["excluded_class"].reason == (
        "class 'can' is not among the chosen classes (bottle)"
    )
    assert len(ds.report.issues) == 8 and len(ds.report.problems) == 7
    assert by_kind["corrupt_image"].n_boxes == 2
    missing = by_kind["missing_image"]
    assert (missing.image, missing.n_boxes) == (str(train / "images" / "ghost.jpg"), 1)
    assert by_kind["unreadable_annotation"].source == str(train / "annotations" / "broken.xml")
    empty = by_kind["empty_annotation"]
    assert (empty.image, empty.source) == (
        str(train / "images" / "blank.jpg"),
        str(train / "annotations" / "blank.xml"),
    )
    assert empty.reason.startswith("annotation file is empty;")
    s = ds.report.splits["train"]
    # read: 6 images (ok, cut, edge, blank, broken, ghost); boxes 1 + 2 + 4 + 1 = 8
    assert (s.images_read, s.boxes_read) == (6, 8)
    assert (s.images, s.boxes, s.images_dropped, s.boxes_dropped, s.boxes_clipped) == (
        2,
        2,
        4,
        6,
        1,
    )
    assert s.accounted and ds.report.splits["test"].accounted
    assert ds.report.splits["test"].boxes == 1
    assert not any("empty annotation" in n for n in ds.report.notes)


def test_report_text_and_dict_name_files_and_boxes(tmp_path: Path) -> None:
    report = load_dataset(
        _flow_with_problems(tmp_path), classes=["bottle"], val_fraction=0, **FAST
    ).report
    text = report.format(max_issues=None)
    assert "layout flow" in text and "1 class: bottle" in text
    assert (
        "clipped box 0 [-10, 40, 20, 18] -> [0, 40, 10, 8] of "
        f"{tmp_path / 'training/images/edge.jpg'}"
    ) in text
    assert f"dropped image {tmp_path / 'training/images/cut.jpg'}" in text
    assert "(2 boxes dropped with it)" in text
    assert "dropped box: zero_area: 0 images, 1 box" in text
    assert "Problems (2 of 7 shown)" in report.format(max_issues=2)
    assert "dropped box: excluded_class: 0 images, 1 box" in text
    assert "  can: 1 box in 1 file (training/annotations/edge.xml); 0 kept (not among the " \
        "chosen classes)" in text
    d = json.loads(json.dumps(report.to_dict()))
    assert d["splits"]["train"]["boxes_dropped"] == 6 and d["splits"]["train"]["accounted"]
    assert d["reasons"]["dropped image: corrupt_image"] == {"images": 1, "boxes": 2}
    assert len(d["issues"]) == 8 and d["issues"][0]["split"] == "train"
    assert "dropped 4 images and 6 boxes, clipped 1 box" in report.summary()


def test_strict_raises_listing_every_problem(tmp_path: Path) -> None:
    _flow_with_problems(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path, classes=["bottle"], strict=True, **FAST)
    text = str(err.value)
    assert "7 problems (strict=True" in text and "'can'" not in text
    for name in (
        "cut.jpg",
        "blank.xml",
        "ghost.jpg",
        "broken.xml",
        "edge.jpg",
        "box has no area",
        "lies outside",
        "sticks out",
    ):
        assert name in text


def test_strict_passes_clean_data(tmp_path: Path) -> None:
    make_flow(tmp_path, train={"a": [("bottle", 2, 2, 6, 6)]}, test={"b": []})
    assert load_dataset(tmp_path, strict=True, **FAST).report.ok


def test_voc_malformed_object_size_mismatch_and_difficult(tmp_path: Path) -> None:
    make_flow(tmp_path, train={"a": []}, test={"b": []})
    write_voc_xml(
        tmp_path / "training/annotations/a.xml",
        [("bottle", "abc", 1, 5, 5), ("bottle", 1, 1, 5, 5, 1)],
        size=(100, 80),
    )
    ds = load_dataset(tmp_path, **FAST)
    assert kinds(ds) == [
        ("train", "dropped box", "malformed_box"),
        ("train", "fixed", "size_mismatch"),
    ]
    assert ds.report.issues[0].reason == "<bndbox> <xmin> is 'abc', not a number"
    assert ds.report.issues[1].reason.startswith("annotation says 100x80, the image is 64x48")
    assert ds.report.splits["train"].difficult == 1
    assert boxes_of(ds.train) == {"a.jpg": [("bottle", [0.0, 0.0, 4.0, 4.0])]}


def test_yolo_unknown_class_index_bad_line_and_empty_label(tmp_path: Path) -> None:
    make_yolo(
        tmp_path,
        {
            "train": {"a": ["5 0.5 0.5 0.1 0.1", "0 0.5 0.5", "0 0.5 0.5 2 2"], "b": []},
            "val": {"c": ["0 0.5 0.5 0.5 0.5"]},
        },
        names=["bottle"],
    )
    ds = load_dataset(tmp_path, **FAST)
    assert kinds(ds) == [
        ("train", "dropped box", "unknown_class"),
        ("train", "dropped box", "malformed_box"),
        ("train", "clipped box", "clipped"),
    ]
    assert ds.report.issues[0].reason == "class index 5 is not one of 0..0 (names: bottle)"
    assert ds.report.issues[0].box_index == 0 and ds.report.issues[1].box_index == 1
    assert ds.report.issues[2].bbox == (-32.0, -24.0, 128.0, 96.0)
    assert boxes_of(ds.train) == {"a.png": [("bottle", [0.0, 0.0, 64.0, 48.0])], "b.png": []}
    assert ds.report.splits["train"].empty_images == 1


def test_coco_duplicate_ids_files_crowd_and_unknown_refs(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        write_image(tmp_path / "images" / f"{name}.jpg")
    doc = coco_doc(
        [
            (1, "images/a.jpg"),
            (2, "images/b.jpg"),
            (2, "images/c.jpg"),
            (3, "images/a.jpg"),
            (4, "images/d.jpg"),
        ],
        [
            (10, 1, 1, [1, 1, 4, 4]),
            (10, 1, 1, [2, 2, 4, 4]),  # duplicate annotation id: dropped
            (11, 2, 1, [1, 1, 4, 4]),  # image id 2 is used twice: dropped with both images
            (12, 3, 1, [1, 1, 4, 4]),  # image 3 repeats a.jpg: dropped with it
            (13, 9, 1, [1, 1, 4, 4]),  # no image 9
            (14, 4, 5, [1, 1, 4, 4]),  # no category 5
            (15, 4, 1, [1, 1, 4]),
        ],  # malformed bbox
        [(1, "bottle")],
    )
    doc["annotations"].append(
        {"id": 16, "image_id": 4, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1}
    )
    write_json(tmp_path / "train.json", doc)
    write_json(tmp_path / "test.json", coco_doc([(1, "images/d.jpg")], [], [(1, "bottle")]))
    ds = load_dataset(tmp_path, val_fraction=0, **FAST)
    assert kinds(ds) == [
        ("train", "dropped image", "duplicate_image_id"),
        ("train", "dropped image", "duplicate_image_id"),
        ("train", "dropped box", "duplicate_annotation_id"),
        ("train", "dropped box", "duplicate_image_id"),
        ("train", "dropped box", "unknown_image_id"),
        ("train", "dropped box", "unknown_class"),
        ("train", "dropped box", "malformed_box"),
        ("train", "dropped box", "crowd"),
        ("train", "dropped image", "duplicate_file"),  # image 3 = a.jpg again
        ("test", "dropped image", "duplicate_file"),  # d.jpg is in train already
    ]
    assert boxes_of(ds.train) == {"a.jpg": [("bottle", [1.0, 1.0, 4.0, 4.0])], "d.jpg": []}
    assert ds.report.issues[0].reason == "image id 2 is used by 2 images"
    assert ds.report.issues[2].reason == "annotation id 10 is used twice (this one dropped)"
    assert ds.report.issues[8].reason == "same file as an image already in split 'train'"
    assert ds.report.issues[8].n_boxes == 1
    s = ds.report.splits["train"]
    assert (s.images_read, s.boxes_read, s.images, s.boxes) == (5, 8, 2, 1)
    assert s.accounted
    ids = [im["id"] for im in ds.train.images]
    assert ids == [1, 2]  # fresh, unique ids


def test_area_histogram_uses_coco_ranges(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "big.png", w=128, h=128)
    boxes = [
        [0, 0, 31, 33],  # 1023: small
        [0, 0, 32, 32],  # 1024: medium
        [0, 0, 96, 96],  # 9216: medium (large is > 96²)
        [0, 0, 97, 96],  # 9312: large
        [100, 100, 40, 40],
    ]  # clipped to 28x28 = 784: small
    write_json(
        tmp_path / "train.json",
        coco_doc(
            [(1, "images/big.png")], [(i + 1, 1, 1, b) for i, b in enumerate(boxes)], [(1, "x")]
        ),
    )
    s = load_dataset(tmp_path, val_fraction=0, **FAST).report.splits["train"]
    assert (s.small, s.medium, s.large, s.boxes_clipped) == (2, 2, 1, 1)


def test_voc_listed_id_without_xml_is_dropped(tmp_path: Path) -> None:
    write_image(tmp_path / "JPEGImages" / "a.jpg")
    write_image(tmp_path / "JPEGImages" / "b.jpg", seed=1)
    write_voc_xml(tmp_path / "Annotations" / "a.xml", [("dog", 1, 1, 5, 5)])
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("a\n")
    ds = load_dataset(tmp_path, **FAST)
    assert kinds(ds) == [
        ("train", "dropped image", "missing_annotation"),
        ("test", "dropped image", "duplicate_file"),
    ]
    assert ds.report.issues[0].source == str(tmp_path / "Annotations" / "b.xml")
    assert boxes_of(ds.train) == {"a.jpg": [("dog", [0.0, 0.0, 4.0, 4.0])]}
    assert ds.splits["test"].num_images == 0


def test_empty_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no dataset path given"):
        load_dataset("")


# --- issue 14: every class is named with its boxes and files; nothing is invented ---


def _flow_with_a_can(root: Path) -> Path:
    return make_flow(
        root,
        train={
            "a": [("bottle", 2, 2, 6, 6), ("can", 10, 10, 20, 20)],
            "b": [("bottle", 3, 3, 9, 9)],
            "c": [("can", 30, 5, 40, 15), ("can", 2, 20, 8, 30)],
        },
        test={"t": [("bottle", 5, 5, 9, 9)]},
    )


def test_a_class_flow_does_not_have_is_named_with_its_files(tmp_path: Path) -> None:
    ds = load_dataset(_flow_with_a_can(tmp_path), **FAST)
    report = ds.report
    assert ds.class_names == ["bottle", "can"] and report.ok
    can = report.classes["can"]
    assert (can.boxes, can.files, can.kept) == (3, 2, 3)
    assert can.examples == ["training/annotations/a.xml", "training/annotations/c.xml"]
    assert (report.classes["bottle"].boxes, report.classes["bottle"].files) == (3, 3)
    assert report.warnings == [
        "class can: 3 boxes in 2 files (training/annotations/a.xml, training/annotations/c.xml) "
        "is not a FloW class (the layout has bottle); to keep only bottle: --classes bottle "
        "(trial config: classes: bottle)"
    ]
    text = report.format()
    assert (
        "  bottle: 3 boxes in 3 files (training/annotations/a.xml, training/annotations/b.xml, "
        "test/annotations/t.xml); 3 kept"
    ) in text
    assert "Warnings:\n  class can: 3 boxes in 2 files" in text
    assert report.to_dict()["classes"]["can"]["boxes"] == 3


def test_chosen_classes_drop_the_rest_counted_but_not_as_problems(tmp_path: Path) -> None:
    ds = load_dataset(_flow_with_a_can(tmp_path), classes=["bottle"], strict=True, **FAST)
    report = ds.report
    assert ds.class_names == ["bottle"] and report.ok and report.warnings == []
    assert [(i.kind, Path(i.source).name, i.box_index) for i in report.issues] == [
        ("excluded_class", "a.xml", 1), ("excluded_class", "c.xml", 0),
        ("excluded_class", "c.xml", 1),
    ]
    assert report.reason_counts() == {"dropped box: excluded_class": {"images": 0, "boxes": 3}}
    assert report.splits["train"].boxes_dropped == 3 and report.splits["train"].accounted
    assert report.classes["can"].kept == 0 and report.classes["bottle"].kept == 3
    text = report.format()
    assert "; 0 kept (not among the chosen classes)" in text
    assert "No problems: only the boxes of classes left out were dropped." in text


def test_flow_layout_of_other_classes_has_no_invented_bottle(tmp_path: Path) -> None:
    make_flow(tmp_path, train={"a": [("human", 2, 2, 6, 6)], "b": [("boat", 3, 3, 30, 30)]})
    ds = load_dataset(tmp_path, val_fraction=0, **FAST)
    assert ds.class_names == ["boat", "human"]
    assert ds.report.warnings == [
        "no box of class bottle in this FloW-layout dataset: its classes are the ones found "
        "(boat: 1 box in 1 file (training/annotations/b.xml); human: 1 box in 1 file "
        "(training/annotations/a.xml)); train them with num_classes: 2, or keep some with "
        "--classes NAME,... (trial config: classes: NAME,...)"
    ]


def test_a_class_of_no_box_is_said(tmp_path: Path) -> None:
    make_flow(tmp_path, train={"a": [], "b": []})
    ds = load_dataset(tmp_path, val_fraction=0, **FAST)
    assert ds.class_names == ["bottle"]  # FloW's own class, even without a box
    assert ds.report.warnings == [
        "1 class of the dataset has no box: bottle (a detector trained on it never sees one)"
    ]
    make_yolo(tmp_path / "y", {"train": {"a": ["1 0.5 0.5 0.5 0.5"]}},
              names=["bottle", "can", "cup"])
    report = load_dataset(tmp_path / "y", val_fraction=0, **FAST).report
    assert report.warnings == [
        "2 classes of the dataset have no box: bottle, cup (a detector trained on it never "
        "sees one)"
    ]


def test_class_description_says_when_not_every_file_is_named() -> None:
    from model.data.validate import ClassStats

    c = ClassStats(boxes=9, files=4, kept=9, examples=["a.xml", "b.xml", "c.xml"])
    assert c.describe("bottle") == "bottle: 9 boxes in 4 files (e.g. a.xml, b.xml, c.xml)"
    assert ClassStats().describe("cup") == "cup: 0 boxes in 0 files"
