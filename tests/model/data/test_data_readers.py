"""Layout detection and the four readers: exact boxes, class order, splits, COCO export."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from model.data import DataError, load_dataset
from model.data.raw import hash_split
from model.data.readers import detect_layout
from model.data.yolo_txt import label_path
from tests.data_builders import (
    boxes_of,
    coco_doc,
    make_flow,
    make_voc_folder,
    make_yolo,
    write_image,
    write_json,
    write_voc_xml,
)

FAST = {"progress": False, "workers": 2}


def test_flow_layout_exact_boxes_bottle_first_and_difficult(tmp_path: Path) -> None:
    # VOC corners are 1-based (official YOLOX reader): x = xmin - 1, w = xmax - xmin.
    make_flow(
        tmp_path,
        train={
            "a": [("bottle", 11, 6, 21, 16)],
            "b": [("bottle", 1, 1, 5, 9, 1), ("aaa", 30, 20, 40, 30), ("can", 2, 2, 4, 4)],
        },
        test={"c": [("bottle", 51, 31, 61, 41)], "d": []},
    )
    ds = load_dataset(tmp_path, val_fraction=0, **FAST)  # (the hold-out: its own tests below)
    assert ds.layout == "flow"
    assert list(ds.splits) == ["train", "test"]
    assert ds.class_names == ["bottle", "aaa", "can"]  # bottle first, then sorted
    assert boxes_of(ds.train) == {
        "a.jpg": [("bottle", [10.0, 5.0, 10.0, 10.0])],
        "b.jpg": [
            ("bottle", [0.0, 0.0, 4.0, 8.0]),
            ("aaa", [29.0, 19.0, 10.0, 10.0]),
            ("can", [1.0, 1.0, 2.0, 2.0]),
        ],
    }
    assert ds.test_split is not None and ds.test_split.name == "test"
    assert boxes_of(ds.test_split) == {"c.jpg": [("bottle", [50.0, 30.0, 10.0, 10.0])], "d.jpg": []}
    assert ds.report.ok
    assert ds.report.splits["train"].difficult == 1  # kept, and counted
    assert ds.report.splits["test"].empty_images == 1
    im = ds.train.images[0]
    assert im == {
        "id": 1,
        "file_name": str((tmp_path / "training/images/a.jpg").resolve()),
        "width": 64,
        "height": 48,
    }
    a = ds.train.annotations[0]
    assert a == {
        "id": 1,
        "image_id": 1,
        "category_id": 1,
        "bbox": [10.0, 5.0, 10.0, 10.0],
        "area": 100.0,
        "iscrowd": 0,
    }


def test_flow_without_test_folder_holds_out_val(tmp_path: Path) -> None:
    make_flow(tmp_path, train={f"im{i}": [("bottle", 2, 2, 6, 6)] for i in range(5)})
    ds = load_dataset(tmp_path, val_fraction=0.2, **FAST)
    assert (ds.train.num_images, ds.splits["val"].num_images) == (4, 1)
    assert ds.val_split.name == "val" and ds.val_held_out
    assert ds.test_split is None
    assert ds.class_names == ["bottle"]


def test_voc_imagesets_splits_and_unlisted_images(tmp_path: Path) -> None:
    items = {
        "a": [("dog", 1, 1, 11, 11)],
        "b": [("cat", 5, 5, 9, 9)],
        "c": [("dog", 2, 3, 4, 5)],
        "d": [("cat", 1, 1, 2, 2)],
        "e": [],
    }
    make_voc_folder(tmp_path / "JPEGImages", tmp_path / "Annotations", items)
    sets = tmp_path / "ImageSets" / "Main"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("a\nb\n")
    (sets / "val.txt").write_text("c\n")
    (sets / "test.txt").write_text("d\n")
    (sets / "trainval.txt").write_text("a\nb\nc\n")
    ds = load_dataset(tmp_path, **FAST)
    assert ds.layout == "voc"
    assert ds.class_names == ["cat", "dog"]  # sorted
    assert {n: sorted(boxes_of(s)) for n, s in ds.splits.items()} == {
        "train": ["a.jpg", "b.jpg"],
        "val": ["c.jpg"],
        "test": ["d.jpg"],
    }
    assert boxes_of(ds.splits["val"]) == {"c.jpg": [("dog", [1.0, 2.0, 2.0, 2.0])]}
    assert ds.val_split.name == "val" and not ds.val_held_out  # the layout's own val.txt
    assert ds.test_split is not None and ds.test_split.name == "test"
    assert any("1 images in" in n and "no ImageSets/Main list" in n for n in ds.report.notes)


def test_voc_trainval_only_becomes_train(tmp_path: Path) -> None:
    make_voc_folder(
        tmp_path / "JPEGImages",
        tmp_path / "Annotations",
        {"a": [("dog", 1, 1, 5, 5)], "b": [], "c": []},
    )
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\n")
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("c\n")
    ds = load_dataset(tmp_path, val_fraction=0, **FAST)
    assert sorted(boxes_of(ds.train)) == ["a.jpg", "b.jpg"]
    assert list(ds.splits) == ["train", "test"]
    held = load_dataset(tmp_path, **FAST)  # no val.txt: val is held out of trainval
    assert list(held.splits) == ["train", "val", "test"] and held.val_held_out
    assert sorted([*boxes_of(held.train), *boxes_of(held.val_split)]) == ["a.jpg", "b.jpg"]


def test_voc_imagesets_without_train_list_is_an_error(tmp_path: Path) -> None:
    make_voc_folder(tmp_path / "JPEGImages", tmp_path / "Annotations", {"a": []})
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("a\n")
    with pytest.raises(DataError, match="has val.txt but no train.txt or trainval.txt"):
        load_dataset(tmp_path, **FAST)


def test_flat_voc_split_is_deterministic_by_seed(tmp_path: Path) -> None:
    make_voc_folder(
        tmp_path / "images",
        tmp_path / "annotations",
        {f"im{i:02d}": [("bottle", 1, 1, 5, 5)] for i in range(10)},
    )
    vals = []
    for seed in range(4):
        ds = load_dataset(tmp_path, val_fraction=0.2, split_seed=seed, **FAST)
        assert ds.layout == "voc"
        assert (ds.train.num_images, ds.splits["val"].num_images) == (8, 2)
        vals.append(sorted(boxes_of(ds.splits["val"])))
    again = load_dataset(tmp_path, val_fraction=0.2, split_seed=0, **FAST)
    assert sorted(boxes_of(again.splits["val"])) == vals[0]
    assert len({tuple(v) for v in vals}) > 1  # the seed matters
    ds0 = load_dataset(tmp_path, val_fraction=0.0, **FAST)
    assert list(ds0.splits) == ["train"]
    with pytest.raises(DataError, match="no validation split .* val_fraction is 0; set "
                       "val_fraction > 0"):
        _ = ds0.val_split


def test_hash_split_ignores_listing_order() -> None:
    keys = [f"images/{i}.jpg" for i in range(50)]
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    assert hash_split(keys, 0.2, seed=3) == hash_split(shuffled, 0.2, seed=3)
    assert hash_split(keys, 0.2, seed=3) != hash_split(keys, 0.2, seed=4)
    assert len(hash_split(keys, 0.2, seed=3)) == 10
    assert len(hash_split(keys[:3], 0.01, seed=0)) == 1  # at least one when the fraction > 0
    assert hash_split(keys[:1], 0.5, seed=0) == set()  # never the only image


def test_coco_instances_layout_remaps_category_ids(tmp_path: Path) -> None:
    for split in ("train2017", "val2017"):
        write_image(tmp_path / split / "x.jpg")
        write_image(tmp_path / split / "y.jpg", seed=1)
    cats = [(7, "can"), (3, "bottle")]  # non-contiguous, not sorted
    write_json(
        tmp_path / "annotations" / "instances_train2017.json",
        coco_doc(
            [(10, "x.jpg"), (11, "y.jpg")],
            [(100, 10, 3, [1.5, 2.0, 10.0, 5.0]), (101, 11, 7, [0, 0, 64, 48])],
            cats,
        ),
    )
    write_json(
        tmp_path / "annotations" / "instances_val2017.json",
        coco_doc([(5, "x.jpg")], [(1, 5, 7, [3, 4, 5, 6])], cats),
    )
    ds = load_dataset(tmp_path, **FAST)
    assert ds.layout == "coco"
    assert ds.class_names == ["bottle", "can"]  # category id order
    assert [c["id"] for c in ds.train.categories] == [1, 2]
    assert boxes_of(ds.train) == {
        "x.jpg": [("bottle", [1.5, 2.0, 10.0, 5.0])],
        "y.jpg": [("can", [0.0, 0.0, 64.0, 48.0])],
    }
    assert ds.splits["val"].images[0]["file_name"] == str(tmp_path / "val2017" / "x.jpg")
    assert boxes_of(ds.splits["val"]) == {"x.jpg": [("can", [3.0, 4.0, 5.0, 6.0])]}


def test_coco_split_files_next_to_images(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png")
    write_image(tmp_path / "elsewhere" / "b.png", seed=2)
    cats = [(1, "bottle")]
    write_json(
        tmp_path / "train.json", coco_doc([(1, "images/a.png")], [(1, 1, 1, [4, 4, 8, 8])], cats)
    )
    write_json(
        tmp_path / "test.json", coco_doc([(1, str(tmp_path / "elsewhere" / "b.png"))], [], cats)
    )
    ds = load_dataset(tmp_path, **FAST)
    assert list(ds.splits) == ["train", "test"]  # one training image: nothing to hold out
    assert boxes_of(ds.train) == {"a.png": [("bottle", [4.0, 4.0, 8.0, 8.0])]}
    assert ds.test_split is not None and boxes_of(ds.test_split) == {"b.png": []}
    with pytest.raises(DataError, match="only 1 training image"):
        _ = ds.val_split


def test_coco_single_json_file_as_source(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png")
    path = write_json(
        tmp_path / "val.json", coco_doc([(1, "a.png")], [(1, 1, 1, [1, 1, 2, 2])], [(1, "bottle")])
    )
    ds = load_dataset(path, **FAST)
    assert list(ds.splits) == ["val"]


def test_yolo_data_yaml_normalised_to_pixels(tmp_path: Path) -> None:
    make_yolo(
        tmp_path,
        {
            "train": {
                "a": ["0 0.5 0.5 0.25 0.5", "1 0.25 0.25 0.5 0.25 0.5 0.75 0.25 0.75"],
                "b": [],
            },
            "val": {"c": ["1 0.125 0.25 0.25 0.5"]},
        },
        names={0: "bottle", 1: "can"},
    )
    ds = load_dataset(tmp_path, **FAST)
    assert ds.layout == "yolo"
    assert ds.class_names == ["bottle", "can"]
    # 64x48: cx 0.5 w 0.25 -> x 24 w 16; cy 0.5 h 0.5 -> y 12 h 24; the polygon's bounding box.
    assert boxes_of(ds.train) == {
        "a.png": [("bottle", [24.0, 12.0, 16.0, 24.0]), ("can", [16.0, 12.0, 16.0, 24.0])],
        "b.png": [],
    }
    assert boxes_of(ds.splits["val"]) == {"c.png": [("can", [0.0, 0.0, 16.0, 24.0])]}
    assert any("empty label files" in n for n in ds.report.notes)


def test_yolo_yaml_list_file_and_foreign_path(tmp_path: Path) -> None:
    make_yolo(tmp_path, {"train": {"a": ["0 0.5 0.5 0.5 0.5"]}, "val": {"b": []}}, names=None)
    (tmp_path / "train.txt").write_text("./images/train/a.png\n")
    doc = {
        "path": "/nonexistent/machine/path",
        "train": "train.txt",
        "val": "images/val",
        "names": ["bottle"],
    }
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(doc))
    ds = load_dataset(tmp_path / "data.yaml", **FAST)
    assert boxes_of(ds.train) == {"a.png": [("bottle", [16.0, 12.0, 32.0, 24.0])]}
    assert list(ds.splits) == ["train", "val"]


def test_yolo_folders_with_classes_txt(tmp_path: Path) -> None:
    make_yolo(tmp_path, {"train": {"a": ["0 0.5 0.5 0.5 0.5"]}}, names=None)
    with pytest.raises(DataError, match="no class names.*data.yaml.*classes.txt"):
        load_dataset(tmp_path, **FAST)
    (tmp_path / "classes.txt").write_text("bottle\n")
    ds = load_dataset(tmp_path, val_fraction=0.0, **FAST)
    assert ds.layout == "yolo" and ds.class_names == ["bottle"]


@pytest.mark.parametrize(
    "names, message",
    [
        ({0: "a", 2: "b"}, "key 'names' must map 0..1"),
        ("bottle", "key 'names' must be a non-empty list"),
    ],
)
def test_yolo_bad_names_name_the_key_and_file(tmp_path: Path, names: object, message: str) -> None:
    make_yolo(tmp_path, {"train": {"a": []}}, names=names)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(tmp_path, **FAST)
    assert "data.yaml" in str(err.value)


def test_yolo_missing_split_folder_is_named(tmp_path: Path) -> None:
    make_yolo(
        tmp_path,
        {"train": {"a": []}},
        yaml_doc={"train": "images/train", "val": "images/nope", "names": ["x"]},
    )
    with pytest.raises(DataError, match="key 'val' points to .*images/nope"):
        load_dataset(tmp_path, **FAST)


def test_label_path_rule() -> None:
    assert label_path(Path("/d/images/train/images/a.jpg")) == Path("/d/images/train/labels/a.txt")
    assert label_path(Path("/d/x/a.png")) == Path("/d/x/a.txt")


def test_unrecognised_folder_lists_every_layout(tmp_path: Path) -> None:
    (tmp_path / "pictures").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path)
    text = str(err.value)
    assert "unrecognised dataset layout" in text and "found: notes.txt, pictures/" in text
    for expected in (
        "flow",
        "training/{images,annotations}",
        "JPEGImages/",
        "Annotations/",
        "instances_{train,val}",
        "train.json",
        "data.yaml",
        "labels/{train,val}",
    ):
        assert expected in text
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "missing")


def test_to_coco_dict_loads_in_pycocotools_and_scores_itself_perfectly(tmp_path: Path) -> None:
    make_flow(
        tmp_path,
        train={"a": [("bottle", 11, 6, 21, 16)]},
        test={"c": [("bottle", 11, 11, 51, 41), ("can", 2, 2, 30, 30)], "d": []},
    )
    split = load_dataset(tmp_path, **FAST).test_split
    assert split is not None
    doc = split.to_coco_dict()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    gt = COCO(str(path))
    assert sorted(gt.getImgIds()) == [1, 2] and gt.loadCats([2])[0]["name"] == "can"
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in split.annotations
    ]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    # the split itself is not changed by what pycocotools does with the copy
    assert split.annotations_by_image() == {1: split.annotations, 2: []}


def test_voc_xml_with_another_stem_pairs_by_filename(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "photo.jpg")
    write_image(tmp_path / "images" / "other.jpg", seed=1)
    write_voc_xml(
        tmp_path / "annotations" / "label1.xml", [("bottle", 2, 2, 5, 5)], filename="photo.jpg"
    )
    ds = load_dataset(tmp_path, val_fraction=0, **FAST)
    assert ds.report.ok
    assert boxes_of(ds.train) == {"photo.jpg": [("bottle", [1.0, 1.0, 3.0, 3.0])], "other.jpg": []}
    assert "1 images without an annotation file (kept with zero boxes)" in ds.report.notes


# --- issue 14: YOLO exports as Ultralytics and Roboflow write them ---


def _yolo_image(img: Path, label: Path, lines: list[str], seed: int = 0) -> None:
    write_image(img, seed=seed)  # 64x48
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("".join(line + "\n" for line in lines))


def test_roboflow_export_with_parent_relative_splits(tmp_path: Path, monkeypatch) -> None:
    # Roboflow: data.yaml next to train/ valid/ test/, each with images/ and labels/, entries
    # written relative to a folder above the YAML
    root = tmp_path / "bottles.v2i.yolov8"
    for split, stems in (("train", ["a", "b"]), ("valid", ["c"]), ("test", ["d"])):
        for i, stem in enumerate(stems):
            _yolo_image(root / split / "images" / f"{stem}.jpg",
                        root / split / "labels" / f"{stem}.txt", [f"{i % 2} 0.5 0.5 0.25 0.5"], i)
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 2\n"
        "names: ['bottle', 'can']\n\nroboflow:\n  workspace: w\n  version: 2\n"
    )
    monkeypatch.chdir(tmp_path)
    ds = load_dataset(root, **FAST)
    assert ds.layout == "yolo" and ds.class_names == ["bottle", "can"]
    assert {n: s.num_images for n, s in ds.splits.items()} == {"train": 2, "val": 1, "test": 1}
    assert boxes_of(ds.train) == {
        "a.jpg": [("bottle", [24.0, 12.0, 16.0, 24.0])],
        "b.jpg": [("can", [24.0, 12.0, 16.0, 24.0])],
    }
    assert boxes_of(ds.splits["test"]) == {"d.jpg": [("bottle", [24.0, 12.0, 16.0, 24.0])]}
    assert ds.report.ok and ds.root == root


def test_ultralytics_export_with_yaml_in_labels_and_a_datasets_dir_path(
    tmp_path: Path, monkeypatch
) -> None:
    # Ultralytics: images/{train,val} + labels/{train,val}; here the YAML sits in labels/ and
    # path: is relative to the exporting machine's datasets folder
    root = tmp_path / "coco8"
    items = (("train", "a", "1 0.5 0.5 0.5 0.5"), ("val", "b", "0 0.25 0.5 0.5 1"))
    for split, stem, line in items:
        _yolo_image(root / "images" / split / f"{stem}.png",
                    root / "labels" / split / f"{stem}.txt", [line])
    (root / "labels" / "data.yaml").write_text(
        "path: ../datasets/coco8\ntrain: images/train\nval: images/val\ntest:\n"
        "names:\n  0: person\n  1: bottle\n"
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert detect_layout(root) == "yolo"
    for src in (root, root / "labels" / "data.yaml"):
        ds = load_dataset(src, **FAST)
        assert ds.class_names == ["person", "bottle"] and ds.root == root
        assert {n: s.num_images for n, s in ds.splits.items()} == {"train": 1, "val": 1}
        assert boxes_of(ds.train) == {"a.png": [("bottle", [16.0, 12.0, 32.0, 24.0])]}
        assert boxes_of(ds.splits["val"]) == {"b.png": [("person", [0.0, 0.0, 32.0, 48.0])]}
    # run from where Ultralytics' datasets folder would be, path: is taken as given
    other = tmp_path / "run" / "datasets" / "coco8"
    _yolo_image(other / "images" / "train" / "z.png", other / "labels" / "train" / "z.txt", [])
    (other / "images" / "val").mkdir()
    monkeypatch.chdir(tmp_path / "run" / "datasets")
    assert load_dataset(root / "labels" / "data.yaml", **FAST).root == other


def test_yolo_yaml_that_resolves_nowhere_names_every_place_tried(
    tmp_path: Path, monkeypatch
) -> None:
    root = tmp_path / "export"
    _yolo_image(root / "pics" / "a.png", root / "pics" / "a.txt", [])
    (root / "labels").mkdir()
    (root / "labels" / "data.yaml").write_text(
        "path: ../datasets/coco8\ntrain: images/train\nnames: [bottle]\n"
    )
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(DataError) as err:
        load_dataset(root, **FAST)
    tried = [root / "datasets/coco8/images/train", tmp_path / "datasets/coco8/images/train",
             root / "labels/images/train", root / "images/train"]
    assert str(err.value) == (
        f"{root / 'labels' / 'data.yaml'}: key 'train' points to 'images/train', which is in none "
        f"of the dataset roots tried for path: '../datasets/coco8' (tried "
        f"{', '.join(map(str, tried))}); set path: in the YAML to the dataset folder (absolute, "
        "or relative to the YAML)"
    )


def test_yolo_nc_must_agree_with_names(tmp_path: Path) -> None:
    make_yolo(tmp_path, {"train": {"a": []}},
              yaml_doc={"train": "images/train", "nc": 3, "names": ["a", "b"]})
    with pytest.raises(DataError, match="key 'nc' is 3 but 'names' lists 2 classes"):
        load_dataset(tmp_path, **FAST)


def test_hash_split_divides_the_hold_out_between_strata_by_largest_remainder() -> None:
    """10 keys, 7 in stratum A and 3 in B, val_fraction 0.2: round(10 · 0.2) = 2 go to val.
    Exact shares: A 7 · 2 / 10 = 1.4, B 3 · 2 / 10 = 0.6 → floors 1 and 0, and the one left
    goes to the largest remainder, B's 0.6: one image of each stratum (unstratified, both
    could come from A)."""
    keys = [f"a{i}" for i in range(7)] + [f"b{i}" for i in range(3)]
    strata = {k: k[0] for k in keys}
    for seed in range(20):
        val = hash_split(keys, 0.2, seed=seed, strata=strata)
        assert sorted(k[0] for k in val) == ["a", "b"]
    # 6 in A and 4 in B at 0.5: 3 and 2, exactly proportional
    keys = [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(4)]
    val = hash_split(keys, 0.5, seed=1, strata={k: k[0] for k in keys})
    assert sorted(k[0] for k in val) == ["a", "a", "a", "b", "b"]
    # within a stratum the smallest hashes of (seed, key) go: the same keys whatever the order
    assert val == hash_split(keys[::-1], 0.5, seed=1, strata={k: k[0] for k in keys})


def test_image_stratum_bins_box_counts_and_takes_the_most_frequent_class() -> None:
    from model.data.raw import RawBox, image_stratum

    def boxes(*labels: str) -> list[RawBox]:
        return [RawBox((0, 0, 1, 1), lab, i) for i, lab in enumerate(labels)]

    assert image_stratum([]) == (0, "")
    assert image_stratum(boxes("bottle")) == (1, "bottle")
    assert image_stratum(boxes("can", "bottle", "can")) == (2, "can")  # 2-3 boxes
    assert image_stratum(boxes(*["bottle"] * 4)) == (3, "bottle")  # 4-7
    assert image_stratum(boxes("can", "bottle", *["x"] * 6)) == (4, "x")  # 8+
    assert image_stratum(boxes("can", "bottle")) == (2, "bottle")  # a tie: the first name


def test_flow_with_a_test_split_holds_validation_out_of_training(tmp_path: Path) -> None:
    """FloW-Img (train + test, no val): val is held out of the training images, stratified:
    4 empty frames and 6 with one bottle at val_fraction 0.2 → one of each; test untouched;
    the same split_seed gives the same images, another seed others."""
    train = {f"e{i}": [] for i in range(4)} | {f"b{i}": [("bottle", 2, 2, 6, 6)] for i in range(6)}
    make_flow(tmp_path, train=train, test={"t0": [("bottle", 2, 2, 6, 6)]})
    ds = load_dataset(tmp_path, **FAST)
    assert list(ds.splits) == ["train", "val", "test"] and ds.val_held_out
    val = sorted(boxes_of(ds.val_split))
    assert len(val) == 2 and sorted(v[0] for v in val) == ["b", "e"]
    assert sorted(boxes_of(ds.test_split)) == ["t0.jpg"]
    assert ds.train.num_images == 8
    # every image is read once, counted in the split it ended in
    assert (ds.report.splits["val"].images_read, ds.report.splits["train"].images_read) == (2, 8)
    assert sorted(boxes_of(load_dataset(tmp_path, **FAST).val_split)) == val
    others = {
        tuple(sorted(boxes_of(load_dataset(tmp_path, split_seed=s, **FAST).val_split)))
        for s in range(1, 6)
    }
    assert len(others | {tuple(val)}) > 1
