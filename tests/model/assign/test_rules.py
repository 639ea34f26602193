"""Each paper's rule on a case worked by hand (issue 17): class targets (iou, cleanliness, QFL),
HAMBox compensation and its weights, Dynamic R-CNN's threshold, beta and SmoothL1.

Expected values are arithmetic from the inputs, written out in each docstring; none is read back
from the code under test. NWD inside SimOTA and the ``assign_k`` defaults are in
``test_simota_rules.py``.

Most cases share one grid: a 16 x 16 input with one level of stride 8, anchor a = 2 j + i at
cell centre (4 + 8 i, 4 + 8 j), and one object of 8 x 8 px centred at (8, 8) = [4, 12]^2. Every
cell centre lies 4 px from the object's centre on each axis, within 1.5 strides (12 px), so all
four anchors are candidates of SimOTA and lie in the centre region of top-k and dynamic.
"""

from __future__ import annotations

import math

import pytest
import torch

from model.assign import BatchAssignment, DynamicState
from model.assign.hambox import hambox
from model.yolox.loss import yolox_loss
from tests.loss_settings import loss_settings

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
LN4_3 = math.log(4 / 3)  # softplus(-ln 3)
FAR = (5000.0, 5000.0, 4.0, 4.0)  # a prediction overlapping nothing


def grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(4,) x shifts, y shifts and strides of the 2 x 2 grid of stride 8."""
    return torch.tensor([0.0, 1, 0, 1]), torch.tensor([0.0, 0, 1, 1]), torch.full((4,), 8.0)


TARGETS = torch.tensor([[[0.0, 8, 8, 8, 8]]])  # (1, 1, 5): class 0, the 8 x 8 box at (8, 8)


def cls_outputs() -> torch.Tensor:
    """(1, 4, 7) head outputs, two classes. Every prediction is centred on the object, 8 px wide,
    of heights 6, 5, 4, 3: inside the object, so IoU = 8 h / 64 = 3/4, 5/8, 1/2, 3/8. Objectness
    logit 0; class-0 logits -ln 3 (sigmoid 1/4) except anchor 1, +ln 3 (sigmoid 3/4); class-1
    logits -ln 3 everywhere."""
    rows = [
        [8.0, 8, 8, h, 0, c0, -LN3]
        for h, c0 in ((6.0, -LN3), (5.0, LN3), (4.0, -LN3), (3.0, -LN3))
    ]
    return torch.tensor([rows])


def bce(logit: float, y: float) -> float:
    """BCE with logits by hand: softplus(x) - y x; softplus(ln 3) = ln 4, of -ln 3 ln 4/3."""
    softplus = {LN3: LN4, -LN3: LN4_3}[logit]
    return softplus - y * logit


def cls_loss(assign_stats: bool = False, **keys) -> dict[str, torch.Tensor]:
    return yolox_loss(cls_outputs(), None, *grid(), TARGETS, num_classes=2,
                      settings=loss_settings(**keys), assign_stats=assign_stats)


# ----------------------------------------------------------------------------- class targets


def test_cls_case_positives_are_anchors_0_and_1() -> None:
    """SimOTA on the class-target case (official YOLOX, ``simota_matching``): the dynamic k is
    int(3/4 + 5/8 + 1/2 + 3/8) = int(2.25) = 2. Cost = class cost + 3 (-ln IoU); the class cost
    is -ln sqrt(s_0 * 1/2) + the same class-1 term for all, s_0 the class-0 sigmoid:
    a0: -ln sqrt(1/8) + 3 (-ln 3/4) = 1.040 + 0.863 = 1.903;  a1: 0.490 + 1.410 = 1.900;
    a2: 1.040 + 2.079 = 3.119;  a3: 1.040 + 2.942 = 3.982 -> the two cheapest, a0 and a1."""
    out = cls_loss(assign_stats=True)
    assert float(out["num_fg"]) == 2.0
    stats = out["assign_stats"]
    assert float(stats["positive_iou_sum"]) == pytest.approx(3 / 4 + 5 / 8)


def test_cls_target_iou_is_one_hot_times_the_iou() -> None:
    """Official YOLOX (``get_losses``): the class target of a positive is one-hot(class) x IoU of
    its prediction; the class BCE is summed and divided by the foreground count (2).
    a0 (logit -ln 3, target 3/4): ln 4/3 + 3/4 ln 3; a1 (ln 3, target 5/8): ln 4 - 5/8 ln 3;
    the two class-1 entries (target 0): ln 4/3 each.
    cls_loss = (3 ln 4/3 + ln 4 + 1/8 ln 3) / 2 = 1.19333 (a hard target 1 would give 1.12467)."""
    want = (bce(-LN3, 3 / 4) + bce(LN3, 5 / 8) + 2 * bce(-LN3, 0.0)) / 2
    assert want == pytest.approx((3 * LN4_3 + LN4 + LN3 / 8) / 2)  # the docstring's arithmetic
    assert float(cls_loss(cls_target="iou")["cls_loss"]) == pytest.approx(want, rel=1e-6)


def test_cls_target_cleanliness_soft_label_and_regression_weights() -> None:
    """Li et al. 2020, "Learning from Noisy Anchors for One-stage Object Detection" (CVPR), sec. 3:
    the cleanliness of a positive, c = alpha IoU + (1 - alpha) score with alpha = 0.75, is its
    soft class label. We follow that (score = the sigmoid of its own class logit, detached).
    The paper also re-weights the positives by a factor it derives from the same two scores
    (its own function of them, normalised over the positives); we depart (config comment: "also
    re-weighting the regression"): the weight is c itself divided by the mean c over the batch's
    positives, and it multiplies the regression terms only, not the class term.

    a0: IoU 3/4, score 1/4 -> c0 = 9/16 + 1/16 = 5/8;  a1: IoU 5/8, score 3/4 ->
    c1 = 15/32 + 6/32 = 21/32. cls_loss = (ln 4/3 + 5/8 ln 3 + ln 4 - 21/32 ln 3 + 2 ln 4/3) / 2
    = 1.10750 (the IoU target gives 1.19333).
    Weights: mean c = 41/64, r0 = 40/41, r1 = 42/41. Box term (reg_weight 5, 1 - IoU^2):
    5 (40/41 * 7/16 + 42/41 * 39/64) / 2 = 6895/2624 = 2.627668 (unweighted: 335/128 = 2.6172).
    """
    out = cls_loss(cls_target="cleanliness")
    want_cls = (bce(-LN3, 5 / 8) + bce(LN3, 21 / 32) + 2 * bce(-LN3, 0.0)) / 2
    assert want_cls == pytest.approx((3 * LN4_3 + LN4 - LN3 / 32) / 2)
    assert float(out["cls_loss"]) == pytest.approx(want_cls, rel=1e-6)
    assert float(out["iou_loss"]) == pytest.approx(6895 / 2624, rel=1e-6)
    # the plain target keeps the unweighted box term: the weights come from cleanliness alone
    assert float(cls_loss(cls_target="iou")["iou_loss"]) == pytest.approx(335 / 128, rel=1e-6)


def test_cls_target_qfl_scales_bce_by_the_squared_gap() -> None:
    """Li et al. 2020, "Generalized Focal Loss" (NeurIPS), sec. 3.2, Quality Focal Loss:
    QFL(s) = -|y - s|^beta ((1 - y) ln(1 - s) + y ln s), beta = 2, y the IoU target, summed over
    the positives' class entries and divided by their count. (GFL also runs it over negatives
    with y = 0; YOLOX keeps its objectness branch for those, so here only positives.)
    a0: s = 1/4, y = 3/4: (1/2)^2 (ln 4/3 + 3/4 ln 3) = 0.277910
    a1: s = 3/4, y = 5/8: (1/8)^2 (ln 4 - 5/8 ln 3) = 0.010932
    class-1 entries: s = 1/4, y = 0: (1/4)^2 ln 4/3 = 0.017980, twice.
    cls_loss = (0.277910 + 0.010932 + 0.035960) / 2 = 0.162401 (beta 1 would give 0.3936)."""
    got = float(cls_loss(cls_target="qfl")["cls_loss"])
    want = ((1 / 2) ** 2 * bce(-LN3, 3 / 4) + (1 / 8) ** 2 * bce(LN3, 5 / 8)
            + 2 * (1 / 4) ** 2 * bce(-LN3, 0.0)) / 2
    assert want == pytest.approx(0.162401, abs=1e-6)
    assert got == pytest.approx(want, rel=1e-6)


# ----------------------------------------------------------------------------- HAMBox


def xyxy(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float, float, float]:
    return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


OBJ0 = xyxy(0, 0, 10, 10)  # area 100: a box inside it of area a has IoU a / 100
OBJ1 = xyxy(100, 100, 110, 110)
IOU_36, IOU_90, IOU_34, IOU_50 = (
    xyxy(0, 0, 6, 6), xyxy(0, 0, 10, 9), xyxy(0, 0, 8.5, 4), xyxy(0, 0, 10, 5)
)


def test_hambox_compensates_best_first_up_to_k_with_iou_weights() -> None:
    """Liu et al. 2020, "HAMBox: Delving into Online High-quality Anchors Mining for Detecting
    Outer Faces" (CVPR), sec. 3.2, online high-quality anchor mining: an object with N < K = 3
    positives takes the unassigned predictions whose regressed box has IoU >= T = 0.35 with it,
    highest IoU first, up to K in all (K - N more), each weighted by that IoU (the
    regression-aware weighting; ours multiplies both the class and the box terms).
    Defaults are used, so K and T are the ones under test.

    Image 0, object 0 = [0, 10]^2 has 1 positive (p0); free predictions p1..p4 with IoUs
    0.36, 0.9, 0.34, 0.5 (in index order, so best-first differs from index order). It needs
    3 - 1 = 2: p2 (0.9) and p4 (0.5); not p1 (0.36, K reached) nor p3 (0.34 < 0.35).
    Object 1 has 3 positives (p5, p6, p7): it takes nothing, though p8 overlaps it with IoU 0.9.
    Image 1, object 0 with 1 positive and free p1 (0.36), p3 (0.34); p2 (0.9) is ignored (YOLOF's
    ignore rule): it needs 2, but only p1 passes 0.35 and is not ignored -> p1 alone.
    """
    image0 = [OBJ0, IOU_36, IOU_90, IOU_34, IOU_50, OBJ1, OBJ1, OBJ1, xyxy(100, 100, 110, 109)]
    image1 = [OBJ0, IOU_36, IOU_90, IOU_34, FAR, FAR, FAR, FAR, FAR]
    pred = torch.tensor([image0, image1])  # (2, 9, 4)
    gt = torch.tensor([[OBJ0, OBJ1], [OBJ0, (0.0, 0, 0, 0)]])
    valid = torch.tensor([[True, True], [True, False]])
    matched = torch.full((2, 9), -1)
    matched[0, [0, 5, 6, 7]] = torch.tensor([0, 1, 1, 1])
    matched[1, 0] = 0
    fg = matched >= 0
    ignore = torch.zeros(2, 9, dtype=torch.bool)
    ignore[1, 2] = True
    asg = hambox(BatchAssignment(fg, matched, fg.float(), ignore), gt, valid, pred)
    assert asg.matched_gt_inds.tolist() == [
        [0, -1, 0, -1, 0, 1, 1, 1, -1],
        [0, 0, -1, -1, -1, -1, -1, -1, -1],
    ]
    assert asg.weights is not None
    want_w = torch.tensor([[1, 0, 0.9, 0, 0.5, 1, 1, 1, 0], [1, 0.36, 0, 0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(asg.weights, want_w)
    torch.testing.assert_close(asg.pred_ious[0, [2, 4]], torch.tensor([0.9, 0.5]))
    assert asg.ignore_mask is ignore  # kept for the objectness loss


def test_hambox_weights_scale_the_class_and_box_terms() -> None:
    """HAMBox through ``yolox_loss`` on the class-target case. Top-k with k = 1 takes a0 (IoU
    3/4); the object needs 3 - 1 = 2 more: a1 (5/8) and a2 (1/2) pass 0.35 (a3, 3/8, would too,
    but K is reached), weighted 5/8 and 1/2. Each positive's class BCE (IoU target, class-1
    entry included) and its 1 - IoU^2 box term are multiplied by its weight; the sums are divided
    by the foreground count 3. Objectness stays unweighted.
    class: [1 (ln 4/3 + 3/4 ln 3 + ln 4/3) + 5/8 (ln 4 - 5/8 ln 3 + ln 4/3)
            + 1/2 (ln 4/3 + 1/2 ln 3 + ln 4/3)] / 3
    box: 5 (7/16 + 5/8 * 39/64 + 1/2 * 3/4) / 3 = 5 * 1.193359 / 3 = 1.988932 (unweighted 2.9948)
    objectness: three positives and a negative at logit 0: 4 ln 2 / 3."""
    out = cls_loss(assigner="topk", assign_k=1, hambox=True)
    assert float(out["num_fg"]) == 3.0
    want_cls = (
        1 * (bce(-LN3, 3 / 4) + LN4_3)
        + 5 / 8 * (bce(LN3, 5 / 8) + LN4_3)
        + 1 / 2 * (bce(-LN3, 1 / 2) + LN4_3)
    ) / 3
    assert float(out["cls_loss"]) == pytest.approx(want_cls, rel=1e-6)
    assert float(out["iou_loss"]) == pytest.approx(5 * (7 / 16 + 5 / 8 * 39 / 64 + 3 / 8) / 3)
    assert float(out["conf_loss"]) == pytest.approx(4 * LN2 / 3, rel=1e-6)


# ----------------------------------------------------------------------------- Dynamic R-CNN


def kth_ious(*kth: float) -> torch.Tensor:
    """(B, 100) best IoUs of each prediction whose 75th largest in image b is kth[b]: 74 of
    0.9, then kth[b], then 25 of 0.05 (rolled, so the order is not sorted)."""
    return torch.stack([torch.tensor([0.9] * 74 + [k] + [0.05] * 25).roll(37) for k in kth])


def errors(n: int, step: float) -> torch.Tensor:
    """(n, 2) centre-offset errors step * 1, step * 2, ..., step * 2n (row-major)."""
    return (torch.arange(1, 2 * n + 1, dtype=torch.float32) * step).reshape(n, 2)


def test_dynamic_state_threshold_and_beta_by_hand() -> None:
    """Zhang et al. 2020, "Dynamic R-CNN" (ECCV), sec. 3.1-3.2: every C iterations the IoU
    threshold becomes the mean of the K_I-th largest IoUs collected since the last update
    (never below the initial 0.4), and SmoothL1's beta the median of the K_beta-th smallest
    regression errors (never above the initial 1.0). Defaults K_I = 75, K_beta = 10 (the
    reference, mmdetection ``dynamic_rcnn``); here C = 3.

    Our DynamicState's exact rule, tested as is: the K_I-th largest of each image *with an
    object* is pooled (the reference averages over images first: equal when every iteration
    has the same count); the errors (F, 2) are |dx|, |dy| of each positive pooled into 2F values,
    of which the (K_beta * B)-th smallest is taken, B the batch size (the reference first averages
    |dx| and |dy| per positive, then takes the (K_beta * B)-th smallest of F values: iteration 1
    below would give 0.295, not 0.20); and no 1e-15 floor on the median.

    Round 1 (B = 2): it. 1: IoUs 0.6, 0.5; errors 0.01 .. 0.30 -> 20th smallest 0.20.
      it. 2: 0.7 (image 1 has no object: its 0.3 is skipped); 10 errors 0.05 .. 0.5, k =
      min(20, 10) -> 0.5. it. 3: 0.55, 0.45; errors 0.02 .. 0.48 -> 20th 0.40.
      -> threshold mean(0.6, 0.5, 0.7, 0.55, 0.45) = 0.56, beta median(0.2, 0.5, 0.4) = 0.4.
    Round 2 (B = 1): IoUs 0.2, 0.3, 0.1 -> mean 0.2 -> max(0.4, 0.2) = 0.4 (the initial value,
      not the current 0.56); errors 10th of 0.025 .. 0.5 = 0.25, 10th of 0.045 .. 0.9 = 0.45,
      none in it. 6 -> median of two = (0.25 + 0.45) / 2 = 0.35 (torch.median would give 0.25).
    Round 3 (B = 1): IoU 0.8 three times -> 0.8; errors all 2.0 -> min(1.0, 2.0) = 1.0.
    """
    st = DynamicState(interval=3)
    assert (st.iou_topk, st.beta_topk, st.iou_thr, st.beta) == (75, 10, 0.4, 1.0)
    both, only0 = torch.ones(2, 1, dtype=torch.bool), torch.tensor([[True], [False]])
    st.observe(kth_ious(0.6, 0.5), both, errors(15, 0.01))
    st.observe(kth_ious(0.7, 0.3), only0, errors(5, 0.05))
    assert (st.iou_thr, st.beta) == (0.4, 1.0)  # not before C iterations
    st.observe(kth_ious(0.55, 0.45), both, errors(12, 0.02))
    assert st.iou_thr == pytest.approx(0.56) and st.beta == pytest.approx(0.4)
    assert st.iou_history == [] and st.beta_history == []
    one = torch.ones(1, 1, dtype=torch.bool)
    st.observe(kth_ious(0.2), one, errors(10, 0.025))
    st.observe(kth_ious(0.3), one, errors(10, 0.045))
    assert st.iou_thr == pytest.approx(0.56) and st.beta == pytest.approx(0.4)
    st.observe(kth_ious(0.1), one, torch.zeros(0, 2))
    assert st.iou_thr == pytest.approx(0.4) and st.beta == pytest.approx(0.35)
    for _ in range(3):
        st.observe(kth_ious(0.8), one, torch.full((10, 2), 2.0))
    assert st.iou_thr == pytest.approx(0.8) and st.beta == 1.0
    assert st.iteration == 9


@pytest.mark.parametrize(("beta", "want"), [(1.0, 1.15625), (0.5, 1.5625), (0.25, 1.875)])
def test_dynamic_smooth_l1_uses_the_states_beta(beta: float, want: float) -> None:
    """Dynamic R-CNN sec. 3.2, Dynamic SmoothL1: DSL(x, beta) = 0.5 x^2 / beta if |x| < beta,
    else |x| - 0.5 beta, on the L1 branch (use_l1) with the state's current beta.
    The object as above; anchor 0 predicts it exactly (IoU 1 >= 0.4: the one positive), the
    others predict far away. Its raw regression (1.25, -0.5, 0.5, 0) against the target
    (8/8 - 0, 8/8 - 0, ln(8/8), ln(8/8)) = (1, 1, 0, 0): errors x = (0.25, -1.5, 0.5, 0).
    beta 1:    0.03125 + 1.0   + 0.125 + 0 = 1.15625
    beta 0.5:  0.0625  + 1.25  + 0.25  + 0 = 1.5625   (|x| = beta: both branches give 0.25)
    beta 0.25: 0.125   + 1.375 + 0.375 + 0 = 1.875    (plain L1 would give 2.25)
    The step then records the 4th largest best IoU (A = 4 < 75: 0) and the 2nd smallest of the
    centre errors (min(10 * 1, 2) = 2: 1.5)."""
    out = torch.tensor([[[8.0, 8, 8, 8, 0, 0], [*FAR, 0, 0], [*FAR, 0, 0], [*FAR, 0, 0]]])
    raw = torch.zeros(1, 4, 4)
    raw[0, 0] = torch.tensor([1.25, -0.5, 0.5, 0.0])
    st = DynamicState(beta=beta)
    got = yolox_loss(out, raw, *grid(), TARGETS, num_classes=1, use_l1=True,
                     settings=loss_settings(assigner="dynamic"), dynamic_state=st)
    assert float(got["num_fg"]) == 1.0
    assert float(got["l1_loss"]) == pytest.approx(want, rel=1e-6)
    assert st.iou_history == [0.0] and st.beta_history == [1.5] and st.iteration == 1
