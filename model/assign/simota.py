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

Added (issue 17): ``overlap="nwd"`` puts NWD (Wang et al. 2021, ``model.box_losses.nwd``) in place
of the IoU in the cost and the dynamic k, so a tiny object's disjoint candidates are still ranked
by distance; the returned ``pred_ious`` stay IoUs (the class target). The default "iou" runs
exactly the official arithmetic.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from model.box_losses import pairwise_iou, pairwise_nwd
from model.config import CANDIDATE_TOPK, CENTER_RADIUS, IOU_COST_WEIGHT

OUT_OF_RADIUS_COST = 1e6  # official: pairs outside the centre radius are (almost) never picked
_BCE_LOG_FLOOR = -100.0  # F.binary_cross_entropy clamps log() here
# A within-radius pair costs at most 100 per class + 3 * 18.4 (IoU 0); beyond this many classes
# it could exceed OUT_OF_RADIUS_COST and the shortcut above would no longer be exact.
_MAX_CLASSES = 9000
_BLOCK_ELEMENTS = 1 << 15  # elements per block of the per-class terms (fits a core's L2 in float64)


class Assignment(NamedTuple):
    """SimOTA result for one image with A anchors and F foregrounds.

    fg_mask: (A,) bool, anchors assigned to an object.
    matched_gt_inds: (F,) int64, the object (row of ``gt_bboxes``) of each foreground anchor,
        in anchor order.
    pred_ious: (F,) float32, IoU of each foreground's predicted box with its object.
    """

    fg_mask: Tensor
    matched_gt_inds: Tensor
    pred_ious: Tensor

    @property
    def num_fg(self) -> int:
        return int(self.matched_gt_inds.numel())


class BatchAssignment(NamedTuple):
    """SimOTA result for B images of A anchors, per anchor so that a loss needs no image loop.

    fg_mask: (B, A) bool.
    matched_gt_inds: (B, A) int64, the object (index along G of ``gt_bboxes``), -1 for background.
    pred_ious: (B, A) float32, IoU with the matched object, 0 for background.
    ignore_mask: (B, A) bool or None (issue 17, YOLOF's ignore rules): background anchors left
        out of the objectness loss. None (SimOTA) = none ignored.
    weights: (B, A) float32 or None (issue 17, HAMBox): loss weight of each foreground. None
        (SimOTA) = 1 for all.
    """

    fg_mask: Tensor
    matched_gt_inds: Tensor
    pred_ious: Tensor
    ignore_mask: Tensor | None = None
    weights: Tensor | None = None

    def image(self, b: int) -> Assignment:
        """Image ``b`` in the layout of :func:`simota`."""
        fg = self.fg_mask[b]
        return Assignment(fg, self.matched_gt_inds[b][fg], self.pred_ious[b][fg])


# --------------------------------------------------------------------------- geometry


class _Axis(NamedTuple):
    """Distinct (cell centre, radius) values of the anchors along one axis, A -> U of them."""

    centre: Tensor  # (U,) cell centre in pixels, (shift + 0.5) * stride
    dist: Tensor  # (U,) centre radius in pixels, stride * center_radius
    inverse: Tensor  # (A,) int64, anchor -> its entry


def _axis(shifts: Tensor, strides: Tensor, center_radius: float) -> _Axis:
    """Group anchors by their (centre, radius) along one axis (640 input: 8400 anchors, 140).

    The radius test then runs on objects x U values instead of objects x A: at 16 x 30 x 8400
    the dense test is memory-bound and costs more than all the rest of SimOTA.
    """
    centre = (shifts.float() + 0.5) * strides.float()  # (A,) as the official, in float32
    dist = strides.float() * center_radius
    # the exact float pair as one int64: both bit patterns (signed, so no overflow)
    key = centre.view(torch.int32).long() * (1 << 32) + dist.view(torch.int32).long()
    uniq, inverse = torch.unique(key, return_inverse=True)
    anchors = torch.arange(key.numel(), device=key.device)
    first = torch.empty_like(uniq).scatter_(0, inverse, anchors)  # one anchor per entry
    return _Axis(centre[first], dist[first], inverse)


def _inside(c: Tensor, axis: _Axis) -> Tensor:
    """(..., G) object centres along one axis -> (..., G, U) bool: cell centre strictly inside.

    Same float operations as the official test (cell centre minus the square's edges > 0), so
    boundary cases (an object centre exactly 1.5 strides from a cell centre) agree.
    """
    c = c.unsqueeze(-1)  # (..., G, 1)
    return ((axis.centre - (c - axis.dist)) > 0) & (((c + axis.dist) - axis.centre) > 0)


