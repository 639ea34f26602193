"""The YOLOX training loss: the assignment, then the box, objectness, class and L1 terms.

A plain function of the head's outputs, so it can be tested and ablated without the network.
The terms mean what they mean in the official ``YOLOXHead.get_losses``: every term is a sum divided
by the batch's foreground count (at least 1); ``iou_loss`` already carries ``reg_weight``; the
objectness BCE runs over all anchors, the class BCE over foregrounds against one-hot targets scaled
by the foreground's IoU; ``num_fg`` is foregrounds per object.

Added (issues 17, 25), each a name in a table or a field of the assignment, never a branch on a
name here: the assigner (``model.assign.ASSIGNERS``, with HAMBox on top), the box loss
(``model.box_losses.BOX_LOSSES``), the class target (:data:`CLASS_TARGETS`: ``iou``,
``cleanliness``, ``qfl``), YOLOF's ignored anchors, HAMBox's weights, Dynamic R-CNN's SmoothL1
beta on the L1 branch (``smooth_l1_beta``), TOOD's soft class target (``cls_quality``), and
per-size-bucket assignment statistics (``model/assign/diagnostics.py``). With every setting at
its default the computation is the official one, operation for operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from model.assign import AssignInputs, BatchAssignment, DynamicState, assign_batch
from model.assign.diagnostics import assignment_stats
from model.box_losses import BOX_LOSSES
from model.distributed import World
from model.yolox.errors import YOLOXInputError
from model.yolox.head_settings import LossSettings

CLEANLINESS_ALPHA = 0.75  # Li et al. 2020 (noisy anchors): cleanliness c = 0.75 loc + 0.25 cls
QFL_BETA = 2.0  # GFL (Li et al. 2020), Quality Focal Loss: beta = 2
LOSS_KEYS: tuple[str, ...] = (
    "total_loss",
    "iou_loss",
    "l1_loss",
    "conf_loss",
    "cls_loss",
    "num_fg",
)


class Positives(NamedTuple):
    """The batch's F foregrounds, image-major as official, and what every term reads of them."""

    img: Tensor  # (F,) image of each
    anchor: Tensor  # (F,) its anchor
    gt: Tensor  # (F, 5) class, cx, cy, w, h of its object
    iou: Tensor  # (F,) IoU of its prediction with its object
    quality: Tensor  # (F,) what cls_target scales: the assigner's soft target (TOOD), else iou
    weight: Tensor | None  # (F,) the assigner's weight (HAMBox); None = 1 (official, no multiply)
    denom: float  # max(F, 1), what every term is divided by


class ClassTarget(NamedTuple):
    """A class-target rule's output for F foregrounds of C classes."""

    target: Tensor  # (F, C) soft one-hot: the class BCE's target
    reg_factor: Tensor | None  # (F,) extra weight of the regression terms; None = 1
    focal: bool  # scale each BCE by |target - sigmoid|^QFL_BETA (GFL's QFL)


def _iou_target(quality: Tensor, one_hot: Tensor, cls_logit: Tensor) -> ClassTarget:
    """Official: one-hot x the IoU of its prediction."""
    return ClassTarget(one_hot * quality.unsqueeze(-1), None, False)


def _cleanliness_target(quality: Tensor, one_hot: Tensor, cls_logit: Tensor) -> ClassTarget:
    """Li et al. 2020 (noisy anchors): soft label c = alpha * IoU + (1 - alpha) * class score;
    the regression is re-weighted by c normalised to mean 1 over the positives."""
    score = (cls_logit.detach().sigmoid() * one_hot).sum(-1)  # (F,) score of its class
    c = CLEANLINESS_ALPHA * quality + (1 - CLEANLINESS_ALPHA) * score
    r = c / c.mean().clamp(min=1e-6) if c.numel() else c
    return ClassTarget(one_hot * c.unsqueeze(-1), r, False)


def _qfl_target(quality: Tensor, one_hot: Tensor, cls_logit: Tensor) -> ClassTarget:
    """GFL's Quality Focal Loss: |y - sigma|^beta * BCE(sigma, y) against the IoU target."""
    return ClassTarget(one_hot * quality.unsqueeze(-1), None, True)


# name -> rule: (quality (F,): each foreground's IoU or the assigner's soft target (TOOD),
# one_hot (F, C), cls_logit (F, C))
ClassTargetFn = Callable[[Tensor, Tensor, Tensor], ClassTarget]
CLASS_TARGETS: dict[str, ClassTargetFn] = {
    "iou": _iou_target,
    "cleanliness": _cleanliness_target,
    "qfl": _qfl_target,
}


