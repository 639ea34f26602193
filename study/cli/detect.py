"""Draw a checkpoint's detections: ``python -m study.cli.detect --checkpoint CKPT SOURCE --out
DIR``.

SOURCE is an image, a video, or a folder of images and videos. Images are written to ``DIR`` with
their boxes drawn (same file names); a video becomes ``DIR/<stem>_det.mp4``. ``DIR/detections.json``
lists every box (original pixels, score, class) per image or frame.

Detection runs the evaluation's path (:func:`model.coco_eval.predict_images`): a checkpoint
trained with ``input_mode: tiles`` detects by sliced inference over the full frame; ``--set
input_mode=tiles`` (and ``tile_size=…``, ``tile_overlap=…``, ``tile_full_frame=true``) slices
with any checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from model.checkpoint import load_trained_detector
from model.coco_eval import predict_images
from model.config import (
    DEVICES,
    add_override_argument,
    describe_inference,
)
from model.trainer import resolve_device
from study import cli
from study.files import atomic_write_json
from study.layout import StudyError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v"}
BOX_COLOR = (0, 255, 0)  # BGR


class SourceError(StudyError, ValueError):
    """The detection source is not an image, a video or a folder holding some."""


def list_sources(source: Path) -> tuple[list[Path], list[Path]]:
    """``(images, videos)`` of a file or folder (not recursive), sorted by name."""
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.is_file())
    elif source.is_file():
        files = [source]
    else:
        raise SourceError(f"{source} does not exist; pass an image, a video or a folder")
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTS]
    if not images and not videos:
        raise SourceError(
            f"{source} holds no image ({', '.join(sorted(IMAGE_EXTS))}) or video "
            f"({', '.join(sorted(VIDEO_EXTS))})"
        )
    return images, videos


def draw(image: np.ndarray, boxes: np.ndarray, names: list[str]) -> np.ndarray:
    """A copy of ``image`` with ``boxes`` (K, 6: x1, y1, x2, y2, score, class) drawn."""
    out = image.copy()
    for x1, y1, x2, y2, score, cls in boxes.tolist():
        p1, p2 = (int(x1), int(y1)), (int(round(x2)), int(round(y2)))
        cv2.rectangle(out, p1, p2, BOX_COLOR, 2)
        label = f"{names[int(cls)] if int(cls) < len(names) else int(cls)} {score:.2f}"
        cv2.putText(
            out,
            label,
            (p1[0], max(p1[1] - 4, 10)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            BOX_COLOR,
            1,
            cv2.LINE_AA,
        )
    return out


def _as_records(boxes: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"bbox_xyxy": [round(v, 2) for v in b[:4]], "score": round(b[4], 4), "class": int(b[5])}
        for b in boxes.tolist()
    ]


def _frames(video: Path, max_frames: int) -> Iterator[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    try:
        n = 0
        while max_frames <= 0 or n < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield frame
    finally:
        cap.release()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Draw YOLOX detections on images or a video.")
    p.add_argument("--checkpoint", type=Path, required=True, help="last.pt or best.pt")
    p.add_argument("source", type=Path, help="image, video, or folder of them")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--conf", type=float, default=0.3, help="score threshold (default 0.3)")
    p.add_argument("--nms", type=float, help="NMS IoU (default: the config's nms_iou)")
    p.add_argument("--img-size", type=int, help="input size (default: the config's img_size)")
    add_override_argument(
        p, "override a config key, e.g. --set input_mode=tiles --set tile_size=640"
    )
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch", type=int, default=4, help="images per forward pass")
    p.add_argument("--max-frames", type=int, default=0, help="stop videos after N frames (0=all)")
    return p


def run(args: argparse.Namespace) -> int:
    if not 0 < args.conf < 1:
        raise SourceError(f"--conf must be in (0, 1), got {args.conf}")
    images, videos = list_sources(args.source)
    device = resolve_device(args.device)
    net, cfg, state = load_trained_detector(args.checkpoint, device=device)
    names = [str(n) for n in state.get("class_names") or range(cfg.num_classes)]
    cfg = cli.resolve_config(cfg, args.overrides, img_size=args.img_size)
    nms = args.nms if args.nms is not None else cfg.nms_iou
    how = describe_inference(cfg).split(";")[0]

    def detect(batch: list[np.ndarray]) -> list[np.ndarray]:
        return predict_images(
            net, batch, cfg, conf=args.conf, nms_iou=nms, batch_size=args.batch
        )

    args.out.mkdir(parents=True, exist_ok=True)
    records: dict[str, list[dict[str, Any]]] = {}
    n_boxes = n_frames = 0
    for start in tqdm(range(0, len(images), args.batch), desc="images", disable=not images):
        paths = images[start : start + args.batch]
        batch = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
        unreadable = [str(p) for p, img in zip(paths, batch, strict=True) if img is None]
        if unreadable:
            raise SourceError(f"cannot read image(s) {', '.join(unreadable)}")
        for path, img, boxes in zip(paths, batch, detect(batch), strict=True):
            cv2.imwrite(str(args.out / path.name), draw(img, boxes, names))
            records[path.name] = _as_records(boxes)
            n_boxes += len(boxes)
    for video in videos:
        cap = cv2.VideoCapture(str(video))
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        cap.release()
        target = args.out / f"{video.stem}_det.mp4"
        writer: cv2.VideoWriter | None = None
        for i, frame in enumerate(tqdm(_frames(video, args.max_frames), desc=video.name)):
            boxes = detect([frame])[0]
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(draw(frame, boxes, names))
            records[f"{video.name}#{i}"] = _as_records(boxes)
            n_boxes += len(boxes)
            n_frames += 1
        if writer is None:
            raise SourceError(f"cannot read any frame of video {video}")
        writer.release()
    atomic_write_json(args.out / "detections.json", records)
    print(
        f"detect: {len(images)} images and {n_frames} frames of {len(videos)} videos, {n_boxes} "
        f"boxes with score >= {args.conf} on {how} on {device} -> {args.out}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def detect() -> int:
        with torch.inference_mode():
            return run(args)

    return cli.run_command("detect", detect, bad_input=(SourceError,))


if __name__ == "__main__":
    sys.exit(main())