def _candidates(in_x: Tensor, in_y: Tensor, ax: _Axis, ay: _Axis) -> Tensor:
    """(..., G, Ux), (..., G, Uy) axis tests -> (..., A) bool, anchor within some object's radius.

    Through the (Ux, Uy) count of objects per pair of axis values; never objects x anchors.
    """
    pairs = in_x.transpose(-1, -2).float() @ in_y.float()  # (..., Ux, Uy) small integer counts
    flat = ax.inverse * pairs.shape[-1] + ay.inverse  # (A,) each anchor's (x, y) pair
    return pairs.flatten(-2).index_select(-1, flat) > 0


# --------------------------------------------------------------------------- cost and matching


def _sortable(x: Tensor) -> Tensor:
    """float32 -> int64 in [0, 2^32) with the same order (and -0.0 equal to 0.0)."""
    bits = (x.float() + 0.0).view(torch.int32).long()  # + 0.0 turns -0.0 into 0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)


def _stable_order(group: Tensor, cost: Tensor) -> Tensor:
    """Permutation sorting pairs by group, then cost, then their current order. (P,) -> (P,)."""
    return torch.argsort(group * (1 << 32) + _sortable(cost), stable=True)


def _log32(x: Tensor) -> Tensor:
    """float32 log, evaluated in float64 and rounded: the same bits wherever x sits in memory."""
    return x.double().log().float()


class _ClassTerms(NamedTuple):
    """Per (anchor, class) pieces of the classification cost, from which the cost of any (anchor,
    object class) pair is looked up: sum over classes j of BCE(p_j, [j == c]) with
    p = sqrt(sigmoid(cls) * sigmoid(obj)) equals neg_sum - neg_c + pos_c."""

    p: Tensor  # (B, N, C) float32
    neg: Tensor  # (B, N, C) float32, BCE against target 0: -max(log(1 - p), -100)
    neg_sum: Tensor  # (B, N) float64, its sum over classes (the order no longer shows in float32)

    def cost(self, img: Tensor, slot: Tensor, cls: Tensor) -> Tensor:
        """float32 class cost of the pairs at (broadcast) index tensors img, slot, cls."""
        pos = -_log32(self.p[img, slot, cls]).clamp(min=_BCE_LOG_FLOOR)  # BCE against target 1
        return (self.neg_sum[img, slot] - self.neg[img, slot, cls] + pos).float()


