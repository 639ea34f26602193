"""SimOTA label assignment (YOLOX), for one image and vectorised over a padded batch.

The rule, as in the official ``get_assignments``, ``get_geometry_constraint``, ``simota_matching``:

1. candidates: anchors whose cell centre lies strictly within ``center_radius`` strides (a square)
   of some object's centre; only they enter the cost (memory: objects x candidates, not anchors);
2. cost[g, a] = BCE(sqrt(sigmoid(cls) * sigmoid(obj)), one-hot(class_g)) summed over classes
   + ``iou_cost_weight`` * -log(IoU + 1e-8) + 1e6 * (anchor a not within the radius of object g);
3. each object takes its dynamic k = max(1, int(sum of its ``candidate_topk`` largest IoUs))
   cheapest candidates; an anchor taken by several objects goes to the object of least cost.

How we compute it, and where we differ from the official code (no normal assignment changes):
- costs are needed only for the (object, anchor-within-its-radius) pairs, about 27 per object: any
  other pair costs >= 1e6, more than any within-radius pair, so it is never the least-cost claimant
  and is picked only when an object wants more anchors than lie within its radius -- that rare
  case is completed from the dense cost row of that object alone. IoUs stay dense (the dynamic k
  sums an object's largest IoUs over all candidates);
- sigmoid and log run in float64 and are rounded to float32: PyTorch's vectorised and scalar
  float32 kernels can differ in the last bit depending on where an element sits in memory, and
  the per-image and batched paths lay elements out differently; this keeps their costs (hence
  their assignments) identical. The cost itself is float32, as in the reference;
- ties in cost go to the lower anchor index (a stable order) instead of ``topk``'s unspecified one;
- an object with no candidate anchor (centre far outside the grid) gets none instead of a crash,
  and zero objects give an all-background assignment.

Added (issue 17): ``overlap="nwd"`` puts NWD (Wang et al. 2021, ``model.assign.overlap.nwd``) in
place of the IoU in the cost and the dynamic k, so a tiny object's disjoint candidates are still
ranked by distance; the returned ``pred_ious`` stay IoUs (the class target). The default "iou"
runs exactly the official arithmetic.

The geometry, cost and matching steps are in ``model/assign/simota_cost.py``; this module checks
the inputs, packs a batch's candidates into slots and runs those steps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from model.assign.overlap import pairwise_iou, pairwise_nwd
from model.assign.simota_cost import (
    MAX_CLASSES,
    Radius,
    candidates,
    class_terms,
    dynamic_k,
    match,
    radius_tests,
)
from model.assign.types import AssignError, AssignInputs, Assignment, BatchAssignment
from model.config import CANDIDATE_TOPK, CENTER_RADIUS, IOU_COST_WEIGHT, NWD_CONSTANT

if TYPE_CHECKING:
    from model.assign.dynamic import DynamicState
    from model.assign.settings import AssignSettings


# --------------------------------------------------------------------------- input checks


def _check_shapes(
    gt_bboxes: Tensor,
    gt_classes: Tensor,
    pred_bboxes: Tensor,
    cls_logits: Tensor,
    obj_logits: Tensor,
    grid: tuple[Tensor, Tensor, Tensor],
    batched: bool,
) -> None:
    lead = 1 if batched else 0
    prefix = "(B, " if batched else "("
    a = pred_bboxes.shape[lead] if pred_bboxes.dim() == lead + 2 else -1
    per_anchor = tuple(pred_bboxes.shape[:-1])
    problems = []
    if gt_bboxes.dim() != lead + 2 or gt_bboxes.shape[-1] != 4:
        problems.append(f"gt_bboxes {tuple(gt_bboxes.shape)} (want {prefix}G, 4))")
    if gt_classes.shape != gt_bboxes.shape[:-1]:
        want = tuple(gt_bboxes.shape[:-1])
        problems.append(f"gt_classes {tuple(gt_classes.shape)} (want {want})")
    if a < 0 or pred_bboxes.shape[-1] != 4:
        problems.append(f"pred_bboxes {tuple(pred_bboxes.shape)} (want {prefix}A, 4))")
    if cls_logits.dim() != lead + 2 or tuple(cls_logits.shape[:-1]) != per_anchor:
        problems.append(f"cls_logits {tuple(cls_logits.shape)} (want {per_anchor} + (C,))")
    if tuple(obj_logits.shape) not in (per_anchor, (*per_anchor, 1)):
        problems.append(f"obj_logits {tuple(obj_logits.shape)} (want {per_anchor} or + (1,))")
    for name, t in zip(("x_shifts", "y_shifts", "strides"), grid, strict=True):
        if t.shape != (a,):
            problems.append(f"{name} {tuple(t.shape)} (want ({a},))")
    if cls_logits.shape[-1] > MAX_CLASSES:
        problems.append(f"{cls_logits.shape[-1]} classes (at most {MAX_CLASSES})")
    if problems:
        raise AssignError("simota: bad inputs: " + "; ".join(problems))


def _check_classes(gt_classes: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """Class ids as int64 (padding rows set to 0); ids outside [0, C) raise an AssignError."""
    ids = gt_classes.long().masked_fill(~valid, 0)
    bad = valid & ((ids < 0) | (ids >= num_classes) | (ids != gt_classes))
    if bool(bad.any()):
        raise AssignError(
            f"simota: object class ids must be integers in [0, {num_classes}) (the number of class "
            f"logits); got {gt_classes[bad].unique().tolist()}"
        )
    return ids


# --------------------------------------------------------------------------- packed slots


class _Slots(NamedTuple):
    """Each image's candidate anchors packed, in anchor order, into slots 0..n_cand[b]-1."""

    img: Tensor  # (K,) image of each candidate pair (image-major)
    anchor: Tensor  # (K,) its anchor
    slot: Tensor  # (K,) its slot
    cand: Tensor  # (B, N) int64 anchor of each slot (0 on empty slots)
    n_cand: Tensor  # (B,) filled slots per image
    filled: Tensor  # (B, N) bool

    def geometry(self, r: Radius) -> Tensor:
        """(B, G, N) bool: slot n within object g's radius (False for padding)."""
        b, n = self.cand.shape
        g = r.in_x.shape[1]
        return (
            r.in_x.gather(2, r.ax.inverse[self.cand].unsqueeze(1).expand(b, g, n))
            & r.in_y.gather(2, r.ay.inverse[self.cand].unsqueeze(1).expand(b, g, n))
            & self.filled.unsqueeze(1)
        )

    def gather(self, per_anchor: Tensor) -> Tensor:
        """(B, A, D) -> (B, N, D): the values of each slot's anchor."""
        b, n = self.cand.shape
        return per_anchor.gather(1, self.cand.unsqueeze(-1).expand(b, n, per_anchor.shape[-1]))


