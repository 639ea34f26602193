"""The YOLOX training loss: SimOTA assignment, then IoU-family, L1, objectness and class terms.

A plain function of the head's outputs, so it can be tested and ablated without the network.
The terms mean what they mean in the official ``YOLOXHead.get_losses``: every term is a sum divided
by the batch's foreground count (at least 1); ``iou_loss`` already carries ``reg_weight``; the
objectness BCE runs over all anchors, the class BCE over foregrounds against one-hot targets scaled
by the foreground's IoU; ``num_fg`` is foregrounds per object.

Added (issue 17): the assigner (``simota`` or one of ``model.assigners``), HAMBox compensation,
NWD inside SimOTA, the class target (``iou``, ``cleanliness``, ``qfl``), Dynamic R-CNN's
SmoothL1 beta on the L1 branch, and per-size-bucket assignment statistics. With every option at
its default the computation is the official one, operation for operation.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from model.assign import common as assigners
from model.assign.simota import BatchAssignment, simota, simota_batched
from model.box_losses import REG_LOSSES, regression_loss
from model.config import (
    CANDIDATE_TOPK,
    CENTER_RADIUS,
    IOU_COST_WEIGHT,
    REG_WEIGHT,
    Assigner,
    AssignOverlap,
    ClsTarget,
    check_choice,
)

AssignMode = Literal["batched", "per_image"]  # simota_batched (default) or simota per image
ASSIGN_MODES: tuple[str, ...] = get_args(AssignMode)
ASSIGNER_NAMES: tuple[str, ...] = get_args(Assigner)
ASSIGN_OVERLAPS: tuple[str, ...] = get_args(AssignOverlap)
CLS_TARGETS: tuple[str, ...] = get_args(ClsTarget)
CLEANLINESS_ALPHA = 0.75  # Li et al. 2020 (noisy anchors): cleanliness c = 0.75 loc + 0.25 cls
QFL_BETA = 2.0  # GFL (Li et al. 2020), Quality Focal Loss: beta = 2
# Size buckets of the assignment statistics, by sqrt(w * h) of the object in input pixels.
SIZE_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("lt16", 0.0, 16.0),
    ("16_32", 16.0, 32.0),
    ("32_96", 32.0, 96.0),
    ("gt96", 96.0, float("inf")),
)
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
    assigner: str = "simota",
    assign_k: int = 0,
    hambox: bool = False,
    assign_overlap: str = "iou",
    cls_target: str = "iou",
    dynamic_state: assigners.DynamicState | None = None,
    assign_stats: bool = False,
) -> dict[str, Tensor]:
    """YOLOX loss of a batch.

    outputs: (B, A, 5 + C) per anchor: cx, cy, w, h decoded in input pixels, objectness logit,
        C class logits (any float dtype; the loss is computed in float32).
    raw_reg: (B, A, 4) regression outputs before decoding (needed only when ``use_l1``).
    x_shifts, y_shifts: (A,) grid-cell indices; strides: (A,) pixels per cell.
    targets: (B, M, 5) class, cx, cy, w, h in input pixels; all-zero rows are padding.
    reg_loss: one of ``model.box_losses.REG_LOSSES`` (``iou_loss`` then holds it, e.g. 1 - NWD);
        nwd_constant: NWD's C in pixels (``reg_loss="nwd"`` only);
    assign_mode: "batched" (``simota_batched``) or
        "per_image" (a loop of ``simota`` like the official code; same result, kept as a check).
    Returns float32 scalars ``total_loss`` (= iou + l1 + conf + cls), ``iou_loss`` (times
    ``reg_weight``), ``l1_loss`` (0 without ``use_l1``), ``conf_loss``, ``cls_loss`` and
    ``num_fg`` (foregrounds / objects, no gradient).

    assigner: one of ``ASSIGNER_NAMES``; assign_k: its k (0 = its paper value); hambox: HAMBox
        compensation on top; assign_overlap: "iou" or "nwd" in SimOTA's cost and dynamic k;
        cls_target: one of ``CLS_TARGETS``; dynamic_state: the ``dynamic`` assigner's state,
        read and updated in place (a fresh one when None); assign_stats: also return
        ``assign_stats``, a dict of (no-gradient) counts, see :func:`assignment_stats`.

    Unlike the official code, a batch with no foreground reports num_fg 0 (it reports
    max(foregrounds, 1) / max(objects, 1), i.e. 1 for an empty batch).
    """
    for name, value, allowed in (
        ("reg_loss", reg_loss, REG_LOSSES),
        ("assign_mode", assign_mode, ASSIGN_MODES),
        ("assigner", assigner, ASSIGNER_NAMES),
        ("assign_overlap", assign_overlap, ASSIGN_OVERLAPS),
        ("cls_target", cls_target, CLS_TARGETS),
    ):
        check_choice(name, value, allowed)  # checked here, trusted below (regression_loss)
    _check_inputs(outputs, raw_reg, x_shifts, targets, num_classes, use_l1)
    outputs = outputs.float()
    boxes, obj, cls = outputs[..., :4], outputs[..., 4], outputs[..., 5:]  # (B,A,4) (B,A) (B,A,C)
    gt, gt_valid = _pack_targets(targets.detach().float())  # (B, G, 5), (B, G)
    if assigner == "dynamic" and dynamic_state is None:
        dynamic_state = assigners.DynamicState()
    if assigner != "simota":
        kw: dict = {}
        if assigner in ("atss", "uniform", "topk"):
            kw["k"] = assign_k or assigners.default_k(assigner)
        if assigner in ("topk", "dynamic"):
            kw["center_radius"] = center_radius
        if assigner == "dynamic":
            assert dynamic_state is not None
            kw["iou_thr"] = dynamic_state.iou_thr
        asg = assigners.ASSIGNERS[assigner](
            gt[..., 1:], gt_valid, boxes.detach(), x_shifts, y_shifts, strides, **kw
        )
    elif assign_mode == "batched":
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
            overlap=assign_overlap,
            nwd_constant=nwd_constant,
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
            assign_overlap,
            nwd_constant,
        )
    if hambox:
        asg = assigners.hambox(asg, gt[..., 1:], gt_valid, boxes.detach())

    img, anchor = asg.fg_mask.nonzero(as_tuple=True)  # (F,) foregrounds, image-major as official
    matched = gt[img, asg.matched_gt_inds[img, anchor]]  # (F, 5) class, cx, cy, w, h
    num_fg = img.numel()
    denom = float(max(num_fg, 1))
    fg_ious = asg.pred_ious[img, anchor]  # (F,)
    # (F,) per-foreground weights of the regression terms; None = 1 (official, no multiply)
    weight = asg.weights[img, anchor] if asg.weights is not None else None
    cls_weight = weight  # HAMBox weights both the class term and the regression terms
    cls_logit = cls[img, anchor]  # (F, C)
    one_hot = F.one_hot(matched[:, 0].long(), num_classes).float()
    quality = fg_ious
    if cls_target == "cleanliness":
        # Li et al. 2020 (noisy anchors): soft label c = alpha * IoU + (1 - alpha) * class score;
        # the regression is re-weighted by c normalised to mean 1 over the positives
        score = (cls_logit.detach().sigmoid() * one_hot).sum(-1)  # (F,) score of its class
        quality = CLEANLINESS_ALPHA * fg_ious + (1 - CLEANLINESS_ALPHA) * score
        r = quality / quality.mean().clamp(min=1e-6) if num_fg else quality
        weight = r if weight is None else weight * r

    def weighted(per_fg: Tensor, w: Tensor | None) -> Tensor:
        return per_fg if w is None else per_fg * w

    iou_loss = weighted(
        regression_loss(boxes[img, anchor], matched[:, 1:], reg_loss, nwd_constant=nwd_constant),
        weight,
    ).sum() / denom
    if asg.ignore_mask is None:  # the official sums, in the official order
        conf_loss = (
            F.binary_cross_entropy_with_logits(obj, asg.fg_mask.float(), reduction="sum") / denom
        )
    else:
        bce_obj = F.binary_cross_entropy_with_logits(obj, asg.fg_mask.float(), reduction="none")
        conf_loss = bce_obj.masked_fill(asg.ignore_mask, 0.0).sum() / denom
    target = one_hot * quality.unsqueeze(-1)  # (F, C) quality-scaled one-hot
    if cls_target != "qfl" and cls_weight is None:
        cls_loss = (
            F.binary_cross_entropy_with_logits(cls_logit, target, reduction="sum") / denom
        )
    else:
        bce_cls = F.binary_cross_entropy_with_logits(cls_logit, target, reduction="none")
        if cls_target == "qfl":  # GFL's QFL: |y - sigma|^beta * BCE(sigma, y)
            bce_cls = bce_cls * (target - cls_logit.sigmoid()).abs().pow(QFL_BETA)
        cls_loss = weighted(bce_cls.sum(-1), cls_weight).sum() / denom
    need_l1 = use_l1 or (assigner == "dynamic" and raw_reg is not None)
    if need_l1:
        assert raw_reg is not None  # checked above
        l1_target = _l1_target(matched[:, 1:], x_shifts[anchor], y_shifts[anchor], strides[anchor])
        err = raw_reg[img, anchor].float() - l1_target  # (F, 4)
    if use_l1:
        if assigner == "dynamic":  # Dynamic R-CNN's Dynamic SmoothL1: of the current beta
            assert dynamic_state is not None
            per = F.smooth_l1_loss(err, torch.zeros_like(err), reduction="none",
                                   beta=dynamic_state.beta)
            l1_loss = weighted(per.sum(-1), weight).sum() / denom
        elif weight is None:
            l1_loss = err.abs().sum() / denom  # official
        else:
            l1_loss = weighted(err.abs().sum(-1), weight).sum() / denom
    else:
        l1_loss = outputs.new_zeros(())
    if assigner == "dynamic":
        assert dynamic_state is not None
        max_ious = _max_ious(gt[..., 1:], gt_valid, boxes.detach())
        errors = err[:, :2].detach().abs() if need_l1 else outputs.new_zeros(0, 2)
        dynamic_state.observe(max_ious, gt_valid, errors)
    iou_loss = reg_weight * iou_loss
    total = iou_loss + conf_loss + cls_loss + l1_loss
    num_objects = int(gt_valid.sum())
    out = {
        "total_loss": total,
        "iou_loss": iou_loss,
        "l1_loss": l1_loss,
        "conf_loss": conf_loss,
        "cls_loss": cls_loss,
        "num_fg": outputs.new_tensor(num_fg / max(num_objects, 1)),
    }
    if assign_stats:
        out["assign_stats"] = assignment_stats(asg, gt[..., 1:], gt_valid)  # type: ignore[assignment]
    return out


def _max_ious(gt_boxes: Tensor, gt_valid: Tensor, boxes: Tensor) -> Tensor:
    """(B, A) each prediction's best IoU with a (valid) object, 0 without objects."""
    if gt_boxes.shape[1] == 0:
        return boxes.new_zeros(boxes.shape[:2])
    return assigners._pred_ious(gt_boxes, gt_valid, boxes).max(1).values


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
    overlap: str = "iou",
    nwd_constant: float = 12.8,
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
            overlap=overlap,
            nwd_constant=nwd_constant,
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
