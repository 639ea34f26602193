"""Each paper's rule on a case worked by hand (issue 17), continued: NWD in place of the IoU inside
SimOTA's cost and dynamic k, and what ``assign_k: 0`` means for each assigner.

Expected values are arithmetic from the inputs, written out in each docstring; none is read back
from the code under test. The NWD cases use the grid of ``test_rules.py``: a 16 x 16 input,
one level of stride 8, anchor a = 2 j + i at cell centre (4 + 8 i, 4 + 8 j); the object is a
4 x 4 box at (8, 8) = [6, 10]^2, and all four anchors are SimOTA candidates (cell centres 4 px
from it on each axis, within 1.5 strides = 12 px).
"""

from __future__ import annotations

import math

import pytest
import torch

from model.assign import default_k
from model.assign.simota import simota, simota_batched
from model.config import ConfigError, TrialConfig, config_from_dict
from model.yolox.loss import yolox_loss
from tests.loss_settings import loss_settings

FAR = (5000.0, 5000.0, 4.0, 4.0)  # overlaps nothing; NWD exp(-7060 / 12.8) = 0 in float32
GT = (8.0, 8.0, 4.0, 4.0)


def grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([0.0, 1, 0, 1]), torch.tensor([0.0, 0, 1, 1]), torch.full((4,), 8.0)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def assign(pred: list, cls: list[float], *, batched: bool, **kw) -> list[int]:
    """SimOTA's foreground anchors for the one object of class 0, objectness logits 0."""
    boxes, logits = torch.tensor(pred), torch.tensor(cls).unsqueeze(-1)  # (4, 4), (4, 1)
    gt, obj = torch.tensor([GT]), torch.zeros(4)
    if batched:
        asg = simota_batched(gt[None], torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool),
                             boxes[None], logits[None], obj[None], *grid(), **kw).image(0)
    else:
        asg = simota(gt, torch.zeros(1), boxes, logits, obj, *grid(), **kw)
    assert (asg.pred_ious == 0).all()  # the returned IoUs stay IoUs: every box here is disjoint
    return asg.fg_mask.nonzero().squeeze(1).tolist()