def yolox_loss(
    outputs: Tensor,
    raw_reg: Tensor | None,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    settings: LossSettings | None = None,
    use_l1: bool = False,
    dynamic_state: DynamicState | None = None,
    assign_stats: bool = False,
    world: World | None = None,
) -> dict[str, Tensor]:
    """YOLOX loss of a batch.

    outputs: (B, A, 5 + C) per anchor: cx, cy, w, h decoded in input pixels, objectness logit,
        C class logits (any float dtype; the loss is computed in float32).
    raw_reg: (B, A, 4) regression outputs before decoding (needed only when ``use_l1``).
    x_shifts, y_shifts: (A,) grid-cell indices; strides: (A,) pixels per cell.
    targets: (B, M, 5) class, cx, cy, w, h in input pixels; all-zero rows are padding.
    settings: the loss's and the assignment's settings (``LossSettings.from_config(cfg)``;
        None = the official ones).
    use_l1: add the L1 term (the official last-epochs switch, set by the trainer).
    dynamic_state: the ``dynamic`` assigner's state, read and updated in place (a fresh one when
        None); assign_stats: also return ``assign_stats``, a dict of (no-gradient) counts, see
        ``model.assign.diagnostics.assignment_stats``.
    world: this process's slice of a trial on several processes (model/distributed.py): the
        terms are then divided by the foregrounds of the whole batch over the ranks, times the
        ranks, so that DDP's averaged gradients are the whole batch's.
    Returns float32 scalars ``total_loss`` (= iou + l1 + conf + cls), ``iou_loss`` (times
    ``reg_weight``; the ``reg_loss`` of ``settings``, e.g. 1 - NWD), ``l1_loss`` (0 without
    ``use_l1``), ``conf_loss``, ``cls_loss`` and ``num_fg`` (foregrounds / objects, no gradient).

    Unlike the official code, a batch with no foreground reports num_fg 0 (it reports
    max(foregrounds, 1) / max(objects, 1), i.e. 1 for an empty batch).
    """
    _check_inputs(outputs, raw_reg, x_shifts, targets, num_classes, use_l1)
    settings = LossSettings() if settings is None else settings
    outputs = outputs.float()
    boxes, obj, cls = outputs[..., :4], outputs[..., 4], outputs[..., 5:]  # (B,A,4) (B,A) (B,A,C)
    if dynamic_state is None:
        dynamic_state = DynamicState(interval=settings.assign.dynamic_interval)
    grid = (x_shifts, y_shifts, strides)
    inputs, asg, pos = _assign(boxes, obj, cls, targets, grid, settings, dynamic_state)
    if world is not None and world.active:  # every rank's foregrounds, summed
        total = world.sum(torch.tensor(float(pos.img.numel())))
        pos = pos._replace(denom=max(float(total), 1.0) / world.size)
    out = _terms(
        boxes, obj, cls, raw_reg, inputs, asg, pos, settings, num_classes, use_l1, dynamic_state
    )
    gt_valid = inputs.gt_valid  # (B, G)
    out["num_fg"] = outputs.new_tensor(pos.img.numel() / max(int(gt_valid.sum()), 1))
    if assign_stats:
        out["assign_stats"] = assignment_stats(asg, inputs.gt_bboxes, gt_valid)  # type: ignore[assignment]
    return out


def _assign(
    boxes: Tensor,
    obj: Tensor,
    cls: Tensor,
    targets: Tensor,
    grid: tuple[Tensor, Tensor, Tensor],
    settings: LossSettings,
    dynamic_state: DynamicState,
) -> tuple[AssignInputs, BatchAssignment, Positives]:
    """The batch's assignment (no gradient) and its foregrounds.

    boxes (B, A, 4), obj (B, A), cls (B, A, C) as in :func:`yolox_loss`'s ``outputs``; targets
    (B, M, 5); grid: x_shifts, y_shifts, strides, each (A,).
    """
    gt, gt_valid = _pack_targets(targets.detach().float())  # (B, G, 5), (B, G)
    detached = (boxes.detach(), cls.detach(), obj.detach())  # the assignment takes no gradient
    inputs = AssignInputs(gt[..., 1:], gt[..., 0], gt_valid, *detached, *grid)
    asg = assign_batch(inputs, settings.assign, dynamic_state)
    return inputs, asg, _positives(asg, gt)