def _pack(img: Tensor, anchor: Tensor, b: int) -> _Slots:
    """(K,) image-major candidate pairs -> :class:`_Slots` of B images."""
    device = img.device
    n_cand = torch.bincount(img, minlength=b)  # (B,)
    slot = torch.arange(img.numel(), device=device) - (n_cand.cumsum(0) - n_cand)[img]  # (K,)
    n = int(n_cand.max())
    cand = torch.zeros(b, n, dtype=torch.long, device=device).index_put_((img, slot), anchor)
    filled = torch.arange(n, device=device) < n_cand.unsqueeze(1)  # (B, N)
    return _Slots(img, anchor, slot, cand, n_cand, filled)


def _unpack(slots: _Slots, fg: Tensor, matched: Tensor, ious: Tensor, a: int) -> BatchAssignment:
    """Slot results fg (B, N), matched (B, N), ious (B, N) -> the (B, A) assignment."""
    b = fg.shape[0]
    img, anchor, slot = slots.img, slots.anchor, slots.slot
    fg_k = fg[img, slot]  # (K,)
    fg_mask = torch.zeros(b, a, dtype=torch.bool, device=fg.device)
    fg_mask[img, anchor] = fg_k
    matched_all = torch.full((b, a), -1, dtype=torch.long, device=fg.device)
    matched_all[img, anchor] = matched[img, slot].masked_fill(~fg_k, -1)
    ious_all = torch.zeros(b, a, device=fg.device)
    ious_all[img, anchor] = ious[img, slot].masked_fill(~fg_k, 0.0)
    return BatchAssignment(fg_mask, matched_all, ious_all)


# --------------------------------------------------------------------------- public functions


