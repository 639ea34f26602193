"""Uniform matching (YOLOF: Chen et al., CVPR 2021) with its ignore rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from model.assign.overlap import broadcast_iou
from model.assign.points import dense_ious, prior_boxes, resolve_sparse, smallest_k_index, to_xyxy
from model.assign.types import AssignInputs, BatchAssignment

if TYPE_CHECKING:
    from model.assign.dynamic import DynamicState
    from model.assign.settings import AssignSettings

UNIFORM_K = 4  # YOLOF (Uniform Matching): k = 4 anchors and 4 predictions
UNIFORM_PRIOR_SCALE = 1.0  # our prior box for YOLOF's anchor: the cell itself (see uniform)
UNIFORM_NEG_IGNORE = 0.7  # YOLOF: negatives whose prediction has IoU > 0.7 with an object ignored
UNIFORM_POS_IGNORE = 0.15  # YOLOF: positives whose anchor has IoU < 0.15 with its object ignored


@torch.no_grad()
def uniform(
    gt_bboxes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    *,
    k: int = UNIFORM_K,
) -> BatchAssignment:
    """Uniform matching (YOLOF: Chen et al., "You Only Look One-level Feature", CVPR 2021,
    section "Uniform Matching").

    Each object takes the ``k`` priors and the ``k`` predicted boxes nearest to it by the L1
    distance of their (x1, y1, x2, y2) coordinates, so every object, large or tiny, gets up to
    2k positives. YOLOF's ignore rules: a positive whose prior has IoU < 0.15 with its object
    is dropped and ignored, and a negative whose predicted box has IoU > 0.7 with some object is
    ignored (``ignore_mask``: left out of the objectness loss, YOLOF's classification loss).

    Departures, for an anchor-free multi-level head: the prior of a point is its cell (a square
    of 1 x stride; YOLOF has sized anchors on one level); priors of all levels compete; a point
    chosen by several objects goes to the one nearest in L1 (YOLOF keeps the last written); and
    an object's single best-IoU prior positive is never dropped by the 0.15 rule, since a 4 px
    box straddling two 8 px cells reaches at most IoU 0.05 with any cell.
    """
    valid = gt_valid.bool()
    gt = gt_bboxes.float()
    priors = prior_boxes(x_shifts, y_shifts, strides, UNIFORM_PRIOR_SCALE)  # (A, 4)
    gt_xyxy = to_xyxy(gt)  # (B, G, 4)
    b = gt.shape[0]
    prior_xyxy = to_xyxy(priors).expand(b, -1, -1)  # (B, A, 4)
    cost_prior = torch.cdist(gt_xyxy, prior_xyxy, p=1)  # (B, G, A) L1 distances
    cost_pred = torch.cdist(gt_xyxy, to_xyxy(pred_bboxes.float()), p=1)
    # (B, G, 2k) the k nearest priors and the k nearest predictions, in point order (a point
    # chosen both ways appears twice, harmlessly: claims are settled per point)
    cand = torch.cat(
        [smallest_k_index(cost_prior, k, nonneg=True), smallest_k_index(cost_pred, k, True)], -1
    ).sort(-1).values
    score = -torch.minimum(cost_prior.gather(-1, cand), cost_pred.gather(-1, cand))
    prior_iou = broadcast_iou(gt.unsqueeze(-2), priors[cand])  # (B, G, 2k)
    best = prior_iou.argmax(-1, keepdim=True)  # each object's best prior (ties: lower point)
    keep_best = torch.zeros_like(prior_iou, dtype=torch.bool).scatter_(-1, best, True)
    dropped = (prior_iou < UNIFORM_POS_IGNORE) & ~keep_best & valid.unsqueeze(-1)
    claim = valid.unsqueeze(-1) & ~dropped
    asg = resolve_sparse(cand, claim, score, gt, pred_bboxes)
    high = (dense_ious(gt, valid, pred_bboxes) > UNIFORM_NEG_IGNORE).any(1)  # (B, A)
    was_dropped = torch.zeros_like(high)
    bi, gi, ki = dropped.nonzero(as_tuple=True)
    was_dropped[bi, cand[bi, gi, ki]] = True
    ignore = ~asg.fg_mask & (high | was_dropped)
    return asg._replace(ignore_mask=ignore)


def assign(inputs: AssignInputs, settings: AssignSettings, state: DynamicState) -> BatchAssignment:
    """The registry's entry: :func:`uniform` with ``assign_k`` (0 = :data:`UNIFORM_K`)."""
    return uniform(
        inputs.gt_bboxes, inputs.gt_valid, inputs.pred_bboxes, *inputs.grid,
        k=settings.assign_k or UNIFORM_K,
    )
