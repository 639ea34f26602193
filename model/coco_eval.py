"""COCO evaluation of a detector on a :class:`~model.data.dataset.DetectionSplit`.

Differences from the official ``COCOEvaluator`` and why:

* ``maxDets = [100, 300, 1000]`` as in the FloW study's logs (a frame can hold many small bottles).
  pycocotools' ``summarize()`` is written for ``[1, 10, 100]``: with our list it reports the
  IoU=0.50:0.95 AP at 100 detections but AP50/AP75/size-wise AP at 1000, and it breaks outright
  when 100 is not in the list. We read ``eval['precision']`` / ``eval['recall']`` ourselves and
  report **every AP number at the largest maxDets (1000)**, the AR numbers at 100/300/1000 and the
  size-wise AR at 1000. The summary lines say which maxDets each number uses.
* Results go to ``loadRes`` as a list: no JSON file is written anywhere.
* Predicted boxes are scored as they come, **not clipped to the image** (``eval_clip_boxes:
  false``, the default), exactly as the official evaluator does. Clipping would be defensible
  (the letterbox pad lets boxes run past the right/bottom edge, where no object can be) and
  ``eval_clip_boxes: true`` does it, but it changes the numbers a lot early in training (held-out
  VOC, nano after 40 epochs: 0.056 mAP unclipped, 0.100 clipped), so only the official choice
  lets our figures stand beside published ones. metrics.json and the study report name the
  choice. Letterbox and tile trials use the same one.
* With ``input_mode: tiles`` the frames are detected by sliced inference
  (:func:`model.sliced.sliced_detect`) and scored on the same full frames and original
  annotations as letterbox trials, so the 12 numbers of both compare.
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

from model.bootstrap import PerImageEval, per_image_eval
from model.config import TrialConfig
from model.data.loader import build_eval_loader, build_frame_loader
from model.data.transforms import letterbox
from model.sliced import SliceSettings, detect_batch, sliced_detect

if TYPE_CHECKING:
    from model.data.dataset import DetectionSplit

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


# (issue 23) every reported number says which split it is on: validation (every choice is made
# on it) or test (scored once, on the chosen checkpoint)
VAL_METRICS: tuple[str, ...] = tuple(f"val_{m}" for m in COCO_METRICS)
TEST_METRICS: tuple[str, ...] = tuple(f"test_{m}" for m in COCO_METRICS)


def prefixed(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """``{"mAP": …}`` → ``{"val_mAP": …}``."""
    return {f"{prefix}{k}": v for k, v in metrics.items()}


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
    return _summarize(cocoeval(ground_truth, detections))


def coco_metrics_per_image(
    ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]]
) -> tuple[dict[str, float], str, PerImageEval]:
    """:func:`coco_metrics` and the per-image evaluation the test-set bootstrap resamples
    (model/bootstrap.py)."""
    ev = cocoeval(ground_truth, detections)
    return (*_summarize(ev), per_image_eval(ev))


def cocoeval(ground_truth: dict[str, Any], detections: Sequence[dict[str, Any]]) -> COCOeval:
    """COCOeval after ``evaluate()`` and ``accumulate()``, with our maxDets."""
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
    return ev


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
    *,
    clip: bool = False,
) -> list[dict[str, Any]]:
    """Turn ``postprocess`` outputs of a batch into COCO result dicts in original pixels.

    ``outputs[i]``: ``(K, 7)`` x1, y1, x2, y2 (input pixels), obj, cls_conf, class (0-based), or
    None. ``ratios[i]``: letterbox scale (input / original; 1 for boxes already in frame
    pixels). ``image_sizes[id] = (width, height)``. ``category_ids[c]`` is the COCO id of class
    ``c``. ``clip`` clips the boxes to the image (``eval_clip_boxes``; official: no).
    """
    results: list[dict[str, Any]] = []
    for out, image_id, ratio in zip(outputs, image_ids, ratios, strict=True):
        if out is None or len(out) == 0:
            continue
        out = out.detach().float().cpu()
        w, h = image_sizes[int(image_id)]
        boxes = out[:, :4] / ratio  # (K, 4) x1, y1, x2, y2 in original pixels
        if clip:
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


def slice_settings(
    cfg: TrialConfig, *, conf: float | None = None, nms_iou: float | None = None
) -> SliceSettings:
    """The sliced-inference settings of ``cfg`` (``conf``/``nms_iou`` override its own)."""
    return SliceSettings(
        tile=cfg.tile_size,
        overlap=cfg.tile_overlap,
        num_classes=cfg.num_classes,
        conf=cfg.test_conf if conf is None else conf,
        nms_iou=cfg.nms_iou if nms_iou is None else nms_iou,
        full_frame_size=cfg.img_size if cfg.tile_full_frame else 0,
        channels_last=cfg.channels_last,
    )


def _letterbox_outputs(
    net: nn.Module,
    images: torch.Tensor,
    cfg: TrialConfig,
    conf: float,
    nms_iou: float,
    timings: dict[str, float] | None = None,
) -> list[torch.Tensor | None]:
    """Postprocessed detections (input pixels) of a letterboxed float batch ``[B, 3, S, S]``."""
    return detect_batch(
        net, images, num_classes=cfg.num_classes, conf=conf, nms_iou=nms_iou,
        channels_last=cfg.channels_last, timings=timings,
    )


def _scored(
    split: DetectionSplit,
    results: list[dict[str, Any]],
    *,
    images: int,
    forwards: int,
    load_s: float,
    timings: dict[str, float],
    per_image: bool = False,
) -> dict[str, Any]:
    """COCO-score ``results`` and gather the figures :func:`evaluate_coco` returns."""
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if per_image:
        metrics, summary, extra["per_image"] = coco_metrics_per_image(
            split.to_coco_dict(), results
        )
    else:
        metrics, summary = coco_metrics(split.to_coco_dict(), results)
    return {
        **metrics,
        **extra,
        "summary": summary,
        "num_detections": len(results),
        "images": images,
        "forwards": forwards,
        "load_s": load_s,
        "forward_s": timings.get("forward_s", 0.0),
        "nms_s": timings.get("nms_s", 0.0) + timings.get("merge_s", 0.0),
        **({"merge_s": timings["merge_s"]} if "merge_s" in timings else {}),
        "cocoeval_s": time.perf_counter() - t0,
    }


def evaluate_coco(
    net: nn.Module,
    split: DetectionSplit,
    cfg: TrialConfig,
    *,
    progress: bool = False,
    loader: Iterable[tuple[torch.Tensor, list[int], list[float]]] | None = None,
    per_image: bool = False,
) -> dict[str, Any]:
    """Evaluate ``net`` (any mode; restored afterwards) on ``split``: letterboxed at
    ``cfg.img_size``, or by sliced inference over ``tile_size`` tiles with ``input_mode: tiles``.

    Returns the 12 :data:`COCO_METRICS` (floats) plus ``summary`` (the summary text),
    ``num_detections``, ``images``, ``forwards`` (network inputs: images, or tiles) and the
    seconds spent in ``load_s`` (waiting for the loader), ``forward_s``, ``nms_s`` (with the
    conversion to COCO results; with tiles also the merge, ``merge_s`` alone) and
    ``cocoeval_s``. ``loader`` (letterbox only) defaults to ``build_eval_loader(split,
    cfg.img_size, …)``. ``per_image`` adds ``per_image``, the
    :class:`~model.bootstrap.PerImageEval` of the scoring (for the test-set bootstrap).
    """
    if cfg.input_mode == "tiles":
        return _evaluate_sliced(net, split, cfg, progress=progress, per_image=per_image)
    device = next(net.parameters()).device
    if loader is None:
        loader = build_eval_loader(
            split, cfg.img_size, batch_size=cfg.batch_size, workers=cfg.workers, device=device
        )
    sizes = {int(img["id"]): (int(img["width"]), int(img["height"])) for img in split.images}
    category_ids = sorted(int(c["id"]) for c in split.categories)
    results: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    load_s = 0.0
    n_images = 0
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            tick = time.perf_counter()
            for images, image_ids, ratios in tqdm(
                loader, desc="eval", disable=not progress, leave=False
            ):
                load_s += time.perf_counter() - tick
                images = images.to(device, non_blocking=True).float()
                outputs = _letterbox_outputs(
                    net, images, cfg, cfg.test_conf, cfg.nms_iou, timings=timings
                )
                n_images += len(image_ids)
                results.extend(
                    to_coco_results(
                        outputs, image_ids, ratios, sizes, category_ids, clip=cfg.eval_clip_boxes
                    )
                )
                tick = time.perf_counter()
    finally:
        net.train(was_training)
    return _scored(
        split, results, images=n_images, forwards=n_images, load_s=load_s, timings=timings,
        per_image=per_image,
    )


def _evaluate_sliced(
    net: nn.Module, split: DetectionSplit, cfg: TrialConfig, *, progress: bool = False,
    per_image: bool = False,
) -> dict[str, Any]:
    """:func:`evaluate_coco` for ``input_mode: tiles``: sliced inference on the full frames."""
    loader = build_frame_loader(split, batch_size=cfg.batch_size, workers=cfg.workers)
    sizes = {int(img["id"]): (int(img["width"]), int(img["height"])) for img in split.images}
    category_ids = sorted(int(c["id"]) for c in split.categories)
    settings = slice_settings(cfg)
    results: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    load_s, n_images = 0.0, 0
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            tick = time.perf_counter()
            for frames, image_ids in tqdm(loader, desc="eval", disable=not progress, leave=False):
                load_s += time.perf_counter() - tick
                found = sliced_detect(
                    net, frames, settings, batch_size=cfg.batch_size, timings=timings
                )
                n_images += len(frames)
                results.extend(
                    to_coco_results(
                        found, image_ids, [1.0] * len(found), sizes, category_ids,
                        clip=cfg.eval_clip_boxes,
                    )
                )
                tick = time.perf_counter()
    finally:
        net.train(was_training)
    forwards = int(timings.pop("tiles", 0))
    return _scored(
        split, results, images=n_images, forwards=forwards, load_s=load_s, timings=timings,
        per_image=per_image,
    )


# --- inference on raw frames (study/cli/detect.py) ---


def predict_images(
    net: nn.Module,
    images: Sequence[np.ndarray],
    cfg: TrialConfig,
    *,
    conf: float | None = None,
    nms_iou: float | None = None,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Detect objects in BGR uint8 images the way evaluation does; one ``(K, 6)`` array each.

    ``cfg`` decides the path: letterbox at ``img_size`` (as the eval loader), or sliced
    inference with ``input_mode: tiles``; boxes are clipped when ``eval_clip_boxes`` is set.
    ``conf``/``nms_iou`` override ``cfg.test_conf``/``cfg.nms_iou``.

    Columns: x1, y1, x2, y2 (original pixels), score (obj × cls), class (0-based).
    """
    if not images:
        return []
    conf = cfg.test_conf if conf is None else conf
    nms_iou = cfg.nms_iou if nms_iou is None else nms_iou
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            if cfg.input_mode == "tiles":
                settings = slice_settings(cfg, conf=conf, nms_iou=nms_iou)
                outputs: list[torch.Tensor | None] = list(
                    sliced_detect(net, images, settings, batch_size=batch_size)
                )
                ratios = [1.0] * len(images)
            else:
                outputs, ratios = [], []
                for start in range(0, len(images), batch_size):
                    canvases, rs = zip(
                        *(letterbox(img, cfg.img_size) for img in images[start:start + batch_size]),
                        strict=True,
                    )
                    batch = torch.from_numpy(np.stack(canvases)).to(device)
                    batch = batch.permute(0, 3, 1, 2).float().contiguous()  # (B, 3, S, S)
                    outputs.extend(_letterbox_outputs(net, batch, cfg, conf, nms_iou))
                    ratios.extend(rs)
    finally:
        net.train(was_training)
    found: list[np.ndarray] = []
    for img, out, ratio in zip(images, outputs, ratios, strict=True):
        if out is None or len(out) == 0:
            found.append(np.zeros((0, 6), dtype=np.float32))
            continue
        out = out.detach().float().cpu()
        boxes = out[:, :4] / ratio
        if cfg.eval_clip_boxes:
            h, w = img.shape[:2]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        score = (out[:, 4] * out[:, 5])[:, None]
        found.append(torch.cat([boxes, score, out[:, 6:7]], dim=1).numpy())
    return found