def _terms(
    boxes: Tensor,
    obj: Tensor,
    cls: Tensor,
    raw_reg: Tensor | None,
    inputs: AssignInputs,
    asg: BatchAssignment,
    pos: Positives,
    settings: LossSettings,
    num_classes: int,
    use_l1: bool,
    dynamic_state: DynamicState,
) -> dict[str, Tensor]:
    """The float32 scalars ``total_loss``, ``iou_loss``, ``l1_loss``, ``conf_loss``, ``cls_loss``
    of :func:`yolox_loss` (in the official order of operations)."""
    cls_logit = cls[pos.img, pos.anchor]  # (F, C)
    one_hot = F.one_hot(pos.gt[:, 0].long(), num_classes).float()
    ct = CLASS_TARGETS[settings.cls_target](pos.quality, one_hot, cls_logit)
    reg_weight = _times(pos.weight, ct.reg_factor)  # (F,) or None
    per_box = BOX_LOSSES[settings.reg_loss](
        boxes[pos.img, pos.anchor], pos.gt[:, 1:], settings.nwd_constant
    )
    iou_loss = _weighted(per_box, reg_weight).sum() / pos.denom
    conf_loss = _objectness_term(obj, asg, pos.denom)
    cls_loss = _class_term(cls_logit, ct, pos.weight, pos.denom)
    l1_loss = _l1_step(raw_reg, pos, inputs, asg, reg_weight, use_l1, dynamic_state)
    iou_loss = settings.reg_weight * iou_loss
    return {
        "total_loss": iou_loss + conf_loss + cls_loss + l1_loss,
        "iou_loss": iou_loss,
        "l1_loss": l1_loss,
        "conf_loss": conf_loss,
        "cls_loss": cls_loss,
    }


# --------------------------------------------------------------------------- the terms


def _positives(asg: BatchAssignment, gt: Tensor) -> Positives:
    """The foregrounds of ``asg`` with their objects, gt (B, G, 5) class, cx, cy, w, h."""
    img, anchor = asg.fg_mask.nonzero(as_tuple=True)  # (F,) foregrounds, image-major as official
    weight = asg.weights[img, anchor] if asg.weights is not None else None
    iou = asg.pred_ious[img, anchor]
    quality = asg.cls_quality[img, anchor] if asg.cls_quality is not None else iou
    return Positives(
        img,
        anchor,
        gt[img, asg.matched_gt_inds[img, anchor]],
        iou,
        quality,
        weight,
        float(max(img.numel(), 1)),
    )