# The near candidate differs from the object in size too, to exercise the halved sizes:
# (12.8, 8, 4, 11.2): dx 4.8, dh / 2 = 3.6, W2 = sqrt(4.8^2 + 3.6^2) = 6, NWD = exp(-6 / 12.8);
# x in [10.8, 14.8], disjoint from [6, 10]. The far one (8, -1.6, 4, 4): W2 = 9.6, NWD =
# exp(-0.75); y in [-3.6, 0.4]. Both IoU 0.
NEAR, FAR_ONE = (12.8, 8.0, 4.0, 11.2), (8.0, -1.6, 4.0, 4.0)
# So far away that NWD (exp(-20) = 2.1e-9, exp(-30) = 9.4e-14) is below the 1e-8 of the cost.
NEAR_EPS, FAR_EPS = (8.0 + 256, 8.0, 4.0, 4.0), (8.0, 8.0 + 384, 4.0, 4.0)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(
    ("near", "far", "delta", "want"),
    [
        (NEAR, FAR_ONE, 0.0, [1]),
        (NEAR, FAR_ONE, 0.80, [1]),
        (NEAR, FAR_ONE, 0.88, [0]),
        (NEAR_EPS, FAR_EPS, 0.52, [1]),
        (NEAR_EPS, FAR_EPS, 0.60, [0]),
    ],
    ids=["tie", "near-by-0.04", "far-by-0.04", "eps-near", "eps-far"],
)
def test_nwd_cost_ranks_disjoint_candidates(near, far, delta, want, batched) -> None:
    """Wang et al. 2021, "A Normalized Gaussian Wasserstein Distance for Tiny Object Detection"
    (arXiv 2110.13389), sec. 3.2-3.3: a box (cx, cy, w, h) is N([cx, cy], diag(w^2/4, h^2/4)),
    W2^2 = |(cx_a, cy_a, w_a/2, h_a/2) - (cx_b, cy_b, w_b/2, h_b/2)|^2, NWD = exp(-W2 / C),
    C = nwd_constant = 12.8. With ``overlap="nwd"`` our SimOTA cost is
    class cost + iou_cost_weight (3) * -ln(NWD + 1e-8) (model/assign/simota.py ``_pair_cost``).

    Anchor 0 predicts the far box, anchor 1 the near one, anchors 2, 3 far away (class logit -4).
    Dynamic k = max(1, int(sum of NWDs)) = 1 (exp(-0.75) + exp(-0.46875) = 1.098). Anchor 1's
    class logit is set so that its class cost exceeds anchor 0's by delta: with one class and
    objectness 1/2 the class cost is -ln sqrt(s / 2), so s_1 = 1/2 * exp(-2 delta), s_0 = 1/2.
    Distance term: 3 (9.6 - 6) / 12.8 = 0.84375 in favour of the near box, so it wins for
    delta < 0.84375 (even delta = 0, where the IoU cost, 3 * -ln(1e-8) for both, ties and the
    lower index would win) and loses at 0.88. A weight 1 instead of 3, sizes not halved
    (W2 = 8.65), sizes left out (W2 = 4.8) or 3 (NWD_near - NWD_far) = 0.46 all move the
    crossing out of (0.80, 0.88).
    Far beyond C the epsilon rules: 3 ln((1e-8 + e^-20) / (1e-8 + e^-30)) = 0.5622, so the near
    box wins at 0.52 and loses at 0.60 (without the epsilon the gap is 30; with 1e-9, 3.35;
    with 1e-7, 0.061)."""
    cls = [0.0, logit(0.5 * math.exp(-2 * delta)), -4.0, -4.0]
    assert assign([far, near, FAR, FAR], cls, batched=batched, overlap="nwd") == want
    # IoU cannot rank them: both IoU 0, so only the class cost (then the index) decides
    assert assign([far, near, FAR, FAR], cls, batched=batched) == [0]


# 4 x 4 boxes, all disjoint from the object, at centre distances 9.6, 5.12, 6.4, 7.68:
# NWD = exp(-0.75) = 0.4724, exp(-0.4) = 0.6703, exp(-0.5) = 0.6065, exp(-0.6) = 0.5488.
RING = [(8.0, -1.6, 4.0, 4.0), (13.12, 8.0, 4.0, 4.0), (1.6, 8.0, 4.0, 4.0), (8.0, 15.68, 4.0, 4.0)]


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(
    ("overlap", "topk", "want"),
    [("nwd", 10, [1, 2]), ("nwd", 3, [1]), ("iou", 10, [0])],
)
def test_nwd_dynamic_k_sums_the_top_candidate_nwds(overlap, topk, want, batched) -> None:
    """SimOTA's dynamic k (YOLOX, ``simota_matching``) = max(1, int(sum of the candidate_topk
    largest overlaps)), with NWD as the overlap (Wang et al. 2021, sec. 3.3: NWD in place of IoU
    in label assignment). Equal class scores, so the cost ranks by -ln NWD.
    All four: 0.4724 + 0.6703 + 0.6065 + 0.5488 = 2.298 -> k = 2: anchors 1 and 2 (nearest).
    candidate_topk 3: 0.6703 + 0.6065 + 0.5488 = 1.826 -> k = 1: anchor 1.
    IoU: all 0 -> k = max(1, 0) = 1, equal costs -> the lower index, anchor 0."""
    got = assign(RING, [0.0] * 4, batched=batched, overlap=overlap, candidate_topk=topk)
    assert got == want


def test_assign_overlap_reaches_simota_through_the_loss() -> None:
    """The ring case through ``yolox_loss``: positives per object 2 with ``assign_overlap: nwd``
    and 1 with ``iou`` (as worked above)."""
    out = torch.tensor([[[*box, 0.0, 0.0] for box in RING]])
    targets = torch.tensor([[[0.0, *GT]]])
    for overlap, want in (("nwd", 2.0), ("iou", 1.0)):
        got = yolox_loss(out, None, *grid(), targets, num_classes=1,
                         settings=loss_settings(assign_overlap=overlap))
        assert float(got["num_fg"]) == want