def _class_terms(cls_logits: Tensor, obj_logits: Tensor) -> _ClassTerms:
    """cls_logits (B, N, C), obj_logits (B, N) -> :class:`_ClassTerms`.

    The official float32 steps (so a saturated score still hits BCE's log floor of -100), with
    only the transcendentals via float64 (see :func:`_log32`). With 80 classes these are the
    largest arrays of the assignment, so they are computed in blocks of rows that stay in cache
    (a dozen passes over a 5 MB float64 array run twice as long as over blocks of it).
    """
    b, n, c = cls_logits.shape
    logits = cls_logits.reshape(b * n, c)
    obj = obj_logits.reshape(b * n, 1)
    p = torch.empty(b * n, c, device=cls_logits.device)
    neg = torch.empty_like(p)
    rows = max(1, _BLOCK_ELEMENTS // c)
    for r in range(0, b * n, rows):
        block = p[r : r + rows]
        torch.mul(
            logits[r : r + rows].double().sigmoid_(),
            obj[r : r + rows].double().sigmoid_().float(),
            out=block,
        )
        block.sqrt_()
        neg[r : r + rows] = _log32(1 - block).clamp_(min=_BCE_LOG_FLOOR).neg_()
    p, neg = p.view(b, n, c), neg.view(b, n, c)
    return _ClassTerms(p, neg, neg.sum(-1, dtype=torch.float64))


def _pair_cost(cls_cost: Tensor, ious: Tensor, iou_cost_weight: float) -> Tensor:
    """Cost of within-radius pairs from their class cost and IoU (any equal shapes, float32)."""
    return cls_cost + iou_cost_weight * -_log32(ious + 1e-8)


def _dynamic_k(ious: Tensor, candidate_topk: int) -> Tensor:
    """(B, G, N) IoUs -> (B, G) int64: max(1, int(sum of the ``candidate_topk`` largest IoUs)).

    Summed in float64: exact for float32 IoUs, so the truncation never depends on the order.
    """
    n = min(candidate_topk, ious.shape[-1])
    return ious.topk(n, dim=-1).values.double().sum(-1).long().clamp(min=1)


def _match(
    geometry: Tensor,
    ious: Tensor,
    terms: _ClassTerms,
    gt_classes: Tensor,
    ks: Tensor,
    n_cand: Tensor,
    iou_cost_weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Dynamic-k matching and conflict resolution on a packed batch.

    geometry: (B, G, N) bool, candidate slot n within object g's radius (False for padding);
    ious: (B, G, N) float32; terms: the candidates' :class:`_ClassTerms`; gt_classes: (B, G)
    int64; ks: (B, G) anchors each object takes (0 for padding, <= n_cand); n_cand: (B,) filled
    candidate slots per image. Returns fg (B, N) bool, matched object (B, N) int64 and its IoU
    (B, N) float32 (meaningful where fg).
    """
    b, g, n = geometry.shape
    device = geometry.device
    img, obj, slot = geometry.nonzero(as_tuple=True)  # (P,) within-radius pairs, (b, g, n) order
    cls_cost = terms.cost(img, slot, gt_classes[img, obj])
    cost = _pair_cost(cls_cost, ious[img, obj, slot], iou_cost_weight)
    # each object's k cheapest within-radius pairs (ties: lower slot, since pairs are in n order)
    group = img * g + obj
    n_in = torch.bincount(group, minlength=b * g)  # (B*G,) pairs per object
    order = _stable_order(group, cost)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=device) - (n_in.cumsum(0) - n_in)[group[order]]
    k_flat = ks.reshape(-1)
    take = rank < k_flat[group]
    claims = [(img[take], obj[take], slot[take])]
    short = (k_flat > n_in).nonzero().squeeze(1)  # objects wanting more than their radius holds
    if short.numel():
        claims.append(
            _claims_beyond_radius(
                short, n_in, geometry, ious, terms, gt_classes, ks, n_cand, iou_cost_weight
            )
        )
    ci, cg, cn = (torch.cat(t) for t in zip(*claims, strict=True))
    n_objects = torch.zeros(b, n, dtype=torch.long, device=device)
    n_objects.index_put_((ci, cn), torch.ones_like(ci), accumulate=True)
    matched = torch.zeros(b, n, dtype=torch.long, device=device)
    matched[ci, cn] = cg  # contested anchors are settled just below
    # Official rule: a contested anchor goes to the least-cost object among *all* objects. That is
    # always a within-radius one (cost < 1e6 <= any other), lowest index on ties as argmin does.
    contested = n_objects[img, slot] > 1  # (P,) pairs whose anchor is contested
    if bool(contested.any()):
        pi, pg, pn = img[contested], obj[contested], slot[contested]
        anchor = pi * n + pn
        order = _stable_order(anchor, cost[contested])
        anchor = anchor[order]
        first = torch.ones_like(anchor, dtype=torch.bool)
        first[1:] = anchor[1:] != anchor[:-1]
        win = order[first]
        matched[pi[win], pn[win]] = pg[win]
    pred_ious = ious.gather(1, matched.unsqueeze(1)).squeeze(1)  # (B, N)
    return n_objects > 0, matched, pred_ious


def _claims_beyond_radius(
    short: Tensor,
    n_in: Tensor,
    geometry: Tensor,
    ious: Tensor,
    terms: _ClassTerms,
    gt_classes: Tensor,
    ks: Tensor,
    n_cand: Tensor,
    iou_cost_weight: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Anchors outside the radius taken by the objects ``short`` (flat b * G + g indices).

    Their full official cost row over all candidates: within-radius pairs come first (all already
    taken), then the others by cost + 1e6; the next k - n_in of those are returned as
    (image, object, slot) triples.
    """
    g, n = geometry.shape[1:]
    sb, sg = short // g, short % g  # (S,)
    slots = torch.arange(n, device=geometry.device)
    row_cls = terms.cost(sb[:, None], slots, gt_classes[sb, sg][:, None])  # (S, N)
    row = _pair_cost(row_cls, ious[sb, sg], iou_cost_weight)
    row = row + OUT_OF_RADIUS_COST * (~geometry[sb, sg]).float()
    row = row.masked_fill(slots >= n_cand[sb].unsqueeze(1), float("inf"))  # padding slots
    order = row.argsort(dim=1, stable=True)  # (S, N)
    pick = (slots >= n_in[short].unsqueeze(1)) & (slots < ks[sb, sg].unsqueeze(1))  # (S, N)
    rows = torch.arange(short.numel(), device=row.device).unsqueeze(1).expand_as(order)[pick]
    return sb[rows], sg[rows], order[pick]


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
    if cls_logits.shape[-1] > _MAX_CLASSES:
        problems.append(f"{cls_logits.shape[-1]} classes (at most {_MAX_CLASSES})")
    if problems:
        raise ValueError("simota: bad inputs: " + "; ".join(problems))


def _check_classes(gt_classes: Tensor, valid: Tensor, num_classes: int) -> Tensor:
    """Class ids as int64 (padding rows set to 0); ids outside [0, C) raise a ValueError."""
    ids = gt_classes.long().masked_fill(~valid, 0)
    bad = valid & ((ids < 0) | (ids >= num_classes) | (ids != gt_classes))
    if bool(bad.any()):
        raise ValueError(
            f"simota: object class ids must be integers in [0, {num_classes}) (the number of class "
            f"logits); got {gt_classes[bad].unique().tolist()}"
        )
    return ids


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
    nwd_constant: float = 12.8,
) -> Assignment:
    """SimOTA for one image.

    gt_bboxes: (G, 4) cx, cy, w, h in input pixels; gt_classes: (G,) class ids (any dtype);
    pred_bboxes: (A, 4) decoded cx, cy, w, h in input pixels; cls_logits: (A, C);
    obj_logits: (A,) or (A, 1); x_shifts, y_shifts: (A,) grid-cell indices; strides: (A,) pixels.
    """
    _check_shapes(
        gt_bboxes,
        gt_classes,
        pred_bboxes,
        cls_logits,
        obj_logits,
        (x_shifts, y_shifts, strides),
        batched=False,
    )
    num_anchors = pred_bboxes.shape[0]
    device = pred_bboxes.device
    fg_mask = torch.zeros(num_anchors, dtype=torch.bool, device=device)
    empty = Assignment(
        fg_mask, torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, device=device)
    )
    if gt_bboxes.shape[0] == 0:
        return empty
    gt_classes = _check_classes(
        gt_classes, torch.ones_like(gt_classes, dtype=torch.bool), cls_logits.shape[-1]
    )
    gt_bboxes = gt_bboxes.float()
    ax = _axis(x_shifts, strides, center_radius)
    ay = _axis(y_shifts, strides, center_radius)
    in_x = _inside(gt_bboxes[:, 0], ax)  # (G, Ux)
    in_y = _inside(gt_bboxes[:, 1], ay)  # (G, Uy)
    cand = _candidates(in_x, in_y, ax, ay).nonzero().squeeze(1)  # (N,)
    if cand.numel() == 0:
        return empty
    geometry = in_x[:, ax.inverse[cand]] & in_y[:, ay.inverse[cand]]  # (G, N)
    ious = pairwise_iou(gt_bboxes, pred_bboxes[cand].float())  # (G, N)
    true_ious = ious
    if overlap == "nwd":
        ious = pairwise_nwd(gt_bboxes, pred_bboxes[cand].float(), nwd_constant)
    terms = _class_terms(cls_logits[cand][None], obj_logits.reshape(-1)[cand][None])
    ks = _dynamic_k(ious, candidate_topk)  # (G,)
    fg, matched, pred_ious = _match(
        geometry[None],
        ious[None],
        terms,
        gt_classes[None],
        ks[None],
        torch.tensor([cand.numel()], device=device),
        iou_cost_weight,
    )
    fg = fg[0]
    fg_mask[cand] = fg
    if overlap == "nwd":
        pred_ious = true_ious.gather(0, matched[0].unsqueeze(0))
    return Assignment(fg_mask, matched[0][fg], pred_ious[0][fg])


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
    nwd_constant: float = 12.8,
) -> BatchAssignment:
    """SimOTA for a padded batch; image b's result equals :func:`simota` on its valid objects.

    gt_bboxes: (B, G, 4) cx, cy, w, h in input pixels; gt_classes: (B, G); gt_valid: (B, G) bool
    (False rows are padding, anywhere); pred_bboxes: (B, A, 4); cls_logits: (B, A, C);
    obj_logits: (B, A) or (B, A, 1); x_shifts, y_shifts, strides: (A,) shared by all images.
    Matched indices refer to the G axis of ``gt_bboxes``. Work and memory scale with
    B x G x (largest candidate count), never B x G x A.
    """
    _check_shapes(
        gt_bboxes,
        gt_classes,
        pred_bboxes,
        cls_logits,
        obj_logits,
        (x_shifts, y_shifts, strides),
        batched=True,
    )
    if gt_valid.shape != gt_classes.shape:
        raise ValueError(
            f"simota: gt_valid {tuple(gt_valid.shape)} must match gt_classes "
            f"{tuple(gt_classes.shape)}"
        )
    b, a = pred_bboxes.shape[:2]
    device = pred_bboxes.device
    fg_mask = torch.zeros(b, a, dtype=torch.bool, device=device)
    matched_all = torch.full((b, a), -1, dtype=torch.long, device=device)
    ious_all = torch.zeros(b, a, device=device)
    gt_valid = gt_valid.bool()
    gt_classes = _check_classes(gt_classes, gt_valid, cls_logits.shape[-1])
    gt_bboxes = gt_bboxes.float()
    ax = _axis(x_shifts, strides, center_radius)
    ay = _axis(y_shifts, strides, center_radius)
    in_x = _inside(gt_bboxes[..., 0], ax) & gt_valid.unsqueeze(-1)  # (B, G, Ux)
    in_y = _inside(gt_bboxes[..., 1], ay) & gt_valid.unsqueeze(-1)  # (B, G, Uy)
    img, anchor = _candidates(in_x, in_y, ax, ay).nonzero(as_tuple=True)  # (K,), image-major
    if img.numel() == 0:
        return BatchAssignment(fg_mask, matched_all, ious_all)
    # Pack each image's candidates, in anchor order, into slots 0..n_cand[b]-1 of a (B, N) table.
    n_cand = torch.bincount(img, minlength=b)  # (B,)
    slot = torch.arange(img.numel(), device=device) - (n_cand.cumsum(0) - n_cand)[img]  # (K,)
    n = int(n_cand.max())
    cand = torch.zeros(b, n, dtype=torch.long, device=device).index_put_((img, slot), anchor)
    cand_valid = torch.arange(n, device=device) < n_cand.unsqueeze(1)  # (B, N)
    g = gt_bboxes.shape[1]
    geometry = (
        in_x.gather(2, ax.inverse[cand].unsqueeze(1).expand(b, g, n))
        & in_y.gather(2, ay.inverse[cand].unsqueeze(1).expand(b, g, n))
        & cand_valid.unsqueeze(1)
    )  # (B, G, N)
    boxes = pred_bboxes.gather(1, cand.unsqueeze(-1).expand(b, n, 4)).float()  # (B, N, 4)
    # Padding objects and slots become zero-size boxes: IoU exactly 0 with anything, so they add
    # nothing to an object's top-k IoU sum (cheaper than masking the (B, G, N) result).
    ious = pairwise_iou(
        gt_bboxes.masked_fill(~gt_valid.unsqueeze(-1), 0.0),
        boxes.masked_fill_(~cand_valid.unsqueeze(-1), 0.0),
    )  # (B, G, N)
    true_ious = ious
    if overlap == "nwd":  # padding pairs stay 0, as their IoUs are
        pad = ~gt_valid.unsqueeze(-1) | ~cand_valid.unsqueeze(1)
        ious = pairwise_nwd(gt_bboxes, boxes, nwd_constant).masked_fill_(pad, 0.0)
    cls = cls_logits.gather(1, cand.unsqueeze(-1).expand(b, n, cls_logits.shape[-1]))  # (B, N, C)
    terms = _class_terms(cls, obj_logits.reshape(b, a).gather(1, cand))  # (B, N, C) pieces
    ks = _dynamic_k(ious, candidate_topk)
    ks = torch.minimum(ks, n_cand.unsqueeze(1)).masked_fill(~gt_valid, 0)
    fg, matched, pred_ious = _match(geometry, ious, terms, gt_classes, ks, n_cand, iou_cost_weight)
    if overlap == "nwd":
        pred_ious = true_ious.gather(1, matched.unsqueeze(1)).squeeze(1)
    fg_k = fg[img, slot]  # (K,) back from slots to anchors
    fg_mask[img, anchor] = fg_k
    matched_all[img, anchor] = matched[img, slot].masked_fill(~fg_k, -1)
    ious_all[img, anchor] = pred_ious[img, slot].masked_fill(~fg_k, 0.0)
    return BatchAssignment(fg_mask, matched_all, ious_all)
