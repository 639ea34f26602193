"""The assignment's diagnostics by object size: positives per object, objects left without one,
the positives' IoU (counted every step by ``yolox_loss(..., assign_stats=True)``, summed over an
epoch by the trainer, reported by the study)."""

from __future__ import annotations

import torch
from torch import Tensor

from model.assign.types import BatchAssignment

# Size buckets of the assignment statistics, by sqrt(w * h) of the object in input pixels.
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("lt16", 0.0, 16.0),
    ("16_32", 16.0, 32.0),
    ("32_96", 32.0, 96.0),
    ("gt96", 96.0, float("inf")),
)


@torch.no_grad()
def assignment_stats(asg: BatchAssignment, gt_boxes: Tensor, gt_valid: Tensor) -> dict[str, Tensor]:
    """Counts for the per-epoch diagnostics, 0-dim float tensors on the batch's device (summed
    over batches by the trainer, so a GPU run syncs once an epoch, not once a step).

    gt_boxes: (B, G, 4) cx, cy, w, h; gt_valid: (B, G). Returns ``objects_<bucket>`` and
    ``positives_<bucket>`` per :data:`SIZE_BUCKETS` (by sqrt(w * h)), ``objects``,
    ``objects_without_positive``, ``positives`` and ``positive_iou_sum`` (IoU of each positive's
    prediction with its object).
    """
    b, g = gt_valid.shape
    counts = torch.zeros(b, g + 1, device=gt_valid.device)
    counts.scatter_add_(1, asg.matched_gt_inds + 1, asg.fg_mask.float())
    per_obj = counts[:, 1:][gt_valid]  # (N,) positives of each object
    size = (gt_boxes[..., 2].clamp(min=0) * gt_boxes[..., 3].clamp(min=0)).sqrt()[gt_valid]
    stats: dict[str, Tensor] = {}
    for name, lo, hi in SIZE_BUCKETS:
        inb = (size >= lo) & (size < hi)
        stats[f"objects_{name}"] = inb.sum().float()
        stats[f"positives_{name}"] = per_obj[inb].sum()
    stats["objects"] = per_obj.new_tensor(float(per_obj.numel()))
    stats["objects_without_positive"] = (per_obj == 0).sum().float()
    stats["positives"] = asg.fg_mask.sum().float()
    stats["positive_iou_sum"] = asg.pred_ious[asg.fg_mask].sum().float()
    return stats


ASSIGN_DIAGNOSTICS: tuple[str, ...] = (
    *(f"pos_per_obj_{name}" for name, _, _ in SIZE_BUCKETS),
    "no_pos_share",
    "pos_mean_iou",
)


def summarize_stats(sums: dict[str, Tensor | float]) -> dict[str, float]:
    """Summed :func:`assignment_stats` -> ``pos_per_obj_<bucket>`` (NaN-free: 0 without
    objects in the bucket), ``no_pos_share`` and ``pos_mean_iou``, as floats."""
    sums = {k: float(v) for k, v in sums.items()}
    out = {}
    for name, _, _ in SIZE_BUCKETS:
        n = sums.get(f"objects_{name}", 0.0)
        out[f"pos_per_obj_{name}"] = sums.get(f"positives_{name}", 0.0) / n if n else 0.0
    n = sums.get("objects", 0.0)
    out["no_pos_share"] = sums.get("objects_without_positive", 0.0) / n if n else 0.0
    p = sums.get("positives", 0.0)
    out["pos_mean_iou"] = sums.get("positive_iou_sum", 0.0) / p if p else 0.0
    return out
