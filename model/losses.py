"""IoU-family box measures and regression losses; boxes are (cx, cy, w, h) in input pixels.

``pairwise_iou`` feeds the SimOTA cost and keeps the official ``bboxes_iou`` arithmetic, operation
for operation, so that assignments match the reference bit for bit. ``bbox_iou`` and
``iou_family_loss`` are elementwise and built for the regression loss: they run in at least float32
(fp16 areas of a 300 px box overflow) and keep values and gradients finite for zero-size and huge
boxes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

IOU_KINDS: tuple[str, ...] = ("iou", "giou", "diou", "ciou")
_EPS = 1e-7  # guards denominators of degenerate (zero-size) boxes; far below any real pixel area


def check_iou_kind(kind: str) -> str:
    """Return ``kind`` if it is one of ``IOU_KINDS``, else raise a ValueError listing them."""
    if kind not in IOU_KINDS:
        raise ValueError(
            f"unknown IoU loss kind {kind!r}; use one of {', '.join(map(repr, IOU_KINDS))}"
        )
    return kind


@torch.no_grad()
def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` with every box of ``b``, for assignment (no gradient).

    a: (..., N, 4) and b: (..., M, 4) cx, cy, w, h (leading dims broadcast) -> (..., N, M).
    Per element the same float operations as the official ``bboxes_iou(xyxy=False)``, so values
    are bit-identical; the only addition is a floor on the union so that two zero-size boxes give
    0 instead of 0/0 = NaN. Written with in-place steps into few buffers: at (16, 30, 600) a
    fresh 1 MB temporary costs more (page faults) than the arithmetic done in it.
    """
    a_lo, a_hi = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2  # (..., N, 2)
    b_lo, b_hi = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2  # (..., M, 2)
    # overlap along x, then y: min of the high edges - max of the low edges, clamped at 0
    inter = torch.minimum(a_hi[..., 0, None], b_hi[..., None, :, 0])  # (..., N, M)
    buf = torch.maximum(a_lo[..., 0, None], b_lo[..., None, :, 0])
    inter.sub_(buf).clamp_(min=0)
    torch.maximum(a_lo[..., 1, None], b_lo[..., None, :, 1], out=buf)
    inter.mul_(torch.minimum(a_hi[..., 1, None], b_hi[..., None, :, 1]).sub_(buf).clamp_(min=0))
    union = torch.add(
        (a[..., 2] * a[..., 3]).unsqueeze(-1), (b[..., 2] * b[..., 3]).unsqueeze(-2), out=buf
    )
    union.sub_(inter).clamp_(min=torch.finfo(union.dtype).tiny)
    return inter.div_(union)


def _upcast(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both boxes in a common dtype of at least float32 (gradients flow back through the cast)."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype), b.to(dtype)


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.dim() != 2 or a.shape[-1] != 4 or a.shape != b.shape:
        raise ValueError(
            "boxes must be two (N, 4) tensors of cx, cy, w, h with the same N; "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def bbox_iou(a: Tensor, b: Tensor, kind: str = "iou") -> Tensor:
    """Elementwise IoU-family measure of box ``a[i]`` against ``b[i]``.

    a, b: (N, 4) cx, cy, w, h -> (N,) in at least float32:
    ``iou``; ``giou`` = IoU - (C - U) / C with C the enclosing box area and U the union;
    ``diou`` = IoU - d^2 / c^2 with d the centre distance and c the enclosing box diagonal;
    ``ciou`` = DIoU - alpha * v, v = 4 / pi^2 * (atan(w_b / h_b) - atan(w_a / h_a))^2,
    alpha = v / (1 - IoU + v) (Zheng et al. 2020; alpha carries no gradient).
    """
    check_iou_kind(kind)
    _check_pair(a, b)
    a, b = _upcast(a, b)
    a_tl, a_br = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2  # (N, 2)
    b_tl, b_br = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    # clamp, not a (tl < br) mask: same value, and disjoint boxes get an exactly zero IoU gradient.
    wh = (torch.min(a_br, b_br) - torch.max(a_tl, b_tl)).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    iou = inter / union.clamp(min=_EPS)
    if kind == "iou":
        return iou
    enclose = torch.max(a_br, b_br) - torch.min(a_tl, b_tl)  # (N, 2) enclosing box w, h
    if kind == "giou":
        area_c = enclose[:, 0] * enclose[:, 1]
        return iou - (area_c - union) / area_c.clamp(min=_EPS)
    # Squared distances directly: the official sqrt-then-square has a NaN gradient when d = 0.
    d2 = (a[:, :2] - b[:, :2]).pow(2).sum(1)
    c2 = enclose.pow(2).sum(1).clamp(min=_EPS)
    diou = iou - d2 / c2
    if kind == "diou":
        return diou
    # Floors keep atan(w / h) finite for zero-size boxes; no effect on real (>= 1e-7 px) sizes.
    atan_a = torch.atan(a[:, 2].clamp(min=_EPS) / a[:, 3].clamp(min=_EPS))
    atan_b = torch.atan(b[:, 2].clamp(min=_EPS) / b[:, 3].clamp(min=_EPS))
    v = (4 / math.pi**2) * (atan_b - atan_a).pow(2)
    with torch.no_grad():  # Zheng et al.: alpha is a trade-off weight, not optimised
        alpha = v / (1 - iou + v).clamp(min=_EPS)
    return diou - alpha * v


def iou_family_loss(pred: Tensor, target: Tensor, kind: str = "iou") -> Tensor:
    """Per-box regression loss (N,) of predicted vs target boxes, both (N, 4) cx, cy, w, h.

    ``iou``: 1 - IoU^2 (the official YOLOX loss); ``giou``/``diou``/``ciou``: 1 - the measure of
    :func:`bbox_iou`. Unlike ``iou``, the last three still pull disjoint boxes together (IoU = 0 has
    no gradient), which matters for small objects whose early predictions rarely overlap.
    """
    value = bbox_iou(pred, target, kind)
    if kind == "iou":
        return 1 - value.pow(2)
    return 1 - value
