"""The YOLOX training loss: SimOTA assignment, then IoU-family, L1, objectness and class terms.

A plain function of the head's outputs, so it can be tested and ablated without the network.
The terms mean what they mean in the official ``YOLOXHead.get_losses``: every term is a sum divided
by the batch's foreground count (at least 1); ``iou_loss`` already carries ``reg_weight``; the
objectness BCE runs over all anchors, the class BCE over foregrounds against one-hot targets scaled
by the foreground's IoU; ``num_fg`` is foregrounds per object.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from model.assign import BatchAssignment, simota, simota_batched
from model.config import CANDIDATE_TOPK, CENTER_RADIUS, IOU_COST_WEIGHT, REG_WEIGHT
from model.losses import check_reg_loss, iou_family_loss

AssignMode = Literal["batched", "per_image"]  # simota_batched (default) or simota per image
ASSIGN_MODES: tuple[str, ...] = get_args(AssignMode)
LOSS_KEYS: tuple[str, ...] = (
    "total_loss",
    "iou_loss",
    "l1_loss",
    "conf_loss",
    "cls_loss",
    "num_fg",
)


def yolox_loss(
    outputs: Tensor,
    raw_reg: Tensor | None,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    targets: Tensor,
    *,
    num_classes: int,
    use_l1: bool = False,
    reg_loss: str = "iou",
    reg_weight: float = REG_WEIGHT,
    nwd_constant: float = 12.8,
    center_radius: float = CENTER_RADIUS,
    candidate_topk: int = CANDIDATE_TOPK,
    iou_cost_weight: float = IOU_COST_WEIGHT,
    assign_mode: str = "batched",
) -> dict[str, Tensor]:
    """YOLOX loss of a batch.

    outputs: (B, A, 5 + C) per anchor: cx, cy, w, h decoded in input pixels, objectness logit,
        C class logits (any float dtype; the loss is computed in float32).
    raw_reg: (B, A, 4) regression outputs before decoding (needed only when ``use_l1``).
    x_shifts, y_shifts: (A,) grid-cell indices; strides: (A,) pixels per cell.
    targets: (B, M, 5) class, cx, cy, w, h in input pixels; all-zero rows are padding.
    reg_loss: one of ``model.losses.REG_LOSSES`` (``iou_loss`` then holds that loss, e.g. 1 - NWD);
        nwd_constant: NWD's C in pixels (``reg_loss="nwd"`` only);
    assign_mode: "batched" (``simota_batched``) or
        "per_image" (a loop of ``simota`` like the official code; same result, kept as a check).
    Returns float32 scalars ``total_loss`` (= iou + l1 + conf + cls), ``iou_loss`` (times
    ``reg_weight``), ``l1_loss`` (0 without ``use_l1``), ``conf_loss``, ``cls_loss`` and
    ``num_fg`` (foregrounds / objects, no gradient).

    Unlike the official code, a batch with no foreground reports num_fg 0 (it reports
    max(foregrounds, 1) / max(objects, 1), i.e. 1 for an empty batch).
    """
    check_reg_loss(reg_loss)
    if assign_mode not in ASSIGN_MODES:
        raise ValueError(
            f"unknown assign_mode {assign_mode!r}; use one of {', '.join(map(repr, ASSIGN_MODES))}"
        )
    _check_inputs(outputs, raw_reg, x_shifts, targets, num_classes, use_l1)
    outputs = outputs.float()
    boxes, obj, cls = outputs[..., :4], outputs[..., 4], outputs[..., 5:]  # (B,A,4) (B,A) (B,A,C)
    gt, gt_valid = _pack_targets(targets.detach().float())  # (B, G, 5), (B, G)
    if assign_mode == "batched":
        asg = simota_batched(
            gt[..., 1:],
            gt[..., 0],
            gt_valid,
            boxes.detach(),
            cls.detach(),
            obj.detach(),
            x_shifts,
            y_shifts,
            strides,
            center_radius=center_radius,
            candidate_topk=candidate_topk,
            iou_cost_weight=iou_cost_weight,
        )
    else:
        asg = _assign_per_image(
            gt,
            gt_valid,
            boxes.detach(),
            cls.detach(),
            obj.detach(),
            x_shifts,
            y_shifts,
            strides,
            center_radius,
            candidate_topk,
            iou_cost_weight,
        )

    img, anchor = asg.fg_mask.nonzero(as_tuple=True)  # (F,) foregrounds, image-major as official
    matched = gt[img, asg.matched_gt_inds[img, anchor]]  # (F, 5) class, cx, cy, w, h
    num_fg = img.numel()
    denom = float(max(num_fg, 1))

    iou_loss = iou_family_loss(
        boxes[img, anchor], matched[:, 1:], reg_loss, nwd_constant=nwd_constant
    ).sum() / denom
    conf_loss = (
        F.binary_cross_entropy_with_logits(obj, asg.fg_mask.float(), reduction="sum") / denom
    )
    cls_target = F.one_hot(matched[:, 0].long(), num_classes).float()
    cls_target *= asg.pred_ious[img, anchor].unsqueeze(-1)  # (F, C) IoU-scaled one-hot
    cls_loss = (
        F.binary_cross_entropy_with_logits(cls[img, anchor], cls_target, reduction="sum") / denom
    )
    if use_l1:
        assert raw_reg is not None  # checked above
        l1_target = _l1_target(matched[:, 1:], x_shifts[anchor], y_shifts[anchor], strides[anchor])
        l1_loss = (raw_reg[img, anchor].float() - l1_target).abs().sum() / denom
    else:
        l1_loss = outputs.new_zeros(())
    iou_loss = reg_weight * iou_loss
    total = iou_loss + conf_loss + cls_loss + l1_loss
    num_objects = int(gt_valid.sum())
    return {
        "total_loss": total,
        "iou_loss": iou_loss,
        "l1_loss": l1_loss,
        "conf_loss": conf_loss,
        "cls_loss": cls_loss,
        "num_fg": outputs.new_tensor(num_fg / max(num_objects, 1)),
    }


def _check_inputs(
    outputs: Tensor,
    raw_reg: Tensor | None,
    x_shifts: Tensor,
    targets: Tensor,
    num_classes: int,
    use_l1: bool,
) -> None:
    if outputs.dim() != 3 or outputs.shape[-1] != 5 + num_classes:
        raise ValueError(
            f"yolox_loss: outputs must be (B, A, 5 + num_classes={5 + num_classes}); "
            f"got {tuple(outputs.shape)}"
        )
    b, a = outputs.shape[:2]
    if targets.dim() != 3 or targets.shape[0] != b or targets.shape[-1] != 5:
        raise ValueError(
            f"yolox_loss: targets must be (B={b}, max_objects, 5) rows of (class, cx, cy, w, h); "
            f"got {tuple(targets.shape)}"
        )
    if x_shifts.shape != (a,):
        raise ValueError(
            f"yolox_loss: x_shifts/y_shifts/strides must be ({a},); got {tuple(x_shifts.shape)}"
        )
    if use_l1 and (raw_reg is None or raw_reg.shape != (b, a, 4)):
        got = None if raw_reg is None else tuple(raw_reg.shape)
        raise ValueError(f"yolox_loss: use_l1 needs raw_reg of shape ({b}, {a}, 4); got {got}")


def _pack_targets(targets: Tensor) -> tuple[Tensor, Tensor]:
    """(B, M, 5) targets -> (B, G, 5) with each image's objects first, G = most objects in an
    image, and the (B, G) validity mask. Rows with any non-zero value are objects."""
    valid = (targets != 0).any(-1)  # (B, M)
    g = int(valid.sum(1).max()) if valid.numel() else 0
    order = torch.argsort((~valid).byte(), dim=1, stable=True)[:, :g]  # (B, G)
    packed = targets.gather(1, order.unsqueeze(-1).expand(-1, -1, 5))
    return packed, valid.gather(1, order)


def _assign_per_image(
    gt: Tensor,
    gt_valid: Tensor,
    boxes: Tensor,
    cls: Tensor,
    obj: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    center_radius: float,
    candidate_topk: int,
    iou_cost_weight: float,
) -> BatchAssignment:
    """``simota`` image by image (the official loop), in the layout of ``simota_batched``."""
    b, a = obj.shape
    fg_mask = torch.zeros(b, a, dtype=torch.bool, device=obj.device)
    matched = torch.full((b, a), -1, dtype=torch.long, device=obj.device)
    pred_ious = torch.zeros(b, a, device=obj.device)
    for i, n in enumerate(gt_valid.sum(1).tolist()):
        if n == 0:
            continue
        r = simota(
            gt[i, :n, 1:],
            gt[i, :n, 0],
            boxes[i],
            cls[i],
            obj[i],
            x_shifts,
            y_shifts,
            strides,
            center_radius=center_radius,
            candidate_topk=candidate_topk,
            iou_cost_weight=iou_cost_weight,
        )
        fg_mask[i] = r.fg_mask
        matched[i, r.fg_mask] = r.matched_gt_inds
        pred_ious[i, r.fg_mask] = r.pred_ious
    return BatchAssignment(fg_mask, matched, pred_ious)


def _l1_target(gt_boxes: Tensor, x_shifts: Tensor, y_shifts: Tensor, strides: Tensor) -> Tensor:
    """What the raw regression of each foreground should be: (F, 4) cx, cy, w, h of its object
    in input pixels -> (F, 4) offsets within the cell and log sizes in strides (official eps)."""
    s = strides.unsqueeze(-1)  # (F, 1)
    xy = gt_boxes[:, :2] / s - torch.stack([x_shifts, y_shifts], -1)
    wh = torch.log(gt_boxes[:, 2:] / s + 1e-8)
    return torch.cat([xy, wh], -1)
