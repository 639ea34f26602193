"""Label assigners beside SimOTA (issue 17): ATSS, YOLOF's uniform matching, fixed top-k, Dynamic
R-CNN's dynamic threshold, and HAMBox compensation on top of any of them.

Each is a plain ``@torch.no_grad()`` function of a padded batch returning the
:class:`~model.assign.simota.BatchAssignment` of ``simota_batched``. The inputs are those of
``simota_batched`` without the class scores (none of these rules looks at them):

    gt_bboxes: (B, G, 4) cx, cy, w, h in input pixels; gt_valid: (B, G) bool, False = padding;
    pred_bboxes: (B, A, 4) decoded cx, cy, w, h; x_shifts, y_shifts: (A,) grid-cell indices;
    strides: (A,) pixels per cell.

Distances to every point are dense (B, G, A) tables (FloW images hold a few dozen objects, so
16 x 30 x 8400 floats are 16 MB); everything after the choice of candidates (IoUs, thresholds,
conflicts) runs on the candidate columns only: k a level (ATSS), the centre region (top-k,
dynamic), the 2k claims (uniform). HAMBox and YOLOF's ignore rule need every prediction's IoU,
a dense table. ``benchmarks/assign.py`` times each against SimOTA.
A point's position is its cell centre ((shift + 0.5) * stride), as in SimOTA's geometry.
Conflicts (a point claimed by several objects) follow each paper's rule; ties go to the lower
object index (``argmax`` returns the first maximum), so results are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from model.assign.simota import BatchAssignment, _sortable
from model.box_losses import pairwise_iou
from model.config import CENTER_RADIUS

ATSS_K = 9  # ATSS (Algorithm 1): k = 9 candidates per level
ATSS_PRIOR_SCALE = 8.0  # ATSS for FCOS: one square anchor of 8 x stride a point
UNIFORM_K = 4  # YOLOF (Uniform Matching): k = 4 anchors and 4 predictions
UNIFORM_PRIOR_SCALE = 1.0  # our prior box for YOLOF's anchor: the cell itself (see uniform)
UNIFORM_NEG_IGNORE = 0.7  # YOLOF: negatives whose prediction has IoU > 0.7 with an object ignored
UNIFORM_POS_IGNORE = 0.15  # YOLOF: positives whose anchor has IoU < 0.15 with its object ignored
TOPK_K = 9
HAMBOX_K = 3  # compensate objects with fewer positives than this
HAMBOX_IOU = 0.35  # a compensated prediction's box must overlap its object at least this much


def default_k(assigner: str) -> int:
    """The paper value of ``assign_k`` for ``assigner`` (0 where it has no k)."""
    return {"atss": ATSS_K, "uniform": UNIFORM_K, "topk": TOPK_K}.get(assigner, 0)


# --------------------------------------------------------------------------- shared pieces


def prior_centres(x_shifts: Tensor, y_shifts: Tensor, strides: Tensor) -> Tensor:
    """(A,) grid -> (A, 2) cell centres in input pixels."""
    s = strides.float()
    return torch.stack([(x_shifts.float() + 0.5) * s, (y_shifts.float() + 0.5) * s], -1)


def prior_boxes(x_shifts: Tensor, y_shifts: Tensor, strides: Tensor, scale: float) -> Tensor:
    """(A,) grid -> (A, 4) squares of ``scale`` x stride at the cell centres (cx, cy, w, h)."""
    side = (strides.float() * scale).unsqueeze(-1)
    return torch.cat([prior_centres(x_shifts, y_shifts, strides), side, side], -1)


def _xyxy(b: Tensor) -> Tensor:
    return torch.cat([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _smallest_k_index(cost: Tensor, k: int, nonneg: bool = False) -> Tensor:
    """(..., N) float -> (..., k') int64, k' = min(k, N): indices of the k smallest entries,
    smallest first, ties to the lower index. Through one int64 key per entry (the cost's order-
    preserving bits, then the index), so ``topk`` (linear in N, unlike a sort) is exact and
    deterministic."""
    n = cost.shape[-1]
    k = min(k, n)
    if nonneg:  # the float32 bits of x >= 0 (not -0.0) are already in order: one pass, not five
        bits = cost.float().view(torch.int32).long()
    else:
        bits = _sortable(cost)
    key = bits * (1 << 24) + torch.arange(n, device=cost.device)  # n < 2^24
    return key.topk(k, dim=-1, largest=False, sorted=True).indices


def _smallest_k(cost: Tensor, k: int, nonneg: bool = False) -> Tensor:
    """(..., N) -> (..., N) bool: the k smallest entries (ties: lower index, a stable order)."""
    take = torch.zeros_like(cost, dtype=torch.bool)
    if min(k, cost.shape[-1]) > 0:
        take.scatter_(-1, _smallest_k_index(cost, k, nonneg), True)
    return take


def _resolve(
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


def _iou(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise IoU of broadcast (..., 4) cx, cy, w, h boxes -> (...); 0 for two empty boxes."""
    a_lo, a_hi = a[..., :2] - a[..., 2:] / 2, a[..., :2] + a[..., 2:] / 2
    b_lo, b_hi = b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2
    inter = (torch.minimum(a_hi, b_hi) - torch.maximum(a_lo, b_lo)).clamp(min=0).prod(-1)
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    return inter / union.clamp(min=torch.finfo(union.dtype).tiny)


def _gather(table: Tensor, idx: Tensor) -> Tensor:
    """Rows of ``table`` (A, D) or (B, A, D) at ``idx`` (B, G, K) -> (B, G, K, D)."""
    if table.dim() == 2:
        return table[idx]
    b, d = idx.shape[0], table.shape[-1]
    flat = idx.reshape(b, -1, 1).expand(-1, -1, d)
    return table.gather(1, flat).reshape(*idx.shape, d)


def _nearest_per_level(dist: Tensor, strides: Tensor, k: int) -> Tensor:
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


def _fg_ious(fg: Tensor, matched: Tensor, gt: Tensor, pred: Tensor) -> Tensor:
    """(B, A) IoU of each foreground's prediction with its object, 0 for background."""
    out = torch.zeros(fg.shape, device=fg.device)
    img, a = fg.nonzero(as_tuple=True)
    out[img, a] = _iou(pred[img, a].float(), gt[img, matched[img, a]])
    return out


def _resolve_sparse(
    cand: Tensor, claim: Tensor, score: Tensor, gt: Tensor, pred: Tensor
) -> BatchAssignment:
    """:func:`_resolve` for claims on candidate columns: cand (B, G, K) point indices (distinct
    per object), claim (B, G, K) bool, score (B, G, K); IoUs of the foregrounds' predictions."""
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
    return BatchAssignment(fg, matched, _fg_ious(fg, matched, gt, pred))


def _region_candidates(
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
    cand = _nearest_per_level(dist, strides, m * m)
    c, r = centres[cand], (strides[cand] * radius)  # (B, G, K, 2), (B, G, K)
    inside = ((c[..., 0] - gt[..., 0, None]).abs() < r) & ((c[..., 1] - gt[..., 1, None]).abs() < r)
    return cand, inside & valid.unsqueeze(-1)


def _pred_ious(gt: Tensor, valid: Tensor, pred: Tensor) -> Tensor:
    """(B, G, A) IoU of every prediction with every object (0 for padding objects)."""
    return pairwise_iou(gt.float(), pred.float()).masked_fill(~valid.unsqueeze(-1), 0.0)


# --------------------------------------------------------------------------- the assigners


@torch.no_grad()
def atss(
    gt_bboxes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    *,
    k: int = ATSS_K,
) -> BatchAssignment:
    """ATSS (Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via
    Adaptive Training Sample Selection", CVPR 2020; the section of that name, Algorithm 1).

    Per object: on each level (stride) the ``k`` points whose centres are nearest (L2) to the
    object's centre are candidates; the IoU of each candidate's prior box (a square of
    8 x stride, as ATSS gives anchor-free FCOS) with the object is computed; the threshold is
    mean + std (unbiased, as the reference) of the candidates' IoUs; positives are candidates
    with IoU >= threshold whose centre lies inside the object. A point claimed by several
    objects goes to the one of highest prior IoU. ``pred_ious`` are those of the predictions.
    The prediction is not used for the choice, only for the returned IoU.
    """
    valid = gt_valid.bool()
    gt = gt_bboxes.float()
    centres = prior_centres(x_shifts, y_shifts, strides)  # (A, 2)
    dist = (centres[:, 0] - gt[..., 0, None]).square_()  # (B, G, A) squared L2
    dist += (centres[:, 1] - gt[..., 1, None]).square_()
    cand = _nearest_per_level(dist, strides, k)  # (B, G, K) candidates, K = k x levels
    priors = prior_boxes(x_shifts, y_shifts, strides, ATSS_PRIOR_SCALE)  # (A, 4)
    ious = _iou(gt.unsqueeze(-2), priors[cand])  # (B, G, K)
    n = ious.shape[-1]
    mean = ious.mean(-1, keepdim=True)
    std = ious.std(-1, keepdim=True) if n > 1 and ious.numel() else torch.zeros_like(mean)
    c, box = centres[cand], _xyxy(gt).unsqueeze(-2)  # (B, G, K, 2), (B, G, 1, 4)
    inside = ((c - box[..., :2]) > 0).all(-1) & ((box[..., 2:] - c) > 0).all(-1)
    pos = (ious >= mean + std) & inside & valid.unsqueeze(-1)
    return _resolve_sparse(cand, pos, ious, gt, pred_bboxes)


@torch.no_grad()
def uniform(
    gt_bboxes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    *,
    k: int = UNIFORM_K,
) -> BatchAssignment:
    """Uniform matching (YOLOF: Chen et al., "You Only Look One-level Feature", CVPR 2021,
    section "Uniform Matching").

    Each object takes the ``k`` priors and the ``k`` predicted boxes nearest to it by the L1
    distance of their (x1, y1, x2, y2) coordinates, so every object, large or tiny, gets up to
    2k positives. YOLOF's ignore rules: a positive whose prior has IoU < 0.15 with its object
    is dropped and ignored, and a negative whose predicted box has IoU > 0.7 with some object is
    ignored (``ignore_mask``: left out of the objectness loss, YOLOF's classification loss).

    Departures, for an anchor-free multi-level head: the prior of a point is its cell (a square
    of 1 x stride; YOLOF has sized anchors on one level); priors of all levels compete; a point
    chosen by several objects goes to the one nearest in L1 (YOLOF keeps the last written); and
    an object's single best-IoU prior positive is never dropped by the 0.15 rule, since a 4 px
    box straddling two 8 px cells reaches at most IoU 0.05 with any cell.
    """
    valid = gt_valid.bool()
    gt = gt_bboxes.float()
    priors = prior_boxes(x_shifts, y_shifts, strides, UNIFORM_PRIOR_SCALE)  # (A, 4)
    gt_xyxy = _xyxy(gt)  # (B, G, 4)
    b = gt.shape[0]
    prior_xyxy = _xyxy(priors).expand(b, -1, -1)  # (B, A, 4)
    cost_prior = torch.cdist(gt_xyxy, prior_xyxy, p=1)  # (B, G, A) L1 distances
    cost_pred = torch.cdist(gt_xyxy, _xyxy(pred_bboxes.float()), p=1)
    # (B, G, 2k) the k nearest priors and the k nearest predictions, in point order (a point
    # chosen both ways appears twice, harmlessly: claims are settled per point)
    cand = torch.cat(
        [_smallest_k_index(cost_prior, k, nonneg=True), _smallest_k_index(cost_pred, k, True)], -1
    ).sort(-1).values
    score = -torch.minimum(cost_prior.gather(-1, cand), cost_pred.gather(-1, cand))
    prior_iou = _iou(gt.unsqueeze(-2), priors[cand])  # (B, G, 2k)
    best = prior_iou.argmax(-1, keepdim=True)  # each object's best prior (ties: lower point)
    keep_best = torch.zeros_like(prior_iou, dtype=torch.bool).scatter_(-1, best, True)
    dropped = (prior_iou < UNIFORM_POS_IGNORE) & ~keep_best & valid.unsqueeze(-1)
    claim = valid.unsqueeze(-1) & ~dropped
    asg = _resolve_sparse(cand, claim, score, gt, pred_bboxes)
    high = (_pred_ious(gt, valid, pred_bboxes) > UNIFORM_NEG_IGNORE).any(1)  # (B, A)
    was_dropped = torch.zeros_like(high)
    bi, gi, ki = dropped.nonzero(as_tuple=True)
    was_dropped[bi, cand[bi, gi, ki]] = True
    ignore = ~asg.fg_mask & (high | was_dropped)
    return asg._replace(ignore_mask=ignore)


@torch.no_grad()
def topk(
    gt_bboxes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    x_shifts: Tensor,
    y_shifts: Tensor,
    strides: Tensor,
    *,
    k: int = TOPK_K,
    center_radius: float = CENTER_RADIUS,
) -> BatchAssignment:
    """Fixed top-k: each object takes the ``k`` predictions of highest IoU among the points
    within ``center_radius`` strides of its centre (SimOTA's centre region, all levels), however
    small those IoUs are (the fixed-k rule the notes list as a competition trick for small
    objects: no dynamic k that rounds a tiny object's IoU sum down to 1). Ties in IoU go to the
    lower point index; a point claimed by several objects goes to the one of highest IoU.
    """
    valid = gt_valid.bool()
    gt = gt_bboxes.float()
    cand, region = _region_candidates(gt, valid, x_shifts, y_shifts, strides, center_radius)
    ious = _iou(gt.unsqueeze(-2), _gather(pred_bboxes.float(), cand))  # (B, G, K)
    order = (-ious).masked_fill(~region, math.inf)  # outside the region: last
    claim = _smallest_k(order, k) & region  # columns in point order: ties to the lower index
    return _resolve_sparse(cand, claim, ious, gt, pred_bboxes)


@dataclass
class DynamicState:
    """Dynamic R-CNN's training state: the IoU threshold and SmoothL1 beta with the statistics
    collected since their last update. Plain numbers, saved in checkpoints by ``model/train.py``.

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
    interval: int = 100
    iteration: int = 0
    iou_history: list[float] = field(default_factory=list)
    beta_history: list[float] = field(default_factory=list)

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
    cand, region = _region_candidates(gt, valid, x_shifts, y_shifts, strides, center_radius)
    ious = _iou(gt.unsqueeze(-2), _gather(pred_bboxes.float(), cand))  # (B, G, K)
    best = _smallest_k((-ious).masked_fill(~region, math.inf), 1) & region
    claim = (region & (ious >= iou_thr)) | best
    return _resolve_sparse(cand, claim, ious, gt, pred_bboxes)


@torch.no_grad()
def hambox(
    asg: BatchAssignment,
    gt_bboxes: Tensor,
    gt_valid: Tensor,
    pred_bboxes: Tensor,
    *,
    k: int = HAMBOX_K,
    iou_thr: float = HAMBOX_IOU,
) -> BatchAssignment:
    """HAMBox compensation (Liu et al., "HAMBox: Delving into Mining High-Quality Anchors on Face
    Detection", CVPR 2020, online high-quality anchor mining) on top of ``asg``.

    An object with N < ``k`` positives takes up to k - N unassigned (and not ignored)
    predictions whose regressed box has IoU >= ``iou_thr`` with it, highest IoU first (ties:
    lower point index); a prediction wanted by several objects goes to the one of highest IoU.
    Compensated positives carry ``weights`` = that IoU (HAMBox's regression-aware weighting),
    the others 1. Returns the new assignment with ``weights`` (B, A) set.
    """
    valid = gt_valid.bool()
    b, g = valid.shape
    ious = _pred_ious(gt_bboxes.float(), valid, pred_bboxes)  # (B, G, A)
    counts = torch.zeros(b, g + 1, dtype=torch.long, device=ious.device)
    counts.scatter_add_(1, asg.matched_gt_inds + 1, asg.fg_mask.long())  # column 0: background
    need = (k - counts[:, 1:]).clamp(min=0).masked_fill(~valid, 0)  # (B, G)
    free = ~asg.fg_mask
    if asg.ignore_mask is not None:
        free &= ~asg.ignore_mask
    eligible = free.unsqueeze(1) & (ious >= iou_thr) & (need > 0).unsqueeze(-1)
    cost = (1 - ious).masked_fill_(~eligible, 2.0)  # >= 0, so the cheap key applies
    best = _smallest_k_index(cost, k, nonneg=True)  # (B, G, k') highest IoU first
    wanted = torch.arange(best.shape[-1], device=best.device) < need.unsqueeze(-1)  # (B, G, k')
    claim = torch.zeros_like(eligible).scatter_(-1, best, wanted) & eligible
    extra = _resolve(claim, ious, ious)
    fg = asg.fg_mask | extra.fg_mask
    weights = torch.where(extra.fg_mask, extra.pred_ious, fg.float())
    old_w = asg.weights if asg.weights is not None else asg.fg_mask.float()
    weights = torch.where(asg.fg_mask, old_w, weights)
    return BatchAssignment(
        fg,
        torch.where(asg.fg_mask, asg.matched_gt_inds, extra.matched_gt_inds),
        torch.where(asg.fg_mask, asg.pred_ious, extra.pred_ious),
        asg.ignore_mask,
        weights,
    )


Assign = Callable[..., BatchAssignment]
ASSIGNERS: dict[str, Assign] = {"atss": atss, "uniform": uniform, "topk": topk, "dynamic": dynamic}