def _times(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """Product of two optional (F,) weights (None = 1)."""
    if a is None or b is None:
        return b if a is None else a
    return a * b


def _weighted(per_fg: Tensor, w: Tensor | None) -> Tensor:
    return per_fg if w is None else per_fg * w


def _objectness_term(obj: Tensor, asg: BatchAssignment, denom: float) -> Tensor:
    """BCE of every anchor's objectness (B, A) against its foreground flag; ignored anchors
    (YOLOF) left out."""
    if asg.ignore_mask is None:  # the official sum, in the official order
        return F.binary_cross_entropy_with_logits(obj, asg.fg_mask.float(), reduction="sum") / denom
    bce = F.binary_cross_entropy_with_logits(obj, asg.fg_mask.float(), reduction="none")
    return bce.masked_fill(asg.ignore_mask, 0.0).sum() / denom


def _class_term(cls_logit: Tensor, ct: ClassTarget, weight: Tensor | None, denom: float) -> Tensor:
    """BCE of the foregrounds' class logits (F, C) against ``ct.target``; QFL-scaled when
    ``ct.focal``; each foreground's sum times ``weight`` (HAMBox: the class term too)."""
    if not ct.focal and weight is None:  # the official sum
        return F.binary_cross_entropy_with_logits(cls_logit, ct.target, reduction="sum") / denom
    bce = F.binary_cross_entropy_with_logits(cls_logit, ct.target, reduction="none")
    if ct.focal:  # GFL's QFL: |y - sigma|^beta * BCE(sigma, y)
        bce = bce * (ct.target - cls_logit.sigmoid()).abs().pow(QFL_BETA)
    return _weighted(bce.sum(-1), weight).sum() / denom


def _l1_step(
    raw_reg: Tensor | None,
    pos: Positives,
    inputs: AssignInputs,
    asg: BatchAssignment,
    weight: Tensor | None,
    use_l1: bool,
    state: DynamicState,
) -> Tensor:
    """The L1 term (0 without ``use_l1``) and, when the assigner asks (Dynamic R-CNN's
    ``smooth_l1_beta``), its feedback: the positives' centre errors to ``state``."""
    feedback = asg.smooth_l1_beta is not None
    err = None
    if use_l1 or (feedback and raw_reg is not None):
        assert raw_reg is not None  # yolox_loss checked it for use_l1
        err = _l1_errors(raw_reg, pos, *inputs.grid)
    l1_loss = _l1_term(err, asg.smooth_l1_beta, weight, pos.denom) if use_l1 else None
    if feedback:
        errors = err[:, :2].detach().abs() if err is not None else pos.iou.new_zeros(0, 2)
        state.observe_batch(inputs.gt_bboxes, inputs.gt_valid, inputs.pred_bboxes, errors)
    return pos.iou.new_zeros(()) if l1_loss is None else l1_loss


def _l1_errors(
    raw_reg: Tensor, pos: Positives, x_shifts: Tensor, y_shifts: Tensor, strides: Tensor
) -> Tensor:
    """(F, 4) raw regression of each foreground minus what it should be (:func:`_l1_target`)."""
    a = pos.anchor
    target = _l1_target(pos.gt[:, 1:], x_shifts[a], y_shifts[a], strides[a])
    return raw_reg[pos.img, a].float() - target


def _l1_term(err: Tensor | None, beta: float | None, weight: Tensor | None, denom: float) -> Tensor:
    """Sum of |err| (F, 4) (official), or of SmoothL1 of ``beta`` (Dynamic R-CNN's Dynamic
    SmoothL1), each foreground's sum times ``weight``."""
    assert err is not None  # use_l1 computes it
    if beta is not None:
        per = F.smooth_l1_loss(err, torch.zeros_like(err), reduction="none", beta=beta)
        return _weighted(per.sum(-1), weight).sum() / denom
    if weight is None:
        return err.abs().sum() / denom  # official
    return _weighted(err.abs().sum(-1), weight).sum() / denom


def _check_inputs(
    outputs: Tensor,
    raw_reg: Tensor | None,
    x_shifts: Tensor,
    targets: Tensor,
    num_classes: int,
    use_l1: bool,
) -> None:
    if outputs.dim() != 3 or outputs.shape[-1] != 5 + num_classes:
        raise YOLOXInputError(
            f"yolox_loss: outputs must be (B, A, 5 + num_classes={5 + num_classes}); "
            f"got {tuple(outputs.shape)}"
        )
    b, a = outputs.shape[:2]
    if targets.dim() != 3 or targets.shape[0] != b or targets.shape[-1] != 5:
        raise YOLOXInputError(
            f"yolox_loss: targets must be (B={b}, max_objects, 5) rows of (class, cx, cy, w, h); "
            f"got {tuple(targets.shape)}"
        )
    if x_shifts.shape != (a,):
        raise YOLOXInputError(
            f"yolox_loss: x_shifts/y_shifts/strides must be ({a},); got {tuple(x_shifts.shape)}"
        )
    if use_l1 and (raw_reg is None or raw_reg.shape != (b, a, 4)):
        got = None if raw_reg is None else tuple(raw_reg.shape)
        raise YOLOXInputError(f"yolox_loss: use_l1 needs raw_reg of shape ({b}, {a}, 4); got {got}")


def _pack_targets(targets: Tensor) -> tuple[Tensor, Tensor]:
    """(B, M, 5) targets -> (B, G, 5) with each image's objects first, G = most objects in an
    image, and the (B, G) validity mask. Rows with any non-zero value are objects."""
    valid = (targets != 0).any(-1)  # (B, M)
    g = int(valid.sum(1).max()) if valid.numel() else 0
    order = torch.argsort((~valid).byte(), dim=1, stable=True)[:, :g]  # (B, G)
    packed = targets.gather(1, order.unsqueeze(-1).expand(-1, -1, 5))
    return packed, valid.gather(1, order)


def _l1_target(gt_boxes: Tensor, x_shifts: Tensor, y_shifts: Tensor, strides: Tensor) -> Tensor:
    """What the raw regression of each foreground should be: (F, 4) cx, cy, w, h of its object
    in input pixels -> (F, 4) offsets within the cell and log sizes in strides (official eps)."""
    s = strides.unsqueeze(-1)  # (F, 1)
    xy = gt_boxes[:, :2] / s - torch.stack([x_shifts, y_shifts], -1)
    wh = torch.log(gt_boxes[:, 2:] / s + 1e-8)
    return torch.cat([xy, wh], -1)