# ----------------------------------------------------------------------------- assign_k: 0


def test_default_k_is_each_papers_value() -> None:
    """``assign_k: 0`` means the paper's k: ATSS (Zhang et al. 2020, "Bridging the Gap Between
    Anchor-based and Anchor-free Detection via Adaptive Training Sample Selection", CVPR,
    sec. 3.2.1) k = 9 candidates per level; YOLOF (Chen et al. 2021, "You Only Look One-level
    Feature", CVPR, sec. 3.3, Uniform Matching) k = 4; our own fixed top-k baseline (no paper):
    9, as ATSS. SimOTA and dynamic take no k (0)."""
    assert [default_k(a) for a in ("atss", "uniform", "topk")] == [9, 4, 9]
    assert default_k("simota") == default_k("dynamic") == 0
    assert TrialConfig().assign_k == 0


def k_case() -> dict:
    """One 128 x 128 image, levels of stride 8, 16, 32 (336 points), random predictions around
    their cells, objects of 4, 20 and 48 px. Object 1 (20 x 20 at (62, 62)): 3 x 3 points a level
    lie within 1.5 strides of its centre (stride 8: x = 52, 60, 68; 16: 40, 56, 72;
    32: 16, 48, 80), 27 in all."""
    xs, ys, ss = [], [], []
    for s in (8, 16, 32):
        yv, xv = torch.meshgrid(torch.arange(128 // s), torch.arange(128 // s), indexing="ij")
        xs.append(xv.flatten())
        ys.append(yv.flatten())
        ss.append(torch.full((xv.numel(),), s))
    x, y, s = torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(ss).float()
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(1, x.numel(), 6, generator=g) * 0.5
    boxes = torch.cat([(raw[..., :2] + torch.stack([x, y], 1) + 0.5) * s[:, None],
                       raw[..., 2:4].exp() * s[:, None]], -1)
    targets = torch.tensor([[[0.0, 30, 30, 4, 4], [0, 62, 62, 20, 20], [0, 96, 90, 48, 40]]])
    return {"outputs": torch.cat([boxes, raw[..., 4:]], -1), "x": x, "y": y, "s": s,
            "targets": targets}


def k_loss(case: dict, targets: torch.Tensor, **keys) -> dict:
    out = yolox_loss(case["outputs"], None, case["x"], case["y"], case["s"], targets,
                     num_classes=1, assign_stats=True, settings=loss_settings(**keys))
    return {**out.pop("assign_stats"), **out}


@pytest.mark.parametrize(("assigner", "paper_k"), [("atss", 9), ("uniform", 4), ("topk", 9)])
def test_assign_k_zero_is_the_paper_k(assigner: str, paper_k: int) -> None:
    """``assign_k: 0`` runs exactly the paper's k (see above): every loss and count equals the
    run with the explicit k, and k - 1, k + 1 give other counts or losses on this case, so a
    wrong default could not pass. Top-k alone by hand: object 1 has 27 region points >= k, so
    alone it gets exactly k = 9 positives."""
    case = k_case()
    runs = {k: k_loss(case, case["targets"], assigner=assigner, assign_k=k)
            for k in (0, paper_k - 1, paper_k, paper_k + 1)}
    assert all(torch.equal(runs[0][key], runs[paper_k][key]) for key in runs[0])
    for other in (paper_k - 1, paper_k + 1):
        assert any(not torch.equal(runs[other][key], runs[paper_k][key]) for key in runs[0])
    if assigner == "topk":
        alone = case["targets"][:, 1:2]
        assert float(k_loss(case, alone, assigner="topk", assign_k=0)["positives"]) == 9


def test_negative_assign_k_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"trial\.yaml: key 'assign_k' must be >= 0 \(0 = "
                                          r"the assigner's paper value\), got -1"):
        config_from_dict({"assign_k": -1}, source="trial.yaml")
    assert config_from_dict({"assign_k": 0}).assign_k == 0
