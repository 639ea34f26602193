"""A generated FloW-Img-like dataset: floating bottles on river water, fast and deterministic.

``generate_flow_like(out)`` writes the FloW-Img layout::

    out/training/images/train_00000.jpg   out/training/annotations/train_00000.xml
    out/test/images/test_00000.jpg        out/test/annotations/test_00000.xml
    out/video/drift_000.mp4 ...           unlabeled drifting clips (MJPG .avi without mp4v)
    out/README.txt, out/manifest.json     seed, counts, version, annotation hash

Image i of a split is drawn from ``numpy.random.default_rng([seed, split_code, i])`` alone, so the
first images of a small set equal those of a large one, and the same seed gives byte-identical
annotations (and, with the same OpenCV build, identical JPEG and video bytes).

Boxes are exact: the tight box of the rendered visible bottle pixels (see ``synth_bottle.py``),
written as VOC corners the way the official YOLOX VOC reader (and ``model/data/voc.py``) reads
them back: a box (x, y, w, h) in pixel edges is written ``xmin = x + 1``, ``xmax = x + w + 1``.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from model.data.raw import DataError
from model.data.synth_scene import Box, render_scene, sample_scene

GENERATOR_VERSION = 1  # bump on any change to the output: it names the embedded-dataset cache
CLASS_NAME = "bottle"
JPEG_QUALITY = 92
VIDEO_FPS = 10.0
# split folder, file-name prefix, seed code
_SPLITS = (("training", "train", 0), ("test", "test", 1))
_VIDEO_CODE = 2
# Tried in order: MPEG-4 part 2 is in every FFmpeg build; Motion-JPEG is OpenCV's own fallback.
_CODECS = (("mp4v", ".mp4"), ("MJPG", ".avi"))


class SynthError(DataError):
    """The synthetic dataset cannot be generated (bad argument, occupied folder, no codec)."""


def generate_flow_like(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 240,
    n_test: int = 60,
    width: int = 640,
    height: int = 360,
    video: bool = True,
    progress: bool = True,
    n_clips: int = 2,
    clip_frames: int = 60,
) -> Path:
    """Generate the dataset into ``out_dir`` (created; must be empty if it exists); return it.

    n_clips x clip_frames unlabeled video frames are written when ``video`` is true.
    """
    _check_args(seed, n_train, n_test, width, height, n_clips, clip_frames)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthError(f"synth output folder {out} exists and is not empty; choose a new "
                         "folder or delete it first (nothing was written)")
    from tqdm import tqdm

    total = n_train + n_test + (n_clips * clip_frames if video else 0)
    # disable=None: no bar when stderr is not a terminal (Ray worker logs)
    bar = tqdm(total=total, desc="synth", unit="img", disable=None if progress else True)
    counts: dict[str, dict[str, int]] = {}
    for (folder, prefix, code), n in zip(_SPLITS, (n_train, n_test), strict=True):
        if n > 0:
            counts[folder] = _write_split(out / folder, prefix, seed, code, n, width, height, bar)
    clips: dict[str, int] = {}
    codec = None
    if video and n_clips > 0:
        codec = _write_videos(out / "video", seed, n_clips, clip_frames, width, height, bar)
        clips = {f"video/drift_{k:03d}{codec[1]}": clip_frames for k in range(n_clips)}
    bar.close()

    manifest = {
        "generator": "model.data.synth.generate_flow_like",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "width": width,
        "height": height,
        "class_names": [CLASS_NAME],
        "box_convention": "VOC corners read as x = xmin - 1, w = xmax - xmin (official YOLOX)",
        "splits": counts,
        "video": {"codec": codec[0] if codec else None, "fps": VIDEO_FPS, "frames": clips},
        "annotations_sha256": annotations_hash(out),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "README.txt").write_text(_readme(manifest))
    return out


def _check_args(seed: int, n_train: int, n_test: int, width: int, height: int,
                n_clips: int, clip_frames: int) -> None:
    rules = [
        ("seed", seed, seed >= 0, "an integer >= 0"),
        ("n_train", n_train, n_train >= 1, "an integer >= 1"),
        ("n_test", n_test, n_test >= 0, "an integer >= 0"),
        ("width", width, width >= 64 and width % 2 == 0, "an even integer >= 64"),
        ("height", height, height >= 64 and height % 2 == 0, "an even integer >= 64"),
        ("n_clips", n_clips, n_clips >= 0, "an integer >= 0"),
        ("clip_frames", clip_frames, clip_frames >= 1, "an integer >= 1"),
    ]
    for name, value, ok, rule in rules:
        if not isinstance(value, int) or isinstance(value, bool) or not ok:
            raise SynthError(f"generate_flow_like: {name} must be {rule}, got {value!r}")


def _write_split(root: Path, prefix: str, seed: int, code: int, n: int, width: int, height: int,
                 bar: Any) -> dict[str, int]:
    images, annotations = root / "images", root / "annotations"
    images.mkdir(parents=True)
    annotations.mkdir()
    objects = empty = 0
    for i in range(n):
        rng = np.random.default_rng([seed, code, i])
        rendered = render_scene(sample_scene(rng, width, height), 0.0, rng)
        name = f"{prefix}_{i:05d}"
        ok, jpeg = cv2.imencode(".jpg", rendered.image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise SynthError(f"OpenCV could not JPEG-encode {images / name}.jpg")
        (images / f"{name}.jpg").write_bytes(jpeg.tobytes())
        (annotations / f"{name}.xml").write_bytes(
            voc_xml(f"{name}.jpg", width, height, rendered.boxes, rendered.truncated))
        objects += len(rendered.boxes)
        empty += not rendered.boxes
        bar.update()
    return {"images": n, "objects": objects, "empty_images": empty}


def voc_xml(filename: str, width: int, height: int, boxes: list[Box],
            truncated: list[bool]) -> bytes:
    """One Pascal VOC annotation; boxes are pixel edges (xmin, ymin, xmax exclusive, ymax excl.)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "images"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for (x0, y0, x1, y1), cut in zip(boxes, truncated, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = CLASS_NAME
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(cut))
        ET.SubElement(obj, "difficult").text = "0"
        bnd = ET.SubElement(obj, "bndbox")
        # +1 on all four: the reader's x = xmin - 1, w = xmax - xmin gives back the exact box
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bnd, tag).text = str(value + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _write_videos(folder: Path, seed: int, n_clips: int, clip_frames: int, width: int,
                  height: int, bar: Any) -> tuple[str, str]:
    """Write the drifting clips; return the (fourcc, suffix) that worked."""
    folder.mkdir(parents=True)
    codec = None
    for k in range(n_clips):
        stem = folder / f"drift_{k:03d}"
        writer, codec = _open_writer(stem, width, height, codec)
        try:
            for frame in _clip_frames(seed, k, clip_frames, width, height):
                writer.write(frame)
                bar.update()
        finally:
            writer.release()
    assert codec is not None
    return codec


def _open_writer(stem: Path, width: int, height: int,
                 codec: tuple[str, str] | None) -> tuple[cv2.VideoWriter, tuple[str, str]]:
    for fourcc, suffix in [codec] if codec else _CODECS:
        path = stem.with_suffix(suffix)
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), VIDEO_FPS,
                                 (width, height))
        if writer.isOpened():
            return writer, (fourcc, suffix)
        writer.release()
        path.unlink(missing_ok=True)
    tried = ", ".join(f"{f} ({s})" for f, s in ([codec] if codec else _CODECS))
    raise SynthError(f"cannot write video {stem}: OpenCV has no working encoder among {tried}; "
                     "install an opencv-python build with FFmpeg, or pass video=False")


