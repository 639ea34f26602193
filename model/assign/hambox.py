"""HAMBox compensation (Liu et al., CVPR 2020) on top of any assigner's result."""

from __future__ import annotations

import torch
from torch import Tensor

from model.assign.points import dense_ious, resolve_claims, smallest_k_index
from model.assign.types import BatchAssignment

HAMBOX_K = 3  # compensate objects with fewer positives than this
HAMBOX_IOU = 0.35  # a compensated prediction's box must overlap its object at least this much


@torch.no_grad()
def hambox(
    asg: BatchAssignment,
    gt_bboxes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    *,
    k: int = HAMBOX_K,
    iou_thr: float = HAMBOX_IOU,
) -> BatchAssignment:
    """HAMBox compensation (Liu et al., "HAMBox: Delving into Mining High-Quality Anchors on Face
    Detection", CVPR 2020, online high-quality anchor mining) on top of ``asg``.

    An object with N < ``k`` positives takes up to k - N unassigned (and not ignored)
    predictions whose regressed box has IoU >= ``iou_thr`` with it, highest IoU first (ties:
    lower point index); a prediction wanted by several objects goes to the one of highest IoU.
    Compensated positives carry ``weights`` = that IoU (HAMBox's regression-aware weighting),
    the others 1. Returns the new assignment with ``weights`` (B, A) set.
    """
    valid = gt_valid.bool()
    b, g = valid.shape
    ious = dense_ious(gt_bboxes.float(), valid, pred_bboxes)  # (B, G, A)
    counts = torch.zeros(b, g + 1, dtype=torch.long, device=ious.device)
    counts.scatter_add_(1, asg.matched_gt_inds + 1, asg.fg_mask.long())  # column 0: background
    need = (k - counts[:, 1:]).clamp(min=0).masked_fill(~valid, 0)  # (B, G)
    free = ~asg.fg_mask
    if asg.ignore_mask is not None:
        free &= ~asg.ignore_mask
    eligible = free.unsqueeze(1) & (ious >= iou_thr) & (need > 0).unsqueeze(-1)
    cost = (1 - ious).masked_fill_(~eligible, 2.0)  # >= 0, so the cheap key applies
    best = smallest_k_index(cost, k, nonneg=True)  # (B, G, k') highest IoU first
    wanted = torch.arange(best.shape[-1], device=best.device) < need.unsqueeze(-1)  # (B, G, k')
    claim = torch.zeros_like(eligible).scatter_(-1, best, wanted) & eligible
    extra = resolve_claims(claim, ious, ious)
    fg = asg.fg_mask | extra.fg_mask
    weights = torch.where(extra.fg_mask, extra.pred_ious, fg.float())
    old_w = asg.weights if asg.weights is not None else asg.fg_mask.float()
    weights = torch.where(asg.fg_mask, old_w, weights)
    quality = asg.cls_quality  # a compensated positive's class target: its IoU (official)
    if quality is not None:
        quality = torch.where(asg.fg_mask, quality, extra.pred_ious)
    return asg._replace(  # the rest (ignore_mask, smooth_l1_beta) as the assigner left it
        fg_mask=fg,
        matched_gt_inds=torch.where(asg.fg_mask, asg.matched_gt_inds, extra.matched_gt_inds),
        pred_ious=torch.where(asg.fg_mask, asg.pred_ious, extra.pred_ious),
        weights=weights,
        cls_quality=quality,
    )

