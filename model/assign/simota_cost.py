"""SimOTA's geometry, cost and dynamic-k matching on packed candidate tables (the steps that
``model/assign/simota.py`` runs for one image and for a padded batch alike; see its docstring for
the rule and where we differ from the official code)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from model.assign.points import sortable

OUT_OF_RADIUS_COST = 1e6  # official: pairs outside the centre radius are (almost) never picked
_BCE_LOG_FLOOR = -100.0  # F.binary_cross_entropy clamps log() here
# A within-radius pair costs at most 100 per class + 3 * 18.4 (IoU 0); beyond this many classes
# it could exceed OUT_OF_RADIUS_COST and the shortcut above would no longer be exact.
MAX_CLASSES = 9000
_BLOCK_ELEMENTS = 1 << 15  # elements per block of the per-class terms (fits a core's L2 in float64)


# --------------------------------------------------------------------------- geometry


class Axis(NamedTuple):
    """Distinct (cell centre, radius) values of the anchors along one axis, A -> U of them."""

    centre: Tensor  # (U,) cell centre in pixels, (shift + 0.5) * stride
    dist: Tensor  # (U,) centre radius in pixels, stride * center_radius
    inverse: Tensor  # (A,) int64, anchor -> its entry


def _axis(shifts: Tensor, strides: Tensor, center_radius: float) -> Axis:
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
    return Axis(centre[first], dist[first], inverse)


def _inside(c: Tensor, axis: Axis) -> Tensor:
    """(..., G) object centres along one axis -> (..., G, U) bool: cell centre strictly inside.

    Same float operations as the official test (cell centre minus the square's edges > 0), so
    boundary cases (an object centre exactly 1.5 strides from a cell centre) agree.
    """
    c = c.unsqueeze(-1)  # (..., G, 1)
    return ((axis.centre - (c - axis.dist)) > 0) & (((c + axis.dist) - axis.centre) > 0)


def candidates(in_x: Tensor, in_y: Tensor, ax: Axis, ay: Axis) -> Tensor:
    """(..., G, Ux), (..., G, Uy) axis tests -> (..., A) bool, anchor within some object's radius.

    Through the (Ux, Uy) count of objects per pair of axis values; never objects x anchors.
    """
    pairs = in_x.transpose(-1, -2).float() @ in_y.float()  # (..., Ux, Uy) small integer counts
    flat = ax.inverse * pairs.shape[-1] + ay.inverse  # (A,) each anchor's (x, y) pair
    return pairs.flatten(-2).index_select(-1, flat) > 0


class Radius(NamedTuple):
    """Which anchors lie within ``center_radius`` strides of which object, per axis."""

    ax: Axis
    ay: Axis
    in_x: Tensor  # (..., G, Ux) bool, False on padding rows
    in_y: Tensor  # (..., G, Uy) bool


def radius_tests(
    gt_bboxes: Tensor, gt_valid: Tensor, grid: tuple[Tensor, Tensor, Tensor], center_radius: float
) -> Radius:
    """gt_bboxes (..., G, 4) float32, gt_valid (..., G) bool -> :class:`Radius`."""
    x_shifts, y_shifts, strides = grid
    ax = _axis(x_shifts, strides, center_radius)
    ay = _axis(y_shifts, strides, center_radius)
    valid = gt_valid.unsqueeze(-1)
    in_x = _inside(gt_bboxes[..., 0], ax) & valid  # (..., G, Ux)
    in_y = _inside(gt_bboxes[..., 1], ay) & valid  # (..., G, Uy)
    return Radius(ax, ay, in_x, in_y)


# --------------------------------------------------------------------------- cost and matching


def _stable_order(group: Tensor, cost: Tensor) -> Tensor:
    """Permutation sorting pairs by group, then cost, then their current order. (P,) -> (P,)."""
    return torch.argsort(group * (1 << 32) + sortable(cost), stable=True)


def _log32(x: Tensor) -> Tensor:
    """float32 log, evaluated in float64 and rounded: the same bits wherever x sits in memory."""
    return x.double().log().float()


class ClassTerms(NamedTuple):
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


def class_terms(cls_logits: Tensor, obj_logits: Tensor) -> ClassTerms:
    """cls_logits (B, N, C), obj_logits (B, N) -> :class:`ClassTerms`.

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
    return ClassTerms(p, neg, neg.sum(-1, dtype=torch.float64))


def _pair_cost(cls_cost: Tensor, ious: Tensor, iou_cost_weight: float) -> Tensor:
    """Cost of within-radius pairs from their class cost and IoU (any equal shapes, float32)."""
    return cls_cost + iou_cost_weight * -_log32(ious + 1e-8)


def dynamic_k(ious: Tensor, candidate_topk: int) -> Tensor:
    """(B, G, N) IoUs -> (B, G) int64: max(1, int(sum of the ``candidate_topk`` largest IoUs)).

    Summed in float64: exact for float32 IoUs, so the truncation never depends on the order.
    """
    n = min(candidate_topk, ious.shape[-1])
    return ious.topk(n, dim=-1).values.double().sum(-1).long().clamp(min=1)


def match(
    geometry: Tensor,
    ious: Tensor,
    terms: ClassTerms,
    gt_classes: Tensor,
    ks: Tensor,
    n_cand: Tensor,
    iou_cost_weight: float,
) -> tuple[Tensor, Tensor]:
    """Dynamic-k matching and conflict resolution on a packed batch.

    geometry: (B, G, N) bool, candidate slot n within object g's radius (False for padding);
    ious: (B, G, N) float32, the cost's overlap (IoU, or NWD); terms: the candidates'
    :class:`ClassTerms`; gt_classes: (B, G) int64; ks: (B, G) anchors each object takes (0 for
    padding, <= n_cand); n_cand: (B,) filled candidate slots per image. Returns fg (B, N) bool
    and the matched object (B, N) int64 (meaningful where fg).
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
    return n_objects > 0, matched


def _claims_beyond_radius(
    short: Tensor,
    n_in: Tensor,
    geometry: Tensor,
    ious: Tensor,
    terms: ClassTerms,
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