@torch.no_grad()
def simota(
    gt_bboxes: Tensor,
    gt_classes: Tensor,
    pred_bboxes: Tensor,
    cls_logits: Tensor,
    obj_logits: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    *,
    center_radius: float = CENTER_RADIUS,
    candidate_topk: int = CANDIDATE_TOPK,
    iou_cost_weight: float = IOU_COST_WEIGHT,
    overlap: str = "iou",
    nwd_constant: float = NWD_CONSTANT,
) -> Assignment:
    """SimOTA for one image.

    gt_bboxes: (G, 4) cx, cy, w, h in input pixels; gt_classes: (G,) class ids (any dtype);
    pred_bboxes: (A, 4) decoded cx, cy, w, h in input pixels; cls_logits: (A, C);
    obj_logits: (A,) or (A, 1); x_shifts, y_shifts: (A,) grid-cell indices; strides: (A,) pixels.
    overlap: "iou" (official) or "nwd" (NWD of C = ``nwd_constant``) in the cost and dynamic k.
    """
    grid = (x_shifts, y_shifts, strides)
    _check_shapes(gt_bboxes, gt_classes, pred_bboxes, cls_logits, obj_logits, grid, batched=False)
    device = pred_bboxes.device
    fg_mask = torch.zeros(pred_bboxes.shape[0], dtype=torch.bool, device=device)
    empty = Assignment(
        fg_mask, torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device)
    )
    if gt_bboxes.shape[0] == 0:
        return empty
    everyone = torch.ones_like(gt_classes, dtype=torch.bool)
    gt_classes = _check_classes(gt_classes, everyone, cls_logits.shape[-1])
    gt_bboxes = gt_bboxes.float()
    r = radius_tests(gt_bboxes, everyone, grid, center_radius)  # (G, Ux), (G, Uy)
    cand = candidates(r.in_x, r.in_y, r.ax, r.ay).nonzero().squeeze(1)  # (N,)
    if cand.numel() == 0:
        return empty
    geometry = r.in_x[:, r.ax.inverse[cand]] & r.in_y[:, r.ay.inverse[cand]]  # (G, N)
    boxes = pred_bboxes[cand].float()  # (N, 4)
    ious = overlaps = pairwise_iou(gt_bboxes, boxes)  # (G, N)
    if overlap == "nwd":
        overlaps = pairwise_nwd(gt_bboxes, boxes, nwd_constant)
    terms = class_terms(cls_logits[cand][None], obj_logits.reshape(-1)[cand][None])
    ks = dynamic_k(overlaps, candidate_topk)  # (G,)
    n_cand = torch.tensor([cand.numel()], device=device)
    fg, matched = match(
        geometry[None], overlaps[None], terms, gt_classes[None], ks[None], n_cand, iou_cost_weight
    )
    fg, matched = fg[0], matched[0]  # (N,)
    fg_mask[cand] = fg
    pred_ious = ious.gather(0, matched.unsqueeze(0))[0]  # (N,) IoU with the matched object
    return Assignment(fg_mask, matched[fg], pred_ious[fg])


