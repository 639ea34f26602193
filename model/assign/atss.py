"""ATSS: adaptive training sample selection (Zhang et al., CVPR 2020)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from model.assign.overlap import broadcast_iou
from model.assign.points import (
    nearest_per_level,
    prior_boxes,
    prior_centres,
    resolve_sparse,
    to_xyxy,
)
from model.assign.types import AssignInputs, BatchAssignment

if TYPE_CHECKING:
    from model.assign.dynamic import DynamicState
    from model.assign.settings import AssignSettings

ATSS_K = 9  # ATSS (Algorithm 1): k = 9 candidates per level
ATSS_PRIOR_SCALE = 8.0  # ATSS for FCOS: one square anchor of 8 x stride a point


@torch.no_grad()
def atss(
    gt_bboxes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    *,
    k: int = ATSS_K,
) -> BatchAssignment:
    """ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via
    Adaptive Training Sample Selection", CVPR 2020; the section of that name, Algorithm 1).

    Per object: on each level (stride) the ``k`` points whose centres are nearest (L2) to the
    object's centre are candidates; the IoU of each candidate's prior box (a square of
    8 x stride, as ATSS gives anchor-free FCOS) with the object is computed; the threshold is
    mean + std (unbiased, as the reference) of the candidates' IoUs; positives are candidates
    with IoU >= threshold whose centre lies inside the object. A point claimed by several
    objects goes to the one of highest prior IoU. ``pred_ious`` are those of the predictions.
    The prediction is not used for the choice, only for the returned IoU.
    """
    valid = gt_valid.bool()
    gt = gt_bboxes.float()
    centres = prior_centres(x_shifts, y_shifts, strides)  # (A, 2)
    dist = (centres[:, 0] - gt[..., 0, None]).square_()  # (B, G, A) squared L2
    dist += (centres[:, 1] - gt[..., 1, None]).square_()
    cand = nearest_per_level(dist, strides, k)  # (B, G, K) candidates, K = k x levels
    priors = prior_boxes(x_shifts, y_shifts, strides, ATSS_PRIOR_SCALE)  # (A, 4)
    ious = broadcast_iou(gt.unsqueeze(-2), priors[cand])  # (B, G, K)
    n = ious.shape[-1]
    mean = ious.mean(-1, keepdim=True)
    std = ious.std(-1, keepdim=True) if n > 1 and ious.numel() else torch.zeros_like(mean)
    c, box = centres[cand], to_xyxy(gt).unsqueeze(-2)  # (B, G, K, 2), (B, G, 1, 4)
    inside = ((c - box[..., :2]) > 0).all(-1) & ((box[..., 2:] - c) > 0).all(-1)
    pos = (ious >= mean + std) & inside & valid.unsqueeze(-1)
    return resolve_sparse(cand, pos, ious, gt, pred_bboxes)


def assign(inputs: AssignInputs, settings: AssignSettings, state: DynamicState) -> BatchAssignment:
    """The registry's entry: :func:`atss` with ``assign_k`` (0 = :data:`ATSS_K`)."""
    return atss(
        inputs.gt_bboxes, inputs.gt_valid, inputs.pred_bboxes, *inputs.grid,
        k=settings.assign_k or ATSS_K,
    )
