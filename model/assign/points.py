"""Pieces shared by the point-based assigners (ATSS, uniform, top-k, dynamic, TOOD, HAMBox).

Conventions of those rules: a point's position is its cell centre ((shift + 0.5) * stride), as in
SimOTA's geometry. Distances to every point are dense (B, G, A) tables (FloW images hold a few
dozen objects, so 16 x 30 x 8400 floats are 16 MB); everything after the choice of candidates
(IoUs, thresholds, conflicts) runs on the candidate columns only, a (B, G, K) table of point
indices: k a level (ATSS), the centre region (top-k, dynamic, TOOD), the 2k claims (uniform).
HAMBox and YOLOF's ignore rule need every prediction's IoU, a dense table. Conflicts (a point
claimed by several objects) follow each paper's rule; ties go to the lower object index
(``argmax`` returns the first maximum), so results are deterministic. ``benchmarks/assign.py``
times each rule against SimOTA.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from model.assign.overlap import broadcast_iou, pairwise_iou
from model.assign.types import BatchAssignment


def sortable(x: Tensor) -> Tensor:
    """float32 -> int64 in [0, 2^32) with the same order (and -0.0 equal to 0.0)."""
    bits = (x.float() + 0.0).view(torch.int32).long()  # + 0.0 turns -0.0 into 0.0
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits) + (1 << 31)


def prior_centres(x_shifts: Tensor, y_shifts: Tensor, strides: Tensor) -> Tensor:
    """(A,) grid -> (A, 2) cell centres in input pixels."""
    s = strides.float()
    return torch.stack([(x_shifts.float() + 0.5) * s, (y_shifts.float() + 0.5) * s], -1)


def prior_boxes(x_shifts: Tensor, y_shifts: Tensor, strides: Tensor, scale: float) -> Tensor:
    """(A,) grid -> (A, 4) squares of ``scale`` x stride at the cell centres (cx, cy, w, h)."""
    side = (strides.float() * scale).unsqueeze(-1)
    return torch.cat([prior_centres(x_shifts, y_shifts, strides), side, side], -1)


def to_xyxy(b: Tensor) -> Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def smallest_k_index(cost: Tensor, k: int, nonneg: bool = False) -> Tensor:
    """(..., N) float -> (..., k') int64, k' = min(k, N): indices of the k smallest entries,
    smallest first, ties to the lower index. Through one int64 key per entry (the cost's order-
    preserving bits, then the index), so ``topk`` (linear in N, unlike a sort) is exact and
    deterministic."""
    n = cost.shape[-1]
    k = min(k, n)
    if nonneg:  # the float32 bits of x >= 0 (not -0.0) are already in order: one pass, not five
        bits = cost.float().view(torch.int32).long()
    else:
        bits = sortable(cost)
    key = bits * (1 << 24) + torch.arange(n, device=cost.device)  # n < 2^24
    return key.topk(k, dim=-1, largest=False, sorted=True).indices


def smallest_k(cost: Tensor, k: int, nonneg: bool = False) -> Tensor:
    """(..., N) -> (..., N) bool: the k smallest entries (ties: lower index, a stable order)."""
    take = torch.zeros_like(cost, dtype=torch.bool)
    if min(k, cost.shape[-1]) > 0:
        take.scatter_(-1, smallest_k_index(cost, k, nonneg), True)
    return take


def resolve_claims(
    claim: Tensor, score: Tensor | None, pred_iou: Tensor | None, ignore: Tensor | None = None
) -> BatchAssignment:
    """Claims (B, G, A) bool -> BatchAssignment; a point claimed by several objects goes to the
    one of highest ``score`` (B, G, A); ``pred_iou`` (B, G, A) gives the result's IoUs."""
    if claim.shape[1] == 0 or score is None:  # no object in the batch: all background
        b, _, a = claim.shape
        zeros = torch.zeros(b, a, dtype=torch.long, device=claim.device)
        return BatchAssignment(zeros.bool(), zeros - 1, zeros.float(), ignore)
    assert pred_iou is not None
    s = score.masked_fill(~claim, -math.inf)
    gi = s.argmax(1)  # (B, A); ties: the lower object index
    fg = claim.any(1)
    matched = torch.where(fg, gi, -1)
    ious = pred_iou.gather(1, gi.unsqueeze(1)).squeeze(1).masked_fill(~fg, 0.0)
    return BatchAssignment(fg, matched, ious, ignore)


def gather_rows(table: Tensor, idx: Tensor) -> Tensor:
    """Rows of ``table`` (A, D) or (B, A, D) at ``idx`` (B, G, K) -> (B, G, K, D)."""
    if table.dim() == 2:
        return table[idx]
    b, d = idx.shape[0], table.shape[-1]
    flat = idx.reshape(b, -1, 1).expand(-1, -1, d)
    return table.gather(1, flat).reshape(*idx.shape, d)


def nearest_per_level(dist: Tensor, strides: Tensor, k: int) -> Tensor:
    """(B, G, A) distances -> (B, G, K) int64: on each level (stride) the k nearest points
    (ties: lower index), all levels together, in ascending point order (so that a later
    "lower index first" tie rule over these columns is a rule over point indices)."""
    parts = []
    # dist >= 0 (never -0.0), so its float32 bits are already an order-preserving integer
    key = dist.float().view(torch.int32).long() * (1 << 24)  # (B, G, A); A < 2^24
    key += torch.arange(dist.shape[-1], device=dist.device)
    for s in torch.unique(strides):
        idx = (strides == s).nonzero().squeeze(1)  # this level's points
        kk = min(k, idx.numel())
        parts.append(idx[key[..., idx].topk(kk, dim=-1, largest=False, sorted=True).indices])
    return torch.cat(parts, -1).sort(-1).values


def fg_ious(fg: Tensor, matched: Tensor, gt: Tensor, pred: Tensor) -> Tensor:
    """(B, A) IoU of each foreground's prediction with its object, 0 for background."""
    out = torch.zeros(fg.shape, device=fg.device)
    img, a = fg.nonzero(as_tuple=True)
    out[img, a] = broadcast_iou(pred[img, a].float(), gt[img, matched[img, a]])
    return out


def resolve_sparse(
    cand: Tensor, claim: Tensor, score: Tensor, gt: Tensor, pred: Tensor
) -> BatchAssignment:
    """:func:`resolve_claims` for claims on candidate columns: cand (B, G, K) point indices
    (distinct per object), claim (B, G, K) bool, score (B, G, K); IoUs of the foregrounds'
    predictions."""
    b, g, _ = cand.shape
    a = pred.shape[1]
    device = cand.device
    bi, gi, ki = claim.nonzero(as_tuple=True)  # (P,) claimed pairs
    point = bi * a + cand[bi, gi, ki]  # (P,) flat (image, point)
    sc = score[bi, gi, ki].float()
    best = torch.full((b * a,), -math.inf, device=device)
    best.scatter_reduce_(0, point, sc, "amax")
    win = sc == best[point]  # the claimants of highest score; ties: the lower object index
    flat = torch.full((b * a,), g, dtype=torch.long, device=device)
    flat.scatter_reduce_(0, point[win], gi[win], "amin")
    fg = (flat < g).view(b, a)
    matched = flat.masked_fill(flat == g, -1).view(b, a)
    return BatchAssignment(fg, matched, fg_ious(fg, matched, gt, pred))


def region_candidates(
    gt: Tensor, valid: Tensor, x_shifts: Tensor, y_shifts: Tensor, strides: Tensor, radius: float
) -> tuple[Tensor, Tensor]:
    """Points within ``radius`` strides of each object's centre (SimOTA's square), as (B, G, K)
    candidate indices and a (B, G, K) in-region mask. The region holds at most
    (floor(2 radius) + 1)^2 points a level, all nearer (in L-infinity) than any point outside,
    so that many nearest points a level contain it."""
    centres = prior_centres(x_shifts, y_shifts, strides)
    inv = 1 / strides.float()
    dist = (centres[:, 0] - gt[..., 0, None]).abs_().mul_(inv)  # (B, G, A) in strides
    dist = torch.maximum(dist, (centres[:, 1] - gt[..., 1, None]).abs_().mul_(inv))
    m = int(math.floor(2 * radius)) + 1
    cand = nearest_per_level(dist, strides, m * m)
    c, r = centres[cand], (strides[cand] * radius)  # (B, G, K, 2), (B, G, K)
    inside = ((c[..., 0] - gt[..., 0, None]).abs() < r) & ((c[..., 1] - gt[..., 1, None]).abs() < r)
    return cand, inside & valid.unsqueeze(-1)


def dense_ious(gt: Tensor, valid: Tensor, pred: Tensor) -> Tensor:
    """(B, G, A) IoU of every prediction with every object (0 for padding objects)."""
    return pairwise_iou(gt.float(), pred.float()).masked_fill(~valid.unsqueeze(-1), 0.0)