@torch.no_grad()
def simota_batched(
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
    center_radius: float = CENTER_RADIUS,
    candidate_topk: int = CANDIDATE_TOPK,
    iou_cost_weight: float = IOU_COST_WEIGHT,
    overlap: str = "iou",
    nwd_constant: float = NWD_CONSTANT,
) -> BatchAssignment:
    """SimOTA for a padded batch; image b's result equals :func:`simota` on its valid objects.

    gt_bboxes: (B, G, 4) cx, cy, w, h in input pixels; gt_classes: (B, G); gt_valid: (B, G) bool
    (False rows are padding, anywhere); pred_bboxes: (B, A, 4); cls_logits: (B, A, C);
    obj_logits: (B, A) or (B, A, 1); x_shifts, y_shifts, strides: (A,) shared by all images.
    Matched indices refer to the G axis of ``gt_bboxes``. Work and memory scale with
    B x G x (largest candidate count), never B x G x A.
    """
    grid = (x_shifts, y_shifts, strides)
    _check_shapes(gt_bboxes, gt_classes, pred_bboxes, cls_logits, obj_logits, grid, batched=True)
    if gt_valid.shape != gt_classes.shape:
        raise AssignError(
            f"simota: gt_valid {tuple(gt_valid.shape)} must match gt_classes "
            f"{tuple(gt_classes.shape)}"
        )
    b, a = pred_bboxes.shape[:2]
    gt_valid = gt_valid.bool()
    gt_classes = _check_classes(gt_classes, gt_valid, cls_logits.shape[-1])
    gt_bboxes = gt_bboxes.float()
    r = radius_tests(gt_bboxes, gt_valid, grid, center_radius)  # (B, G, Ux), (B, G, Uy)
    img, anchor = candidates(r.in_x, r.in_y, r.ax, r.ay).nonzero(as_tuple=True)  # (K,)
    if img.numel() == 0:
        zeros = torch.zeros(b, a, dtype=torch.long, device=pred_bboxes.device)
        return BatchAssignment(zeros.bool(), zeros - 1, zeros.float())
    slots = _pack(img, anchor, b)
    boxes = slots.gather(pred_bboxes).float()  # (B, N, 4)
    # Padding objects and slots become zero-size boxes: IoU exactly 0 with anything, so they add
    # nothing to an object's top-k IoU sum (cheaper than masking the (B, G, N) result).
    ious = overlaps = pairwise_iou(
        gt_bboxes.masked_fill(~gt_valid.unsqueeze(-1), 0.0),
        boxes.masked_fill_(~slots.filled.unsqueeze(-1), 0.0),
    )  # (B, G, N)
    if overlap == "nwd":  # padding pairs stay 0, as their IoUs are
        pad = ~gt_valid.unsqueeze(-1) | ~slots.filled.unsqueeze(1)
        overlaps = pairwise_nwd(gt_bboxes, boxes, nwd_constant).masked_fill_(pad, 0.0)
    terms = class_terms(slots.gather(cls_logits), obj_logits.reshape(b, a).gather(1, slots.cand))
    ks = dynamic_k(overlaps, candidate_topk)
    ks = torch.minimum(ks, slots.n_cand.unsqueeze(1)).masked_fill(~gt_valid, 0)
    fg, matched = match(
        slots.geometry(r), overlaps, terms, gt_classes, ks, slots.n_cand, iou_cost_weight
    )
    pred_ious = ious.gather(1, matched.unsqueeze(1)).squeeze(1)  # (B, N) IoU with its object
    return _unpack(slots, fg, matched, pred_ious, a)


@torch.no_grad()
def simota_per_image(
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
    center_radius: float = CENTER_RADIUS,
    candidate_topk: int = CANDIDATE_TOPK,
    iou_cost_weight: float = IOU_COST_WEIGHT,
    overlap: str = "iou",
    nwd_constant: float = NWD_CONSTANT,
) -> BatchAssignment:
    """:func:`simota` image by image, the official loop, in the layout of :func:`simota_batched`
    (same arguments, same result: ``assign_mode: per_image`` keeps it as a check)."""
    b, a = pred_bboxes.shape[:2]
    device = pred_bboxes.device
    fg_mask = torch.zeros(b, a, dtype=torch.bool, device=device)
    matched = torch.full((b, a), -1, dtype=torch.long, device=device)
    pred_ious = torch.zeros(b, a, device=device)
    for i in range(b):
        rows = gt_valid[i].nonzero().squeeze(1)  # (G_i,) this image's objects
        if rows.numel() == 0:
            continue
        r = simota(
            gt_bboxes[i, rows],
            gt_classes[i, rows],
            pred_bboxes[i],
            cls_logits[i],
            obj_logits[i],
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
        matched[i, r.fg_mask] = rows[r.matched_gt_inds]
        pred_ious[i, r.fg_mask] = r.pred_ious
    return BatchAssignment(fg_mask, matched, pred_ious)


def assign(inputs: AssignInputs, settings: AssignSettings, state: DynamicState) -> BatchAssignment:
    """The registry's entry: :func:`simota_batched` (``assign_mode: per_image``:
    :func:`simota_per_image`) with ``center_radius``, ``candidate_topk``, ``iou_cost_weight``,
    ``assign_overlap`` and ``nwd_constant``."""
    run = simota_per_image if settings.assign_mode == "per_image" else simota_batched
    return run(
        *inputs,
        center_radius=settings.center_radius,
        candidate_topk=settings.candidate_topk,
        iou_cost_weight=settings.iou_cost_weight,
        overlap=settings.assign_overlap,
        nwd_constant=settings.nwd_constant,
    )
