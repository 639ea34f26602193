"""Fixed top-k: the k best-IoU predictions in the centre region (a small-object baseline)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from model.assign.overlap import broadcast_iou
from model.assign.points import gather_rows, region_candidates, resolve_sparse, smallest_k
from model.assign.types import AssignInputs, BatchAssignment
from model.config import CENTER_RADIUS

if TYPE_CHECKING:
    from model.assign.dynamic import DynamicState
    from model.assign.settings import AssignSettings

TOPK_K = 9  # no paper: ATSS's 9


@torch.no_grad()
def topk(
    gt_bboxes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    *,
    k: int = TOPK_K,
    center_radius: float = CENTER_RADIUS,
) -> BatchAssignment:
    """Fixed top-k: each object takes the ``k`` predictions of highest IoU among the points
    within ``center_radius`` strides of its centre (SimOTA's centre region, all levels), however
    small those IoUs are (the fixed-k rule the notes list as a competition trick for small
    objects: no dynamic k that rounds a tiny object's IoU sum down to 1). Ties in IoU go to the
    lower point index; a point claimed by several objects goes to the one of highest IoU.
    """
    valid = gt_valid.bool()
    gt = gt_bboxes.float()
    cand, region = region_candidates(gt, valid, x_shifts, y_shifts, strides, center_radius)
    ious = broadcast_iou(gt.unsqueeze(-2), gather_rows(pred_bboxes.float(), cand))  # (B, G, K)
    order = (-ious).masked_fill(~region, math.inf)  # outside the region: last
    claim = smallest_k(order, k) & region  # columns in point order: ties to the lower index
    return resolve_sparse(cand, claim, ious, gt, pred_bboxes)


def assign(inputs: AssignInputs, settings: AssignSettings, state: DynamicState) -> BatchAssignment:
    """The registry's entry: :func:`topk` with ``assign_k`` (0 = :data:`TOPK_K`) and
    ``center_radius``."""
    return topk(
        inputs.gt_bboxes, inputs.gt_valid, inputs.pred_bboxes, *inputs.grid,
        k=settings.assign_k or TOPK_K, center_radius=settings.center_radius,
    )
