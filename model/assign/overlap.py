"""How much two boxes overlap: IoU and NWD, the measures assignment ranks by (and the box losses
of ``model/box_losses.py`` are built from). Boxes are (cx, cy, w, h) in input pixels.

- :func:`pairwise_iou`: every box against every box, the official ``bboxes_iou`` arithmetic
  operation for operation (SimOTA's cost, bit-identical assignments);
- :func:`broadcast_iou`: box against box over broadcast shapes (the other assigners);
- :func:`nwd` and :func:`pairwise_nwd`: the Normalized Gaussian Wasserstein Distance, with its
  constant C from the caller (the config's ``nwd_constant``, default ``NWD_CONSTANT``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.assign.types import AssignError
from model.config import NWD_CONSTANT


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


def broadcast_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of broadcast (..., 4) boxes -> (...); 0 for two empty boxes."""
    a_lo, a_hi = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b_lo, b_hi = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.minimum(a_hi, b_hi) - torch.maximum(a_lo, b_lo)).clamp(min=0).prod(-1)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def upcast_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Both boxes in a common dtype of at least float32 (gradients flow back through the cast;
    fp16 areas of a 300 px box overflow)."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype), b.to(dtype)


def check_box_pair(a: Tensor, b: Tensor) -> None:
    """Raise an AssignError unless ``a`` and ``b`` are (N, 4) boxes of the same N."""
    if a.dim() != 2 or a.shape[-1] != 4 or a.shape != b.shape:
        raise AssignError(
            "boxes must be two (N, 4) tensors of cx, cy, w, h with the same N; "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with value and gradient 0 at x = 0 (plain sqrt has an infinite gradient there)."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), 0.0)


def _nwd(a: Tensor, b: Tensor, constant: float) -> Tensor:
    """exp(-W2 / C) of broadcast (..., 4) boxes -> (...)."""
    w2 = (a[..., :2] - b[..., :2]).pow(2).sum(-1) + ((a[..., 2:] - b[..., 2:]) / 2).pow(2).sum(-1)
    return torch.exp(-_safe_sqrt(w2) / constant)


def nwd(a: Tensor, b: Tensor, constant: float = NWD_CONSTANT) -> Tensor:
    """Elementwise Normalized Gaussian Wasserstein Distance of box ``a[i]`` and ``b[i]``.

    a, b: (N, 4) cx, cy, w, h -> (N,) in (0, 1], at least float32. Wang et al. 2021 (arXiv
    2110.13389, sec. 3): a box is the Gaussian N([cx, cy], diag(w^2 / 4, h^2 / 4)); between two
    W2^2 = (cx1 - cx2)^2 + (cy1 - cy2)^2 + ((w1 - w2) / 2)^2 + ((h1 - h2) / 2)^2 and
    NWD = exp(-sqrt(W2^2) / C), C in pixels (``constant``, the config's ``nwd_constant``).
    Unlike IoU it changes smoothly with the centre distance of disjoint boxes, so a few pixels'
    error on a tiny box costs what it costs on a large one. Identical boxes give exactly 1
    (the sqrt is taken as 0 with gradient 0 at W2 = 0 instead of NaN).
    """
    check_box_pair(a, b)
    a, b = upcast_pair(a, b)
    return _nwd(a, b, constant)


def pairwise_nwd(a: Tensor, b: Tensor, constant: float = NWD_CONSTANT) -> Tensor:
    """NWD of every box of ``a`` with every box of ``b``: (..., N, 4), (..., M, 4) -> (..., N, M),
    at least float32 (see :func:`nwd`)."""
    a, b = upcast_pair(a, b)
    return _nwd(a.unsqueeze(-2), b.unsqueeze(-3), constant)
