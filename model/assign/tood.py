"""TOOD's task-aligned sample assignment (Feng et al., "TOOD: Task-aligned One-stage Object
Detection", ICCV 2021, sec. 3.2), as Ultralytics' and PP-YOLOE's TaskAlignedAssigner use it.

The rule (sec. 3.2, "Task-aligned Sample Assignment"): each prediction's alignment with an object
is t = s^alpha * u^beta, s its classification score for the object's class and u the IoU of its
predicted box with the object (alpha = 1, beta = 6 in the paper); each object takes the m
predictions of largest t (m = 13) as positives; the class target of a positive is t normalised
per object so that its largest value equals the largest IoU among that object's positives
(t_hat = t / max t * max u, the paper's t-hat in its classification loss).

How it meets YOLOX's anchor-free head, and where we depart:
- candidates: the points within ``center_radius`` strides of the object's centre (SimOTA's
  square, 3 x 3 points a level at 1.5), not the points inside the box (the reference code's
  ``is_in_gts``): a 4-10 px bottle holds no cell centre of stride 16 or 32 and often none of
  stride 8, so the box rule would leave it without a candidate; the square gives every object
  up to 27 (>= m), and it is the region official YOLOX's SimOTA uses;
- s = sigmoid(objectness) * sigmoid(class logit): the score YOLOX ranks detections by at
  inference (TOOD's head has no objectness; its s is that ranking score);
- a positive needs t > 0 (as the authors' code: ``candidate_metrics > 0``): a prediction whose box
  misses the object (u = 0) is not pulled towards it;
- a point claimed by several objects goes to the object of highest IoU u (the reference code's
  rule; the paper does not say), ties to the lower object index;
- t_hat is the class target wherever ``cls_target`` puts the IoU (``cls_target: iou``: BCE
  against t_hat, the paper's positive term without its focal factor; ``qfl``: with
  |t_hat - s|^2, the paper's form; ``cleanliness``: 0.75 t_hat + 0.25 score). The regression is
  not weighted by t_hat (the paper's L_reg is): YOLOX divides each term by the positive count,
  and t_hat << 1 for most positives would shrink the box loss and change ``reg_weight``'s
  meaning (Ultralytics and PP-YOLOE normalise by the sum of t_hat instead);
- no warm-up with ATSS (TOOD's first epochs): t uses the predictions from the first step, as
  SimOTA's cost does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from model.assign.overlap import broadcast_iou
from model.assign.points import gather_rows, region_candidates, resolve_sparse
from model.assign.types import AssignError, AssignInputs, BatchAssignment
from model.config import CENTER_RADIUS, TOOD_ALPHA, TOOD_BETA

if TYPE_CHECKING:
    from model.assign.dynamic import DynamicState
    from model.assign.settings import AssignSettings

TOOD_K = 13  # the paper's m: positives per object (with alpha = 1, beta = 6)


@torch.no_grad()
def tood(
    gt_bboxes: Tensor,
    gt_classes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    cls_logits: Tensor,
    obj_logits: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    *,
    k: int = TOOD_K,
    alpha: float = TOOD_ALPHA,
    beta: float = TOOD_BETA,
    center_radius: float = CENTER_RADIUS,
) -> BatchAssignment:
    """Task-aligned assignment of a padded batch (the module docstring gives the rule).

    Inputs as :class:`~model.assign.types.AssignInputs`: gt_bboxes (B, G, 4), gt_classes (B, G),
    gt_valid (B, G), pred_bboxes (B, A, 4), cls_logits (B, A, C), obj_logits (B, A), grid (A,).
    Returns the assignment with ``cls_quality`` (B, A): t_hat of each positive, 0 elsewhere.
    """
    valid = gt_valid.bool()
    gt = gt_bboxes.float()
    cand, region = region_candidates(gt, valid, x_shifts, y_shifts, strides, center_radius)
    ious = broadcast_iou(gt.unsqueeze(-2), gather_rows(pred_bboxes.float(), cand))  # (B, G, K)
    score = _scores(cls_logits, obj_logits, gt_classes, valid, cand)  # (B, G, K) float64
    # float64: u^6 of a 0.001 IoU times a 1e-4 score is 1e-22, where float32 ranks coarsely
    metric = (score.pow(alpha) * ious.double().pow(beta)).masked_fill_(~region, 0.0)
    order = torch.argsort(-metric, dim=-1, stable=True)  # largest first; ties: lower point
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order)
    )
    claim = (rank < k) & (metric > 0) & region
    asg = resolve_sparse(cand, claim, ious, gt, pred_bboxes)  # conflicts: the highest IoU
    return asg._replace(cls_quality=_normalized(asg, cand, claim, metric, ious))


def _scores(
    cls_logits: Tensor, obj_logits: Tensor, gt_classes: Tensor, valid: Tensor, cand: Tensor
) -> Tensor:
    """(B, G, K) float64 sigmoid(obj) * sigmoid(cls of the object's class) of each candidate."""
    b, a, c = cls_logits.shape
    ids = gt_classes.long().masked_fill(~valid, 0)
    bad = valid & ((ids < 0) | (ids >= c))
    if bool(bad.any()):
        raise AssignError(
            f"tood: object class ids must be in [0, {c}) (the number of class logits); got "
            f"{gt_classes[bad].unique().tolist()}"
        )
    img = torch.arange(b, device=cand.device).view(b, 1, 1)
    cls = cls_logits[img, cand, ids.unsqueeze(-1)].double().sigmoid()  # (B, G, K)
    return cls * obj_logits.reshape(b, a)[img, cand].double().sigmoid()


def _normalized(
    asg: BatchAssignment, cand: Tensor, claim: Tensor, metric: Tensor, ious: Tensor
) -> Tensor:
    """(B, A) float32 t_hat = t / max t * max u over each object's positives (after conflicts),
    0 for background."""
    b, g, _ = cand.shape
    bi, gi, ki = claim.nonzero(as_tuple=True)  # (P,) claims
    point = cand[bi, gi, ki]
    won = asg.matched_gt_inds[bi, point] == gi  # the claims that became positives
    bi, gi, ki, point = bi[won], gi[won], ki[won], point[won]
    t, u = metric[bi, gi, ki], ious[bi, gi, ki].double()
    obj = bi * g + gi  # (F,) flat (image, object)
    max_t = torch.zeros(b * g, dtype=torch.float64, device=cand.device)
    max_t.scatter_reduce_(0, obj, t, "amax")  # t > 0 on positives, so 0 is a safe start
    max_u = torch.zeros_like(max_t).scatter_reduce_(0, obj, u, "amax")
    quality = torch.zeros(asg.fg_mask.shape, device=cand.device)
    quality[bi, point] = (t / max_t[obj] * max_u[obj]).float()
    return quality


def assign(inputs: AssignInputs, settings: AssignSettings, state: DynamicState) -> BatchAssignment:
    """The registry's entry: :func:`tood` with ``assign_k`` (0 = :data:`TOOD_K`),
    ``tood_alpha``, ``tood_beta`` and ``center_radius``."""
    return tood(
        *inputs,
        k=settings.assign_k or TOOD_K,
        alpha=settings.tood_alpha,
        beta=settings.tood_beta,
        center_radius=settings.center_radius,
    )
