"""``python -m model.data``: exit codes, convert round trip and accounting, delegating commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from model.data import load_dataset
from model.data.__main__ import main
from tests.data_builders import boxes_of, make_flow, truncate
from tests.paths import REPO

FAST = {"progress": False, "workers": 2}


def _messy(root: Path) -> Path:
    make_flow(
        root,
        train={
            "a": [("bottle", 11, 6, 21, 16), ("bottle", -9, 41, 11, 59)],  # second one is clipped
            "b": [("bottle", 1, 1, 5, 5), ("bottle", 5, 5, 5, 9)],  # second has no width
            "c": [("bottle", 2, 2, 6, 6)],  # corrupt image
        },
        test={"t": [("bottle", 5, 5, 9, 9)], "u": []},
    )
    truncate(root / "training" / "images" / "c.jpg")
    return root


def _clean(root: Path) -> Path:
    return make_flow(root, train={"a": [("bottle", 2, 2, 6, 6)]}, test={"t": []})


def test_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messy, clean = _messy(tmp_path / "messy"), _clean(tmp_path / "clean")
    assert main(["check", str(clean), "--strict"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("check --strict: OK — flow dataset")
    assert main(["check", str(messy)]) == 0
    out = capsys.readouterr().out
    assert "corrupt_image" in out
    assert out.splitlines()[-1].startswith("check: 3 problems — flow dataset")
    assert main(["check", str(messy), "--strict", "--json", str(tmp_path / "r.json")]) == 1
    assert capsys.readouterr().out.splitlines()[-1].startswith("check --strict: FAILED, 3 problems")
    assert len(json.loads((tmp_path / "r.json").read_text())["issues"]) == 3


def test_check_unrecognised_folder_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "stuff").mkdir()
    assert main(["check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unrecognised dataset layout" in err and "data.yaml" in err
    assert err.splitlines()[-1] == "check: failed (see the error above)"


def test_convert_round_trip_accounts_for_everything(tmp_path: Path, capsys) -> None:
    src, out = _messy(tmp_path / "src"), tmp_path / "out"
    assert main(["convert", str(src), str(out)]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(
        "convert: wrote train.json (2 images, 3 boxes), test.json (2 images, 1 box)"
    )
    assert "read 5 images / 6 boxes, dropped 1 image / 2 boxes, clipped 1 box" in last
    assert sorted(p.name for p in out.iterdir()) == ["data_report.json", "test.json", "train.json"]
    report = json.loads((out / "data_report.json").read_text())
    for name, split_file in (("train", "train.json"), ("test", "test.json")):
        doc = json.loads((out / split_file).read_text())
        s = report["splits"][name]
        assert s["images_read"] == len(doc["images"]) + s["images_dropped"]
        assert s["boxes_read"] == len(doc["annotations"]) + s["boxes_dropped"]
    train = report["splits"]["train"]
    assert (train["images_read"], train["boxes_read"]) == (3, 5)  # what the source holds
    dropped = [(i["kind"], i["n_boxes"]) for i in report["issues"] if i["action"] != "clipped box"]
    assert sorted(dropped) == [("corrupt_image", 1), ("zero_area", 0)]
    assert len(COCO(str(out / "train.json")).getAnnIds()) == 3

    original = load_dataset(src, **FAST)
    back = load_dataset(out, **FAST)
    assert back.layout == "coco" and back.report.ok
    assert back.class_names == original.class_names == ["bottle"]
    for name in ("train", "test"):
        assert boxes_of(back.splits[name]) == boxes_of(original.splits[name])
        assert back.splits[name].images == original.splits[name].images  # same absolute paths


def test_convert_copy_images_is_relocatable(tmp_path: Path, capsys) -> None:
    src = _clean(tmp_path / "src")
    assert main(["convert", str(src), str(tmp_path / "out"), "--copy-images"]) == 0
    doc = json.loads((tmp_path / "out" / "train.json").read_text())
    assert doc["images"][0]["file_name"] == "images/train/a.jpg"
    (tmp_path / "out").rename(tmp_path / "moved")
    back = load_dataset(tmp_path / "moved", **FAST)
    assert back.train.images[0]["file_name"] == str(tmp_path / "moved/images/train/a.jpg")
    assert boxes_of(back.train) == boxes_of(load_dataset(src, **FAST).train)


def test_convert_refuses_stale_split_files(tmp_path: Path, capsys) -> None:
    src, out = _clean(tmp_path / "src"), tmp_path / "out"
    out.mkdir()
    (out / "val.json").write_text("{}")  # from an earlier conversion with a val split
    assert main(["convert", str(src), str(out)]) == 2
    assert "already holds val.json" in capsys.readouterr().err
    assert not (out / "train.json").exists()
    assert main(["convert", str(src), str(src)]) == 2


def test_convert_strict_writes_nothing(tmp_path: Path, capsys) -> None:
    assert main(["convert", str(_messy(tmp_path / "src")), str(tmp_path / "out"), "--strict"]) == 1
    assert not (tmp_path / "out").exists()
    assert "nothing written, 3 problems" in capsys.readouterr().out


def test_delegating_commands(tmp_path: Path, monkeypatch, capsys) -> None:
    calls: list[tuple] = []

    def render_preview(src, out, *, n, seed, cfg):
        calls.append(("preview", Path(src), Path(out), n, seed, cfg.img_size))
        return Path(out)

    def generate_flow_like(out_dir, *, seed, n_train, n_test):
        calls.append(("synth", Path(out_dir), seed, n_train, n_test))
        return Path(out_dir)

    def load_unlabeled_images(sources, *, every_n, video_stats):
        calls.append(("frames", [Path(s) for s in sources], every_n, video_stats))
        return [np.full((4, 6, 3), i, np.uint8) for i in range(3)]

    for name, fn in (
        ("preview", render_preview),
        ("synth", generate_flow_like),
        ("frames", load_unlabeled_images),
    ):
        module = types.ModuleType(f"model.data.{name}")
        setattr(module, fn.__name__, fn)
        monkeypatch.setitem(sys.modules, f"model.data.{name}", module)

    assert (
        main(
            [
                "preview",
                "ds",
                "--out",
                str(tmp_path / "p.png"),
                "--n",
                "4",
                "--seed",
                "3",
                "--img-size",
                "320",
            ]
        )
        == 0
    )
    assert main(["synth", str(tmp_path / "syn"), "--seed", "2", "--train", "5", "--test", "1"]) == 0
    assert main(["frames", "v1.mp4", "dir2", "--out", str(tmp_path / "fr"), "--every", "5"]) == 0
    assert calls == [
        ("preview", Path("ds"), tmp_path / "p.png", 4, 3, 320),
        ("synth", tmp_path / "syn", 2, 5, 1),
        ("frames", [Path("v1.mp4"), Path("dir2")], 5, []),
    ]
    assert sorted(p.name for p in (tmp_path / "fr").iterdir()) == [
        "frame_000000.png",
        "frame_000001.png",
        "frame_000002.png",
    ]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("preview: wrote") and lines[1].startswith("synth: wrote")
    assert lines[2].startswith("frames: wrote 3 PNGs")


def test_preview_takes_the_augmentation_of_a_config_and_overrides(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    seen: list = []
    module = types.ModuleType("model.data.preview")
    module.render_preview = lambda src, out, *, n, seed, cfg: seen.append(cfg) or Path(out)
    monkeypatch.setitem(sys.modules, "model.data.preview", module)
    config = tmp_path / "trial.yaml"
    config.write_text("img_size: 512\nmosaic_scale_min: 0.5\nmixup_prob: 0.0\n")
    out = str(tmp_path / "p.png")
    argv = ["preview", "ds", "--out", out, "--config", str(config)]
    assert main([*argv, "--set", "mosaic_centre_crop=true"]) == 0
    cfg = seen[-1]
    assert (cfg.img_size, cfg.mosaic_scale_min, cfg.mixup_prob) == (512, 0.5, 0.0)
    assert cfg.mosaic_centre_crop is True
    assert "512 px" in capsys.readouterr().out
    assert main([*argv, "--img-size", "256"]) == 0 and seen[-1].img_size == 256
    # a bad override names the key and stops before anything is drawn
    assert main([*argv, "--set", "mosaic_centre_crop=maybe"]) == 2
    err = capsys.readouterr().err
    assert "'mosaic_centre_crop'" in err and "preview: failed" in err and len(seen) == 2


def test_module_entry_point(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "model.data", "check", str(_clean(tmp_path)), "--strict"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("check --strict: OK")


def test_yolo_yaml_resolving_nowhere_exits_2_with_the_error(tmp_path: Path, capsys) -> None:
    root = tmp_path / "export"
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "data.yaml").write_text("path: /gone\ntrain: images/train\nnames: [a]\n")
    assert main(["convert", str(root), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[1] == "convert: failed (see the error above)"
    assert err[0].startswith(
        f"error: {root / 'labels' / 'data.yaml'}: key 'train' points to 'images/train', which is "
        f"in none of the dataset roots tried for path: '/gone' (tried /gone/images/train, "
        f"{root / 'labels' / 'images' / 'train'}, {root / 'images' / 'train'});"
    )
    assert not (tmp_path / "out").exists()


def _with_a_can(root: Path) -> Path:
    return make_flow(
        root,
        train={"a": [("bottle", 2, 2, 6, 6), ("can", 10, 10, 20, 20)], "b": [("can", 3, 3, 9, 9)]},
        test={"t": [("bottle", 5, 5, 9, 9)]},
    )


def test_check_names_a_class_flow_lacks_and_how_to_drop_it(tmp_path: Path, capsys) -> None:
    src = _with_a_can(tmp_path / "src")
    assert main(["check", str(src)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  can: 2 boxes in 2 files (training/annotations/a.xml, training/annotations/b.xml); " \
        "2 kept" in out
    assert (
        "  class can: 2 boxes in 2 files (training/annotations/a.xml, training/annotations/b.xml)"
        " is not a FloW class (the layout has bottle); to keep only bottle: --classes bottle "
        "(trial config: classes: bottle)"
    ) in out
    assert out[-1].startswith("check: OK, 1 warning (see Warnings above) — flow dataset")
    # keeping bottle: the can boxes are dropped and counted, strict still passes
    assert main(["check", str(src), "--classes", "bottle", "--strict"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "  dropped box: excluded_class: 0 images, 2 boxes" in out
    assert out[-1].startswith("check --strict: OK — flow dataset") and "dropped 0 images and " \
        "2 boxes" in out[-1]
    assert main(["convert", str(src), str(tmp_path / "out"), "--classes", "bottle"]) == 0
    doc = json.loads((tmp_path / "out" / "train.json").read_text())
    assert doc["categories"] == [{"supercategory": "", "id": 1, "name": "bottle"}]
    assert len(doc["annotations"]) == 1
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["classes"]["can"] == {
        "boxes": 2, "files": 2, "kept": 0,
        "examples": ["training/annotations/a.xml", "training/annotations/b.xml"],
    }
