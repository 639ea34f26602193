"""A picture of what the detector finds, at every evaluation: a small JPEG grid of the first
few validation images with their ground-truth boxes and the detections drawn.

The trainer writes it next to its checkpoints (``eval_preview.jpg``, beside ``last.pt``) when
``eval_preview_images`` > 0; a study hands it to Ray Tune with the checkpoint of the same
evaluation, and the trackers (TensorBoard, MLflow, W&B: study/running/trackers.py) show it per
epoch. Nothing here knows about them: model/ only writes a file.

The same images every time (the split's first ones), so that the pictures of one run show the
detector learning. Inference is the evaluation's (:func:`model.coco_eval.predict_images`, the
network in eval mode without gradients): it draws no random number and changes no weight or
statistic, so a run with previews trains bit-identically to one without.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
from torch import nn

from model.coco_eval import predict_images
from model.config import TrialConfig
from model.data.dataset import DetectionSplit
from model.data.transforms import read_image

EVAL_PREVIEW = "eval_preview.jpg"  # next to last.pt; travels with it (study/running/trial.py)
CELL = 320  # px: each image is scaled to fit a CELL x CELL square
DRAW_SCORE = 0.25  # detections drawn from this score on (evaluation scores from test_conf 0.01)
MAX_DRAWN = 30  # highest-scoring detections drawn per image
GT_COLOUR = (255, 255, 255)  # BGR: ground truth white, detections green
DET_COLOUR = (0, 255, 0)
JPEG_QUALITY = 85


def _fit(image: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``image`` scaled so that its longer side is ``side`` px, on a grey square; the scale."""
    h, w = image.shape[:2]
    r = side / max(h, w)
    small = cv2.resize(image, (max(1, round(w * r)), max(1, round(h * r))))
    cell = np.full((side, side, 3), 114, dtype=np.uint8)
    cell[: small.shape[0], : small.shape[1]] = small
    return cell, r


def _draw_cell(
    image: np.ndarray, truth: list[list[float]], found: np.ndarray, names: list[str]
) -> np.ndarray:
    """``image`` (H, W, 3) BGR uint8 fitted into a CELL square with ``truth`` (COCO x, y, w, h
    in original pixels) in white and ``found`` (K, 6: x1, y1, x2, y2, score, class; original
    pixels) from DRAW_SCORE on in green with class and score."""
    cell, r = _fit(image, CELL)
    for x, y, w, h in truth:
        p1, p2 = (round(x * r), round(y * r)), (round((x + w) * r), round((y + h) * r))
        cv2.rectangle(cell, p1, p2, GT_COLOUR, 1)
    keep = found[found[:, 4] >= DRAW_SCORE] if len(found) else found
    keep = keep[np.argsort(-keep[:, 4])][:MAX_DRAWN] if len(keep) else keep
    for x1, y1, x2, y2, score, cls in keep.tolist():
        p1, p2 = (round(x1 * r), round(y1 * r)), (round(x2 * r), round(y2 * r))
        cv2.rectangle(cell, p1, p2, DET_COLOUR, 1)
        name = names[int(cls)] if 0 <= int(cls) < len(names) else str(int(cls))
        cv2.putText(
            cell, f"{name} {score:.2f}", (p1[0], max(p1[1] - 3, 9)), cv2.FONT_HERSHEY_SIMPLEX,
            0.33, DET_COLOUR, 1, cv2.LINE_AA,
        )
    return cell


def render_eval_preview(
    net: nn.Module, split: DetectionSplit, cfg: TrialConfig, n: int
) -> np.ndarray | None:
    """A BGR uint8 grid ``(rows * CELL, cols * CELL, 3)`` of the first ``n`` images of
    ``split``, ``ceil(sqrt(n))`` per row, each with its boxes and ``net``'s detections (as
    evaluation finds them: ``cfg``'s input mode, ``test_conf`` and ``nms_iou``); None when
    ``n`` is 0 or the split has no image."""
    images_info = split.images[: max(n, 0)]
    if not images_info:
        return None
    images = [read_image(im["file_name"]) for im in images_info]
    found = predict_images(net, images, cfg, batch_size=len(images))
    by_image = split.annotations_by_image()
    names = split.class_names
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = np.zeros((rows * CELL, cols * CELL, 3), dtype=np.uint8)
    for k, (info, image, dets) in enumerate(zip(images_info, images, found, strict=True)):
        truth = [list(a["bbox"]) for a in by_image.get(info["id"], [])]
        r, c = divmod(k, cols)
        grid[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = _draw_cell(
            image, truth, dets, names
        )
    return grid


def write_eval_preview(
    net: nn.Module, split: DetectionSplit, cfg: TrialConfig, path: str | Path
) -> Path | None:
    """Render (:func:`render_eval_preview` with ``cfg.eval_preview_images``) and write the JPEG
    atomically to ``path``; with 0 images, remove a preview left there and return None."""
    path = Path(path)
    grid = render_eval_preview(net, split, cfg, cfg.eval_preview_images)
    if grid is None:
        path.unlink(missing_ok=True)
        return None
    ok, data = cv2.imencode(".jpg", grid, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # (cv2 has a JPEG encoder in every wheel; kept as a guard)
        raise RuntimeError(f"OpenCV could not encode the evaluation preview for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data.tobytes())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