def _clip_frames(seed: int, clip: int, n: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Frames of one clip: one scene, waves moving and everything drifting with the current."""
    rng = np.random.default_rng([seed, _VIDEO_CODE, clip])
    scene = sample_scene(rng, width, height, min_bottles=3)  # pretraining wants objects in view
    for t in range(n):
        yield render_scene(scene, float(t), rng).image


def annotations_hash(root: str | Path) -> str:
    """SHA-256 over the split annotation files (relative path and content), in sorted order."""
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(root.glob("*/annotations/*.xml")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _readme(m: dict) -> str:
    splits = "; ".join(f"{k}: {v['images']} images, {v['objects']} bottles "
                       f"({v['empty_images']} images without any)" for k, v in m["splits"].items())
    video = m["video"]
    clips = (f"{', '.join(video['frames'])} ({video['codec']}, {VIDEO_FPS:g} fps, "
             f"{sum(video['frames'].values())} frames)" if video["frames"] else "none")
    n = {k: v["images"] for k, v in m["splits"].items()}
    return (
        "FloW-like floating-bottle dataset (synthetic), written by yolox-flow-study\n"
        "model/data/synth.py (generate_flow_like).\n\n"
        f"generator version: {m['generator_version']}\n"
        f"seed: {m['seed']}\n"
        f"images: {m['width']}x{m['height']} JPEG (quality {JPEG_QUALITY})\n"
        f"{splits}\n"
        f"unlabeled video: {clips}\n"
        f"annotations sha256: {m['annotations_sha256']}\n\n"
        "Layout as FloW-Img: <split>/images/*.jpg with <split>/annotations/*.xml (Pascal VOC, one\n"
        "per image, class 'bottle'). Box corners are written as the official YOLOX VOC reader\n"
        "reads them: a box (x, y, w, h) in pixel edges has xmin = x + 1, xmax = x + w + 1.\n"
        "Each box is the tight box of the rendered visible (above-water) bottle pixels.\n\n"
        f"Regenerate: python -m model.data synth OUT --seed {m['seed']} "
        f"--train {n.get('training', 0)} --test {n.get('test', 0)}"
        + ("" if (m["width"], m["height"]) == (640, 360)
           else f" (and width={m['width']}, height={m['height']} in generate_flow_like)")
        + "\n"
    )
