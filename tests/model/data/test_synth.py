"""The generated floating-bottle dataset (model/data/synth*.py) and its cache (embedded.py)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

import model.data.embedded as embedded
from model.data.synth import SynthError, annotations_hash, generate_flow_like
from model.data.synth_scene import render_scene, sample_scene

SMALL = dict(n_train=6, n_test=2, n_clips=1, clip_frames=5, progress=False)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_flow_like(tmp_path_factory.mktemp("synth") / "a", seed=3, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _boxes(xml_path: Path) -> list[tuple[int, int, int, int]]:
    out = []
    for obj in ET.parse(xml_path).getroot().iter("object"):
        bnd = obj.find("bndbox")
        out.append(tuple(int(bnd.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")))
    return out


def test_same_seed_gives_identical_bytes(small_set: Path, tmp_path: Path) -> None:
    again = _files(generate_flow_like(tmp_path / "b", seed=3, **SMALL))
    first = _files(small_set)
    assert sorted(again) == sorted(first)
    assert [k for k in first if first[k] != again[k]] == []  # XML, JPEG, video, manifest


def test_other_seed_gives_other_data(small_set: Path, tmp_path: Path) -> None:
    other = generate_flow_like(tmp_path / "c", seed=4, **SMALL)
    assert annotations_hash(other) != annotations_hash(small_set)
    img = "training/images/train_00000.jpg"
    assert (other / img).read_bytes() != (small_set / img).read_bytes()


def test_image_i_does_not_depend_on_the_set_size(small_set: Path, tmp_path: Path) -> None:
    fewer = generate_flow_like(tmp_path / "d", seed=3, n_train=2, n_test=0, video=False,
                               progress=False)
    for name in ("images/train_00001.jpg", "annotations/train_00001.xml"):
        assert (fewer / "training" / name).read_bytes() == \
            (small_set / "training" / name).read_bytes()
    assert not (fewer / "test").exists() and not (fewer / "video").exists()


def test_layout_counts_and_manifest(small_set: Path) -> None:
    manifest = json.loads((small_set / "manifest.json").read_text())
    for folder, prefix, n in (("training", "train", 6), ("test", "test", 2)):
        images = sorted(p.stem for p in (small_set / folder / "images").glob("*.jpg"))
        xmls = sorted(p.stem for p in (small_set / folder / "annotations").glob("*.xml"))
        assert images == xmls == [f"{prefix}_{i:05d}" for i in range(n)]
        objects = sum(len(_boxes(small_set / folder / "annotations" / f"{s}.xml")) for s in xmls)
        assert manifest["splits"][folder] == {
            "images": n, "objects": objects,
            "empty_images": sum(not _boxes(small_set / folder / "annotations" / f"{s}.xml")
                                for s in xmls)}
    assert manifest["seed"] == 3 and manifest["annotations_sha256"] == annotations_hash(small_set)
    readme = (small_set / "README.txt").read_text()
    assert "seed: 3" in readme and manifest["annotations_sha256"] in readme


def test_voc_fields_and_boxes_inside_the_image(small_set: Path) -> None:
    n_boxes = 0
    for xml_path in sorted(small_set.glob("*/annotations/*.xml")):
        root = ET.parse(xml_path).getroot()
        image = cv2.imread(str(xml_path.parent.parent / "images" / root.findtext("filename")))
        assert root.findtext("folder") == "images" and image.shape == (360, 640, 3)
        assert [root.findtext(f"size/{t}") for t in ("width", "height", "depth")] == \
            ["640", "360", "3"]
        for obj in root.iter("object"):
            assert obj.findtext("name") == "bottle" and obj.findtext("difficult") == "0"
            assert obj.findtext("truncated") in ("0", "1") and obj.findtext("pose")
        for xmin, ymin, xmax, ymax in _boxes(xml_path):
            # VOC corners as the YOLOX reader reads them: pixel edges + 1
            assert 1 <= xmin < xmax <= 641 and 1 <= ymin < ymax <= 361
            n_boxes += 1
    assert n_boxes > 5


def test_written_boxes_are_the_rendered_boxes(small_set: Path) -> None:
    # Image 4 of the training split is drawn from default_rng([seed, 0, 4]) alone.
    rng = np.random.default_rng([3, 0, 4])
    rendered = render_scene(sample_scene(rng, 640, 360), 0.0, rng)
    written = _boxes(small_set / "training" / "annotations" / "train_00004.xml")
    assert written == [(x0 + 1, y0 + 1, x1 + 1, y1 + 1) for x0, y0, x1, y1 in rendered.boxes]
    decoded = cv2.imread(str(small_set / "training" / "images" / "train_00004.jpg"))
    assert np.abs(decoded.astype(int) - rendered.image).mean() < 4  # JPEG of the same render


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_box_is_the_tight_box_of_visible_bottle_pixels(seed: int) -> None:
    scene = sample_scene(np.random.default_rng([seed, 9]), 640, 360, min_bottles=3)
    shown = render_scene(scene, 0.0, np.random.default_rng(1), with_masks=True)
    empty = render_scene(dataclasses.replace(scene, bottles=()), 0.0, np.random.default_rng(1))
    assert len(shown.boxes) == len(scene.bottles) >= 3
    diff = np.abs(shown.image.astype(int) - empty.image).sum(axis=2)
    for (x0, y0, x1, y1), mask in zip(shown.boxes, shown.masks, strict=True):
        ys, xs = np.nonzero(mask)
        assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        # the bottle changed the visible pixels, clearly (not a faint ghost)
        assert np.median(diff[mask]) > 20, (seed, (x0, y0, x1, y1))


def test_box_sizes_are_mostly_6_to_40_px() -> None:
    long_sides, small = [], 0
    for i in range(30):
        rng = np.random.default_rng([11, i])
        for x0, y0, x1, y1 in render_scene(sample_scene(rng, 640, 360)).boxes:
            long_sides.append(max(x1 - x0, y1 - y0))
            small += (x1 - x0) * (y1 - y0) < 32 * 32
    sides = np.array(long_sides)
    assert len(sides) > 60
    assert np.mean((sides >= 6) & (sides <= 40)) > 0.9
    assert sides.min() >= 4 and 12 <= np.median(sides) <= 30
    assert small / len(sides) > 0.9  # FloW: almost all COCO-small


def test_video_has_the_expected_frames(small_set: Path) -> None:
    manifest = json.loads((small_set / "manifest.json").read_text())
    (name, n), = manifest["video"]["frames"].items()
    assert manifest["video"]["codec"] in ("mp4v", "MJPG") and n == 5
    cap = cv2.VideoCapture(str(small_set / name))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 5 and frames[0].shape == (360, 640, 3)
    assert np.abs(frames[0].astype(int) - frames[-1]).mean() > 1  # the water moves


@pytest.mark.parametrize(("kwargs", "named"), [
    (dict(n_train=0), "n_train"), (dict(seed=-1), "seed"), (dict(width=641), "width"),
    (dict(clip_frames=0), "clip_frames"),
])
def test_bad_arguments_are_named(tmp_path: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(SynthError, match=named):
        generate_flow_like(tmp_path / "x", progress=False, **kwargs)


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SynthError, match=str(tmp_path)):
        generate_flow_like(tmp_path, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


# --- the embedded dataset cache ---

def _small_generator(counter: Path):
    real = embedded.generate_flow_like

    def generate(out: Path, *, seed: int, progress: bool) -> Path:
        with open(counter, "a") as f:
            f.write("generated\n")
        return real(out, seed=seed, n_train=3, n_test=1, n_clips=1, clip_frames=2,
                    progress=False)

    return generate


def test_embedded_is_generated_once_then_reused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "count.txt"
    monkeypatch.setattr(embedded, "generate_flow_like", _small_generator(counter))
    monkeypatch.setenv(embedded.CACHE_ENV, str(tmp_path / "cache"))
    first = embedded.embedded_dataset_dir(progress=False)
    stamp = (first / "manifest.json").stat().st_mtime_ns
    second = embedded.embedded_dataset_dir(progress=False)
    assert first == second == tmp_path / "cache" / f"embedded-v{embedded.GENERATOR_VERSION}-seed0"
    assert counter.read_text().count("generated") == 1
    assert (first / "manifest.json").stat().st_mtime_ns == stamp
    assert (first / embedded.MARKER).is_file() and (first / "training" / "images").is_dir()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == \
        [first.name, f"{first.name}.lock"]  # no temporary folder left


def test_embedded_replaces_a_half_written_folder(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "generate_flow_like", _small_generator(tmp_path / "n.txt"))
    stale = tmp_path / f"embedded-v{embedded.GENERATOR_VERSION}-seed5"
    (stale / "training").mkdir(parents=True)  # no marker: a killed older generator
    (tmp_path / f".{stale.name}.tmp-x").mkdir()
    assert embedded.embedded_dataset_dir(tmp_path, seed=5, progress=False) == stale
    assert (stale / embedded.MARKER).is_file() and not (tmp_path / f".{stale.name}.tmp-x").exists()


def _embedded_in_child(cache: str, counter: str, barrier) -> str:
    embedded.generate_flow_like = _small_generator(Path(counter))  # this child process only
    barrier.wait()
    return str(embedded.embedded_dataset_dir(cache, seed=1, progress=False))


def test_embedded_concurrent_processes_generate_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no state shared by fork
    counter = tmp_path / "count.txt"
    with ctx.Manager() as manager, ctx.Pool(2) as pool:
        barrier = manager.Barrier(2)  # both ask at the same moment
        jobs = [pool.apply_async(_embedded_in_child, (str(tmp_path), str(counter), barrier))
                for _ in range(2)]
        paths = [j.get(timeout=60) for j in jobs]
    assert paths[0] == paths[1] and (Path(paths[0]) / embedded.MARKER).is_file()
    assert counter.read_text().count("generated") == 1
