"""IoU-family and NWD box measures and regression losses; boxes are (cx, cy, w, h) in input pixels.

``pairwise_iou`` feeds the SimOTA cost and keeps the official ``bboxes_iou`` arithmetic, operation
for operation, so that assignments match the reference bit for bit. ``bbox_iou`` and
``iou_family_loss`` are elementwise and built for the regression loss: they run in at least float32
(fp16 areas of a 300 px box overflow) and keep values and gradients finite for zero-size and huge
boxes.
"""

from __future__ import annotations

import math
from typing import get_args

import torch
from torch import Tensor

from model.config import RegLoss, check_choice

# The regression losses are the config's value set; all but "nwd" are measures of bbox_iou.
REG_LOSSES: tuple[str, ...] = get_args(RegLoss)
IOU_KINDS: tuple[str, ...] = tuple(k for k in REG_LOSSES if k != "nwd")
_EPS = 1e-7  # guards denominators of degenerate (zero-size) boxes; far below any real pixel area


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
    check_choice("IoU loss kind", kind, IOU_KINDS)
    return _bbox_iou(a, b, kind)


def _bbox_iou(a: Tensor, b: Tensor, kind: str) -> Tensor:
    """:func:`bbox_iou` for a ``kind`` already checked."""
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


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with value and gradient 0 at x = 0 (plain sqrt has an infinite gradient there)."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), 0.0)


def _nwd(a: Tensor, b: Tensor, constant: float) -> Tensor:
    """exp(-W2 / C) of broadcast (..., 4) boxes -> (...)."""
    w2 = (a[..., :2] - b[..., :2]).pow(2).sum(-1) + ((a[..., 2:] - b[..., 2:]) / 2).pow(2).sum(-1)
    return torch.exp(-_safe_sqrt(w2) / constant)


def nwd(a: Tensor, b: Tensor, constant: float) -> Tensor:
    """Elementwise Normalized Gaussian Wasserstein Distance of box ``a[i]`` and ``b[i]``.

    a, b: (N, 4) cx, cy, w, h -> (N,) in (0, 1], at least float32. Wang et al. 2021 (arXiv
    2110.13389, sec. 3): a box is the Gaussian N([cx, cy], diag(w^2 / 4, h^2 / 4)); between two
    W2^2 = (cx1 - cx2)^2 + (cy1 - cy2)^2 + ((w1 - w2) / 2)^2 + ((h1 - h2) / 2)^2 and
    NWD = exp(-sqrt(W2^2) / C), C in pixels (``constant``, the config's ``nwd_constant``).
    Unlike IoU it changes smoothly with the centre distance of disjoint boxes, so a few pixels'
    error on a tiny box costs what it costs on a large one. Identical boxes give exactly 1
    (the sqrt is taken as 0 with gradient 0 at W2 = 0 instead of NaN).
    """
    _check_pair(a, b)
    a, b = _upcast(a, b)
    return _nwd(a, b, constant)


def pairwise_nwd(a: Tensor, b: Tensor, constant: float) -> Tensor:
    """NWD of every box of ``a`` with every box of ``b``: (..., N, 4), (..., M, 4) -> (..., N, M),
    at least float32 (see :func:`nwd`)."""
    a, b = _upcast(a, b)
    return _nwd(a.unsqueeze(-2), b.unsqueeze(-3), constant)


def iou_family_loss(
    pred: Tensor, target: Tensor, kind: str = "iou", *, nwd_constant: float = 12.8
) -> Tensor:
    """Per-box regression loss (N,) of predicted vs target boxes, both (N, 4) cx, cy, w, h.

    ``iou``: 1 - IoU^2 (the official YOLOX loss); ``giou``/``diou``/``ciou``: 1 - the measure of
    :func:`bbox_iou`. Unlike ``iou``, the last three still pull disjoint boxes together (IoU = 0 has
    no gradient), which matters for small objects whose early predictions rarely overlap.
    ``nwd``: 1 - :func:`nwd` with C = ``nwd_constant`` pixels (used only by ``nwd``).
    """
    check_choice("IoU loss kind", kind, REG_LOSSES)
    return regression_loss(pred, target, kind, nwd_constant=nwd_constant)


def regression_loss(
    pred: Tensor, target: Tensor, kind: str, *, nwd_constant: float = 12.8
) -> Tensor:
    """:func:`iou_family_loss` for a ``kind`` its caller checked (``yolox_loss``, every step)."""
    if kind == "nwd":
        return 1 - nwd(pred, target, nwd_constant)
    value = _bbox_iou(pred, target, kind)
    if kind == "iou":
        return 1 - value.pow(2)
    return 1 - value
