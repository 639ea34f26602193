"""Dynamic R-CNN's label assignment (Zhang et al., ECCV 2020) on the one-stage head, with its
training state: an IoU threshold and a SmoothL1 beta that follow the predictions' quality."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from model.assign.overlap import broadcast_iou
from model.assign.points import (
    dense_ious,
    gather_rows,
    region_candidates,
    resolve_sparse,
    smallest_k,
)
from model.assign.types import AssignInputs, BatchAssignment
from model.config import CENTER_RADIUS, DYNAMIC_INTERVAL

if TYPE_CHECKING:
    from model.assign.settings import AssignSettings


@dataclass
class DynamicState:
    """Dynamic R-CNN's training state: the IoU threshold and SmoothL1 beta with the statistics
    collected since their last update. Plain numbers, saved in checkpoints by ``model/trainer.py``.

    Constants as the reference (mmdetection ``dynamic_rcnn``): initial IoU 0.4 (the threshold
    never drops below it), initial beta 1.0 (never rises above it), K_I = 75, K_beta = 10,
    updated every C = 100 iterations.
    """

    iou_thr: float = 0.4
    beta: float = 1.0
    initial_iou: float = 0.4
    initial_beta: float = 1.0
    iou_topk: int = 75
    beta_topk: int = 10
    interval: int = DYNAMIC_INTERVAL
    iteration: int = 0
    iou_history: list[float] = field(default_factory=list)
    beta_history: list[float] = field(default_factory=list)

    def observe_batch(
        self, gt_bboxes: Tensor, gt_valid: Tensor, pred_bboxes: Tensor, errors: Tensor
    ) -> None:
        """:meth:`observe` one training step: gt_bboxes (B, G, 4), gt_valid (B, G),
        pred_bboxes (B, A, 4) (its best IoUs are taken here), errors (F, 2) as there."""
        if gt_bboxes.shape[1] == 0:
            max_ious = pred_bboxes.new_zeros(pred_bboxes.shape[:2])
        else:
            max_ious = dense_ious(gt_bboxes, gt_valid, pred_bboxes).max(1).values
        self.observe(max_ious, gt_valid, errors)

    def observe(self, max_ious: Tensor, gt_valid: Tensor, errors: Tensor) -> None:
        """Record one iteration: max_ious (B, A) each prediction's best IoU with an object,
        gt_valid (B, G), errors (F, 2) |L1 error| of the positives' centre offsets; every
        ``interval`` iterations update the threshold (mean of the per-image K_I-th largest IoU)
        and beta (median of the per-batch K_beta * B-th smallest error)."""
        has = gt_valid.any(1)
        if bool(has.any()):
            kk = min(self.iou_topk, max_ious.shape[1])
            kth = max_ious[has].topk(kk, dim=1).values[:, -1]  # (B',)
            self.iou_history.extend(kth.tolist())
        if errors.numel():
            flat = errors.reshape(-1)
            kk = min(self.beta_topk * max_ious.shape[0], flat.numel())
            self.beta_history.append(float(flat.kthvalue(kk).values))
        self.iteration += 1
        if self.iteration % self.interval == 0:
            if self.iou_history:
                self.iou_thr = max(self.initial_iou, float(torch.tensor(self.iou_history).mean()))
            if self.beta_history:  # np.median's value (the mean of the middle two)
                med = float(torch.tensor(self.beta_history).quantile(0.5))
                self.beta = min(self.initial_beta, med)
            self.iou_history, self.beta_history = [], []

    def state_dict(self) -> dict:
        """The fields as plain numbers and lists (``torch.load(weights_only=True)`` reads them)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: (list(v) if isinstance(v, list) else v) for k, v in values.items()}

    def load_state_dict(self, state: dict) -> None:
        names = {f.name for f in fields(self)}
        for k, v in state.items():
            if k not in names:
                raise KeyError(f"DynamicState has no field {k!r} (fields: {sorted(names)})")
            setattr(self, k, list(v) if isinstance(v, list) else v)


@torch.no_grad()
def dynamic(
    gt_bboxes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    *,
    iou_thr: float = 0.4,
    center_radius: float = CENTER_RADIUS,
) -> BatchAssignment:
    """Dynamic label assignment (Dynamic R-CNN: Zhang et al., ECCV 2020, "Dynamic Label
    Assignment"), on the one-stage head: a prediction inside an object's centre region is
    positive when its box has IoU >= ``iou_thr`` with the object; the threshold comes from
    :class:`DynamicState` and rises with the predictions' IoUs during training (and beta,
    "Dynamic SmoothL1 Loss"). A point claimed by several objects goes to the one of highest IoU.

    Transfer: Dynamic R-CNN adds each ground-truth box to the proposals, so every object has a
    positive of IoU 1; here each object instead keeps its best-IoU prediction in its centre
    region, whatever the IoU (without it an untrained head would have no positive at all).
    """
    valid = gt_valid.bool()
    gt = gt_bboxes.float()
    cand, region = region_candidates(gt, valid, x_shifts, y_shifts, strides, center_radius)
    ious = broadcast_iou(gt.unsqueeze(-2), gather_rows(pred_bboxes.float(), cand))  # (B, G, K)
    best = smallest_k((-ious).masked_fill(~region, math.inf), 1) & region
    claim = (region & (ious >= iou_thr)) | best
    return resolve_sparse(cand, claim, ious, gt, pred_bboxes)


def assign(inputs: AssignInputs, settings: AssignSettings, state: DynamicState) -> BatchAssignment:
    """The registry's entry: :func:`dynamic` at the state's threshold, asking the loss for
    SmoothL1 of the state's beta and for the positives' errors (``smooth_l1_beta``)."""
    asg = dynamic(
        inputs.gt_bboxes, inputs.gt_valid, inputs.pred_bboxes, *inputs.grid,
        iou_thr=state.iou_thr, center_radius=settings.center_radius,
    )
    return asg._replace(smooth_l1_beta=state.beta)
