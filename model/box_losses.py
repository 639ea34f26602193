"""The box-regression losses, a name -> function table (``BOX_LOSSES``) over the config's
``reg_loss`` values; boxes are (cx, cy, w, h) in input pixels.

The IoU family (``iou``: 1 - IoU^2, official; ``giou``, ``diou``, ``ciou``: 1 - the measure) and
``nwd`` (1 - NWD). The overlap measures themselves (IoU for assignment, NWD) live in
``model/assign/overlap.py``. ``bbox_iou`` and the losses are elementwise and built for training:
they run in at least float32 (fp16 areas of a 300 px box overflow) and keep values and gradients
finite for zero-size and huge boxes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, get_args

import torch
from torch import Tensor

from model.assign.overlap import check_box_pair, nwd, upcast_pair
from model.config import NWD_CONSTANT, RegLoss, check_choice

# The regression losses are the config's value set; all but "nwd" are measures of bbox_iou.
REG_LOSSES: tuple[str, ...] = get_args(RegLoss)
IOU_KINDS: tuple[str, ...] = tuple(k for k in REG_LOSSES if k != "nwd")
_EPS = 1e-7  # guards denominators of degenerate (zero-size) boxes; far below any real pixel area
# (pred (N, 4), target (N, 4), nwd_constant) -> (N,) loss per box; only nwd reads nwd_constant
BoxLoss = Callable[[Tensor, Tensor, float], Tensor]


class _Pair(NamedTuple):
    """Two (N, 4) box sets and the pieces every IoU-family measure shares, (N,) or (N, 2)."""

    a: Tensor
    b: Tensor
    a_tl: Tensor  # (N, 2) top-left corners
    a_br: Tensor
    b_tl: Tensor
    b_br: Tensor
    union: Tensor  # (N,)
    iou: Tensor  # (N,)


def _pair(a: Tensor, b: Tensor) -> _Pair:
    check_box_pair(a, b)
    a, b = upcast_pair(a, b)
    a_tl, a_br = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2  # (N, 2)
    b_tl, b_br = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    # clamp, not a (tl < br) mask: same value, and disjoint boxes get an exactly zero IoU gradient.
    wh = (torch.min(a_br, b_br) - torch.max(a_tl, b_tl)).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return _Pair(a, b, a_tl, a_br, b_tl, b_br, union, inter / union.clamp(min=_EPS))


def _enclosing_wh(p: _Pair) -> Tensor:
    """(N, 2) width and height of the smallest box enclosing both."""
    return torch.max(p.a_br, p.b_br) - torch.min(p.a_tl, p.b_tl)


def _giou(p: _Pair) -> Tensor:
    enclose = _enclosing_wh(p)
    area_c = enclose[:, 0] * enclose[:, 1]
    return p.iou - (area_c - p.union) / area_c.clamp(min=_EPS)


def _diou(p: _Pair) -> Tensor:
    # Squared distances directly: the official sqrt-then-square has a NaN gradient when d = 0.
    d2 = (p.a[:, :2] - p.b[:, :2]).pow(2).sum(1)
    c2 = _enclosing_wh(p).pow(2).sum(1).clamp(min=_EPS)
    return p.iou - d2 / c2


def _ciou(p: _Pair) -> Tensor:
    # Floors keep atan(w / h) finite for zero-size boxes; no effect on real (>= 1e-7 px) sizes.
    a, b = p.a, p.b
    atan_a = torch.atan(a[:, 2].clamp(min=_EPS) / a[:, 3].clamp(min=_EPS))
    atan_b = torch.atan(b[:, 2].clamp(min=_EPS) / b[:, 3].clamp(min=_EPS))
    v = (4 / math.pi**2) * (atan_b - atan_a).pow(2)
    with torch.no_grad():  # Zheng et al.: alpha is a trade-off weight, not optimised
        alpha = v / (1 - p.iou + v).clamp(min=_EPS)
    return _diou(p) - alpha * v


_IOU_MEASURES: dict[str, Callable[[_Pair], Tensor]] = {
    "iou": lambda p: p.iou,
    "giou": _giou,
    "diou": _diou,
    "ciou": _ciou,
}


def bbox_iou(a: Tensor, b: Tensor, kind: str = "iou") -> Tensor:
    """Elementwise IoU-family measure of box ``a[i]`` against ``b[i]``.

    a, b: (N, 4) cx, cy, w, h -> (N,) in at least float32:
    ``iou``; ``giou`` = IoU - (C - U) / C with C the enclosing box area and U the union;
    ``diou`` = IoU - d^2 / c^2 with d the centre distance and c the enclosing box diagonal;
    ``ciou`` = DIoU - alpha * v, v = 4 / pi^2 * (atan(w_b / h_b) - atan(w_a / h_a))^2,
    alpha = v / (1 - IoU + v) (Zheng et al. 2020; alpha carries no gradient).
    """
    check_choice("IoU loss kind", kind, IOU_KINDS)
    return _IOU_MEASURES[kind](_pair(a, b))


def iou_family_loss(
    pred: Tensor, target: Tensor, kind: str = "iou", *, nwd_constant: float = NWD_CONSTANT
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
    pred: Tensor, target: Tensor, kind: str, *, nwd_constant: float = NWD_CONSTANT
) -> Tensor:
    """:func:`iou_family_loss` for a ``kind`` its caller checked (``yolox_loss``, every step)."""
    return BOX_LOSSES[kind](pred, target, nwd_constant)


def _iou_loss(pred: Tensor, target: Tensor, nwd_constant: float) -> Tensor:
    return 1 - _pair(pred, target).iou.pow(2)  # official: 1 - IoU^2


def _iou_measure_loss(measure: Callable[[_Pair], Tensor]) -> BoxLoss:
    return lambda pred, target, nwd_constant: 1 - measure(_pair(pred, target))


def _nwd_loss(pred: Tensor, target: Tensor, nwd_constant: float) -> Tensor:
    return 1 - nwd(pred, target, nwd_constant)


BOX_LOSSES: dict[str, BoxLoss] = {
    "iou": _iou_loss,
    "giou": _iou_measure_loss(_giou),
    "diou": _iou_measure_loss(_diou),
    "ciou": _iou_measure_loss(_ciou),
    "nwd": _nwd_loss,
}
