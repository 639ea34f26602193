"""Detections from decoded head outputs: score filter, then class-aware non-maximum suppression.

Same semantics as the official ``yolox.utils.postprocess``: score = objectness x best class score,
kept when >= ``conf_thre``, then NMS (a box is dropped when its IoU with a higher-scoring kept box
of the same class is > ``nms_thre``). NMS runs through ``torchvision.ops`` when torchvision
imports, else OpenCV's ``cv2.dnn.NMSBoxesBatched``, else a vectorised torch implementation
(:func:`nms_torch`, also the check of the other two). Unlike the official function, the input is
not modified in place.
"""

from __future__ import annotations

from functools import cache
from types import ModuleType

import torch
from torch import Tensor

NMS_BACKENDS: tuple[str, ...] = ("torchvision", "opencv", "torch")


@cache
def _torchvision_ops() -> ModuleType | None:
    try:
        import torchvision.ops as ops
    except (ImportError, RuntimeError, OSError):  # absent, or built for another torch
        return None
    return ops


@cache
def _cv2_dnn() -> ModuleType | None:
    try:
        import cv2
    except ImportError:
        return None
    return cv2.dnn if hasattr(cv2.dnn, "NMSBoxesBatched") else None


def nms_backend() -> str:
    """The NMS implementation ``postprocess`` uses here: "torchvision", "opencv" or "torch"."""
    if _torchvision_ops() is not None:
        return "torchvision"
    if _cv2_dnn() is not None:
        return "opencv"
    return "torch"


def box_iou_xyxy(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix of (N, 4) and (M, 4) boxes x1, y1, x2, y2 -> (N, M)."""
    lo = torch.max(a[:, None, :2], b[None, :, :2])
    hi = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)  # (N, M)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def nms_torch(
    boxes: Tensor, scores: Tensor, iou_threshold: float, classes: Tensor | None = None
) -> Tensor:
    """Greedy NMS, exact, vectorised (a loop over rounds, not over boxes).

    boxes: (N, 4) x1, y1, x2, y2; scores: (N,); classes: (N,) or None (class-agnostic).
    Returns kept indices (K,) int64 by decreasing score (ties: lower index first).
    Greedy keep[j] = no kept i before j (by score) suppresses j; iterating that rule from
    "all kept" fixes one more position per round at least and usually converges in a few rounds.
    Memory is N x N, fine for the few thousand boxes left after the score filter.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    b = boxes[order].float()
    suppresses = box_iou_xyxy(b, b) > iou_threshold  # (N, N) [i, j]: i would suppress j
    if classes is not None:
        c = classes[order]
        suppresses &= c[:, None] == c[None, :]
    suppresses = suppresses.triu(diagonal=1)  # only a higher-scoring box suppresses
    keep = torch.ones(order.numel(), dtype=torch.bool, device=boxes.device)
    for _ in range(order.numel()):
        new = ~(suppresses & keep[:, None]).any(0)
        if torch.equal(new, keep):
            break
        keep = new
    return order[keep]


def _nms_opencv(
    boxes: Tensor, scores: Tensor, iou_threshold: float, classes: Tensor | None
) -> Tensor:
    """cv2.dnn NMS. It takes (x, y, w, h) boxes and keeps only scores strictly above its score
    threshold, which must be >= 0; ours is applied before (>= conf_thre), so it gets 0 and any
    zero score (conf_thre <= 0 only) goes to :func:`nms_torch` instead."""
    if not bool((scores > 0).all()):
        return nms_torch(boxes, scores, iou_threshold, classes)
    dnn = _cv2_dnn()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1).double().cpu().numpy()
    s = scores.float().cpu().numpy()
    if classes is None:
        idx = dnn.NMSBoxes(xywh, s, 0.0, float(iou_threshold))
    else:
        ids = classes.to(torch.int32).cpu().numpy()
        idx = dnn.NMSBoxesBatched(xywh, s, ids, 0.0, float(iou_threshold))
    keep = torch.as_tensor(idx, dtype=torch.long).reshape(-1).to(boxes.device)
    # by decreasing score, ties by index, as the other backends
    return keep[torch.argsort(scores[keep], descending=True, stable=True)]


def nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    classes: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """Class-aware (or, with ``classes=None``, class-agnostic) NMS through ``backend``
    (default :func:`nms_backend`). boxes (N, 4) x1, y1, x2, y2 -> kept indices (K,)."""
    backend = backend or nms_backend()
    if backend not in NMS_BACKENDS:
        raise ValueError(
            f"unknown NMS backend {backend!r}; use one of {', '.join(map(repr, NMS_BACKENDS))}"
        )
    if backend == "torchvision":
        ops = _torchvision_ops()
        if ops is None:
            raise ValueError(
                "NMS backend 'torchvision' requested but torchvision does not import; "
                "install it (pip install torchvision) or use 'opencv' or 'torch'"
            )
        if classes is None:
            return ops.nms(boxes, scores, iou_threshold)
        return ops.batched_nms(boxes, scores, classes, iou_threshold)
    if backend == "opencv":
        if _cv2_dnn() is None:
            raise ValueError(
                "NMS backend 'opencv' needs cv2.dnn.NMSBoxesBatched (OpenCV >= 4.7); "
                "upgrade opencv-python-headless or use 'torch'"
            )
        return _nms_opencv(boxes, scores, iou_threshold, classes)
    return nms_torch(boxes, scores, iou_threshold, classes)


def postprocess(
    prediction: Tensor,
    num_classes: int,
    conf_thre: float = 0.01,
    nms_thre: float = 0.65,
    class_agnostic: bool = False,
    *,
    backend: str | None = None,
) -> list[Tensor | None]:
    """Per image, the detections left after the score filter and NMS.

    prediction: (B, A, 5 + C) decoded: cx, cy, w, h in input pixels, objectness and class scores
    (after sigmoid). Returns B entries, each None (nothing left) or (K, 7): x1, y1, x2, y2,
    objectness, best class score, class id (as float), by decreasing score.
    ``backend`` forces an NMS implementation (see :func:`nms_backend`).
    """
    if prediction.dim() != 3 or prediction.shape[-1] < 5 + num_classes:
        raise ValueError(
            f"postprocess: prediction must be (B, A, 5 + num_classes="
            f"{5 + num_classes}); got {tuple(prediction.shape)}"
        )
    out: list[Tensor | None] = []
    for image_pred in prediction:  # (A, 5 + C); few images, NMS is per image anyway
        cxcy, wh = image_pred[:, :2], image_pred[:, 2:4]
        class_conf, class_pred = image_pred[:, 5 : 5 + num_classes].max(1, keepdim=True)
        obj = image_pred[:, 4:5]
        det = torch.cat(
            [cxcy - wh / 2, cxcy + wh / 2, obj, class_conf, class_pred.to(obj.dtype)], 1
        )  # (A, 7)
        det = det[(obj * class_conf).squeeze(1) >= conf_thre]  # (K, 7)
        if det.shape[0] == 0:
            out.append(None)
            continue
        classes = None if class_agnostic else det[:, 6].long()
        out.append(det[nms(det[:, :4], det[:, 4] * det[:, 5], nms_thre, classes, backend)])
    return out
