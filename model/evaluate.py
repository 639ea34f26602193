"""COCO evaluation of a detector on a :class:`~model.data.coco.DetectionSplit`.

Differences from the official ``COCOEvaluator`` and why:

* ``maxDets = [100, 300, 1000]`` as in the FloW study's logs (a frame can hold many small bottles).
  pycocotools' ``summarize()`` is written for ``[1, 10, 100]``: with our list it reports the
  IoU=0.50:0.95 AP at 100 detections but AP50/AP75/size-wise AP at 1000, and it breaks outright
  when 100 is not in the list. We read ``eval['precision']`` / ``eval['recall']`` ourselves and
  report **every AP number at the largest maxDets (1000)**, the AR numbers at 100/300/1000 and the
  size-wise AR at 1000. The summary lines say which maxDets each number uses.
* Results go to ``loadRes`` as a list: no JSON file is written anywhere.
* Boxes are clipped to the image before scoring (the letterbox pad lets predictions run past the
  right/bottom edge, where no ground truth can be).
* No detections at all still runs COCOeval on an empty result set, so every number is 0 (or -1,
  the COCO convention, for an area range without ground truth), never a crash.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm import tqdm

from model.config import TrialConfig
from model.data.loader import build_eval_loader
from model.data.transforms import letterbox
from model.postprocess import postprocess

if TYPE_CHECKING:
    from model.data.coco import DetectionSplit

COCO_METRICS: tuple[str, ...] = (
    "mAP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR_100",
    "AR_300",
    "AR_1000",
    "AR_small",
    "AR_medium",
    "AR_large",
)
MAX_DETS: tuple[int, int, int] = (100, 300, 1000)


def _quiet_coco(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO index built from a dict, without its progress prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(
    ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]]
) -> tuple[dict[str, float], str]:
    """Score COCO-format ``detections`` against a COCO-format ``ground_truth`` dict.

    ``detections``: ``{"image_id", "category_id" (1-based), "bbox": [x, y, w, h] original pixels,
    "score"}``. Returns the 12 :data:`COCO_METRICS` and the summary text (12 lines).
    """
    gt = _quiet_coco(ground_truth)
    if detections:
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(list(detections))
    else:  # loadRes indexes the first result; an empty result index scores 0 instead
        dt = _quiet_coco(
            {"images": ground_truth["images"], "categories": ground_truth["categories"],
             "annotations": []}
        )
    ev = COCOeval(gt, dt, iouType="bbox")
    ev.params.maxDets = list(MAX_DETS)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return _summarize(ev)


def _summarize(ev: COCOeval) -> tuple[dict[str, float], str]:
    p = ev.params
    precision = ev.eval["precision"]  # (T iou thresholds, R recall points, K classes, A areas, M)
    recall = ev.eval["recall"]  # (T, K, A, M)
    m_last = len(p.maxDets) - 1

    def area(label: str) -> int:
        return list(p.areaRngLbl).index(label)

    def iou(thr: float) -> int:
        return int(np.flatnonzero(np.isclose(p.iouThrs, thr))[0])

    def mean(s: np.ndarray) -> float:
        valid = s[s > -1]  # -1 marks "no ground truth" cells
        return float(valid.mean()) if valid.size else -1.0

    rows: list[tuple[str, bool, float | None, str, int]] = [
        ("mAP", True, None, "all", m_last),
        ("AP50", True, 0.5, "all", m_last),
        ("AP75", True, 0.75, "all", m_last),
        ("AP_small", True, None, "small", m_last),
        ("AP_medium", True, None, "medium", m_last),
        ("AP_large", True, None, "large", m_last),
        ("AR_100", False, None, "all", 0),
        ("AR_300", False, None, "all", 1),
        ("AR_1000", False, None, "all", 2),
        ("AR_small", False, None, "small", m_last),
        ("AR_medium", False, None, "medium", m_last),
        ("AR_large", False, None, "large", m_last),
    ]
    metrics: dict[str, float] = {}
    lines: list[str] = []
    for name, is_ap, thr, area_lbl, m in rows:
        t = slice(None) if thr is None else iou(thr)
        if is_ap:
            value = mean(precision[t, :, :, area(area_lbl), m])
        else:
            value = mean(recall[t, :, area(area_lbl), m])
        metrics[name] = value
        title = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
        iou_txt = f"{p.iouThrs[0]:0.2f}:{p.iouThrs[-1]:0.2f}" if thr is None else f"{thr:0.2f}"
        lines.append(
            f" {title} @[ IoU={iou_txt:<9} | area={area_lbl:>6s} | maxDets={p.maxDets[m]:>4d} ]"
            f" = {value:0.3f}"
        )
    return metrics, "\n".join(lines)


def to_coco_results(
    outputs: Sequence[torch.Tensor | None],
    image_ids: Sequence[int],
    ratios: Sequence[float],
    image_sizes: dict[int, tuple[int, int]],
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """Turn ``postprocess`` outputs of a batch into COCO result dicts in original pixels.

    ``outputs[i]``: ``(K, 7)`` x1, y1, x2, y2 (input pixels), obj, cls_conf, class (0-based), or
    None. ``ratios[i]``: letterbox scale (input / original). ``image_sizes[id] = (width, height)``.
    ``category_ids[c]`` is the COCO id of class ``c``.
    """
    results: list[dict[str, Any]] = []
    for out, image_id, ratio in zip(outputs, image_ids, ratios, strict=True):
        if out is None or len(out) == 0:
            continue
        out = out.detach().float().cpu()
        w, h = image_sizes[int(image_id)]
        boxes = out[:, :4] / ratio  # (K, 4) x1, y1, x2, y2 in original pixels
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        scores = (out[:, 4] * out[:, 5]).tolist()
        classes = out[:, 6].long().tolist()
        for (x1, y1, x2, y2), score, cls in zip(boxes.tolist(), scores, classes, strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[cls]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_coco(
    net: nn.Module,
    split: DetectionSplit,
    cfg: TrialConfig,
    *,
    progress: bool = False,
    loader: Iterable[tuple[torch.Tensor, list[int], list[float]]] | None = None,
) -> dict[str, Any]:
    """Evaluate ``net`` (any mode; restored afterwards) on ``split`` at ``cfg.img_size``.

    Returns the 12 :data:`COCO_METRICS` (floats) plus ``summary`` (the summary text),
    ``num_detections``, ``images`` and the seconds spent in ``load_s`` (waiting for the loader),
    ``forward_s``, ``nms_s`` (with the conversion to COCO results) and ``cocoeval_s``.
    ``loader`` defaults to ``build_eval_loader(split, cfg.img_size, …)``.
    """
    device = next(net.parameters()).device
    if loader is None:
        loader = build_eval_loader(
            split, cfg.img_size, batch_size=cfg.batch_size, workers=cfg.workers, device=device
        )
    sizes = {int(img["id"]): (int(img["width"]), int(img["height"])) for img in split.images}
    category_ids = sorted(int(c["id"]) for c in split.categories)
    results: list[dict[str, Any]] = []
    load_s = forward_s = nms_s = 0.0
    n_images = 0
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            tick = time.perf_counter()
            for images, image_ids, ratios in tqdm(
                loader, desc="eval", disable=not progress, leave=False
            ):
                t0 = time.perf_counter()
                load_s += t0 - tick
                images = images.to(device, non_blocking=True).float()
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                prediction = net(images)
                _sync(device)
                t1 = time.perf_counter()
                outputs = postprocess(
                    prediction, cfg.num_classes, conf_thre=cfg.test_conf, nms_thre=cfg.nms_iou
                )
                _sync(device)
                t2 = time.perf_counter()
                forward_s += t1 - t0
                nms_s += t2 - t1
                n_images += len(image_ids)
                results.extend(to_coco_results(outputs, image_ids, ratios, sizes, category_ids))
                tick = time.perf_counter()
    finally:
        net.train(was_training)
    t3 = time.perf_counter()
    metrics, summary = coco_metrics(split.to_coco_dict(), results)
    return {
        **metrics,
        "summary": summary,
        "num_detections": len(results),
        "images": n_images,
        "load_s": load_s,
        "forward_s": forward_s,
        "nms_s": nms_s,
        "cocoeval_s": time.perf_counter() - t3,
    }


# --- inference on raw frames (study/detect.py) ---


def predict_images(
    net: nn.Module,
    images: Sequence[np.ndarray],
    img_size: int,
    *,
    num_classes: int,
    conf: float,
    nms_iou: float,
) -> list[np.ndarray]:
    """Detect objects in BGR uint8 images; one ``(K, 6)`` array per image.

    Images are letterboxed like the eval loader (``model.data.transforms.letterbox``).

    Columns: x1, y1, x2, y2 (original pixels, clipped), score (obj × cls), class (0-based).
    """
    if not images:
        return []
    device = next(net.parameters()).device
    canvases, ratios = zip(*(letterbox(img, img_size) for img in images), strict=True)
    batch = torch.from_numpy(np.stack(canvases)).permute(0, 3, 1, 2).float()  # (B, 3, S, S)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            outputs = postprocess(
                net(batch.to(device)), num_classes, conf_thre=conf, nms_thre=nms_iou
            )
    finally:
        net.train(was_training)
    found: list[np.ndarray] = []
    for img, out, ratio in zip(images, outputs, ratios, strict=True):
        if out is None or len(out) == 0:
            found.append(np.zeros((0, 6), dtype=np.float32))
            continue
        out = out.detach().float().cpu()
        boxes = out[:, :4] / ratio
        h, w = img.shape[:2]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        score = (out[:, 4] * out[:, 5])[:, None]
        found.append(torch.cat([boxes, score, out[:, 6:7]], dim=1).numpy())
    return found
