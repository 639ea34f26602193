"""TOOD's task-aligned assignment (model/assign/tood.py) on cases worked by hand from the paper's
rule: Feng et al. 2021, "TOOD: Task-aligned One-stage Object Detection" (ICCV), sec. 3.2:
t = s^alpha * u^beta with alpha = 1, beta = 6, the m largest t of an object positive, and
t_hat = t / max t * max u (over the object's positives) its class target.

Expected values are arithmetic from the inputs, written out in each docstring; none is read back
from the code under test. The grid is that of ``test_rules.py``: a 16 x 16 input, one level of
stride 8, anchor a = 2 j + i at cell centre (4 + 8 i, 4 + 8 j); every cell centre lies within
1.5 strides (12 px) of the objects below, so all four anchors are candidates of both.
"""

from __future__ import annotations

import math

import pytest
import torch

from model.assign import PAPER_K, BatchAssignment
from model.assign.tood import tood
from model.config import ConfigError, TrialConfig
from model.yolox.loss import yolox_loss
from tests.loss_settings import loss_settings

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)
FAR = (5000.0, 5000.0, 4.0, 4.0)  # a prediction overlapping nothing
OBJ = (8.0, 8.0, 8.0, 8.0)  # [4, 12]^2


def grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([0.0, 1, 0, 1]), torch.tensor([0.0, 0, 1, 1]), torch.full((4,), 8.0)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# Case 1, one object: every prediction centred on it, 8 px wide and h = 8, 6, 4, 2 high, so
# inside it: IoU u = 8 h / 64 = 1, 3/4, 1/2, 1/4. Objectness 1/2; class scores 1/256, 1/2,
# 3/4, 4/5, so s = 1/512, 1/4, 3/8, 2/5.
HEIGHTS = (8.0, 6.0, 4.0, 2.0)
CLASS_P = (1 / 256, 1 / 2, 3 / 4, 4 / 5)


def one_object() -> dict[str, torch.Tensor]:
    boxes = torch.tensor([[8.0, 8.0, 8.0, h] for h in HEIGHTS])  # (4, 4)
    cls = torch.tensor([[logit(p)] for p in CLASS_P])  # (4, 1)
    outputs = torch.cat([boxes, torch.zeros(4, 1), cls], -1)[None]  # (1, 4, 6)
    return {"outputs": outputs, "targets": torch.tensor([[[0.0, *OBJ]]])}


def run_tood(case: dict, **kw) -> BatchAssignment:
    out = case["outputs"]
    gt = case["targets"][..., 1:]
    valid = torch.ones(gt.shape[:2], dtype=torch.bool)
    return tood(gt, case["targets"][..., 0], valid, out[..., :4], out[..., 5:], out[..., 4],
                *grid(), **kw)


def positives(asg: BatchAssignment) -> dict[int, int]:
    fg = asg.fg_mask[0].nonzero().squeeze(1).tolist()
    return {a: int(asg.matched_gt_inds[0, a]) for a in fg}


def test_top_m_by_the_alignment_metric() -> None:
    """t = s * u^6 (alpha 1, beta 6):
    a0: 1/512 * 1 = 0.001953;  a1: 1/4 * 729/4096 = 729/16384 = 0.044495;
    a2: 3/8 * 1/64 = 3/512 = 0.005859;  a3: 2/5 * 1/4096 = 0.0000977.
    m = 2 takes a1, a2: neither the two best IoUs (a0, a1) nor the two best scores (a3, a2).
    (s = sqrt(obj cls) as SimOTA's cost would take a1, a0: sqrt(1/512) = 0.0442 > 0.00957;
    alpha and beta swapped, s^6 u, would take a2, a3.)
    t_hat = t / t1 * 3/4: a1 3/4 (the largest IoU among the positives, not a0's 1),
    a2 t2 / t1 * 3/4 = 32/243 * 3/4 = 8/81 = 0.098765."""
    asg = run_tood(one_object(), k=2)
    assert positives(asg) == {1: 0, 2: 0}
    assert asg.cls_quality is not None
    torch.testing.assert_close(asg.cls_quality[0], torch.tensor([0.0, 3 / 4, 8 / 81, 0.0]))
    torch.testing.assert_close(asg.pred_ious[0], torch.tensor([0.0, 3 / 4, 1 / 2, 0.0]))


@pytest.mark.parametrize(
    ("keys", "want"),
    [
        ({"assign_k": 2}, [1, 2]),  # the paper's alpha 1, beta 6, as above
        ({"assign_k": 2, "tood_alpha": 0.0}, [0, 1]),  # t = u^6: the two best IoUs
        ({"assign_k": 0}, [0, 1, 2, 3]),  # m = 13 >= 4 candidates, all with t > 0
    ],
)
def test_the_config_keys_reach_the_rule(keys: dict, want: list[int]) -> None:
    """Through ``yolox_loss`` with ``assigner: tood``: ``assign_k``, ``tood_alpha`` (alpha 0:
    t = u^6 ranks by IoU alone, a0 then a1) and ``assign_k: 0`` = the paper's m = 13."""
    case = one_object()
    out = yolox_loss(case["outputs"], None, *grid(), case["targets"], num_classes=1,
                     settings=loss_settings(assigner="tood", **keys), assign_stats=True)
    assert float(out["num_fg"]) == len(want)
    ious = (1.0, 0.75, 0.5, 0.25)  # of a0..a3: the positives' sum names them
    assert float(out["assign_stats"]["positive_iou_sum"]) == sum(ious[a] for a in want)
    assert PAPER_K["tood"] == 13 and TrialConfig().assign_k == 0


def test_t_hat_is_the_class_target() -> None:
    """With ``cls_target: iou`` the class BCE's target of a positive is t_hat instead of its IoU
    (the paper's positive term without the focal factor); divided by the 2 positives.
    a1 (logit 0, target 3/4): ln 2 - 0;  a2 (logit ln 3, target 8/81): ln 4 - 8/81 ln 3.
    cls_loss = (ln 2 + ln 4 - 8/81 ln 3) / 2 = 0.985468 (the IoU target, 1/2 for a2, would give
    0.765068). ``qfl`` scales each by |t_hat - s|^2: a1 (3/4 - 1/2)^2 ln 2,
    a2 (8/81 - 3/4)^2 (ln 4 - 8/81 ln 3), and halves: 0.292620."""
    case = one_object()
    got = yolox_loss(case["outputs"], None, *grid(), case["targets"], num_classes=1,
                     settings=loss_settings(assigner="tood", assign_k=2))
    want = (LN2 + LN4 - 8 / 81 * LN3) / 2
    assert float(got["cls_loss"]) == pytest.approx(want, rel=1e-6)
    qfl = yolox_loss(case["outputs"], None, *grid(), case["targets"], num_classes=1,
                     settings=loss_settings(assigner="tood", assign_k=2, cls_target="qfl"))
    want_qfl = ((1 / 4) ** 2 * LN2 + (8 / 81 - 3 / 4) ** 2 * (LN4 - 8 / 81 * LN3)) / 2
    assert (want, want_qfl) == pytest.approx((0.985468, 0.292620), abs=1e-6)  # the docstring's
    assert float(qfl["cls_loss"]) == pytest.approx(want_qfl, rel=1e-6)


def test_conflicts_go_to_the_highest_iou_and_t_must_be_positive() -> None:
    """Objects A = [4, 12]^2 (class 0) and B = [8, 16] x [4, 12] (class 1); every anchor lies in
    both centre regions. Only anchor 1 predicts near them: [7, 15] x [4, 12], IoU with A
    5 * 8 / (64 + 64 - 40) = 40/88 = 0.4545, with B 7 * 8 / (128 - 56) = 56/72 = 0.7778; the
    others predict far away (u = 0, so t = 0: not positive, though m = 13 > 4 candidates).
    Objectness 1/2, class 0 score 1/2, class 1 score 1/64: t_A = 1/4 * 0.4545^6 = 0.002205,
    t_B = 1/128 * 0.7778^6 = 0.001730. Both take anchor 1; it goes to B, the higher IoU, though
    A's t is higher. B's only positive has t_hat = t / t * 0.7778. A is left without one."""
    boxes = torch.tensor([FAR, (11.0, 8.0, 8.0, 8.0), FAR, FAR])
    cls = torch.tensor([[0.0, logit(1 / 64)]]).expand(4, 2)
    outputs = torch.cat([boxes, torch.zeros(4, 1), cls], -1)[None]  # (1, 4, 7)
    targets = torch.tensor([[[0.0, *OBJ], [1.0, 12.0, 8.0, 8.0, 8.0]]])
    asg = run_tood({"outputs": outputs, "targets": targets})
    assert positives(asg) == {1: 1}
    assert asg.cls_quality is not None
    torch.testing.assert_close(asg.cls_quality[0], torch.tensor([0.0, 56 / 72, 0.0, 0.0]))


def test_zero_objects_padding_and_bad_classes() -> None:
    case = one_object()
    out = case["outputs"].expand(2, -1, -1)
    for g in (0, 2):
        gt, valid = torch.zeros(2, g, 4), torch.zeros(2, g, dtype=torch.bool)
        asg = tood(gt, torch.zeros(2, g), valid, out[..., :4], out[..., 5:], out[..., 4], *grid())
        assert not asg.fg_mask.any() and (asg.matched_gt_inds == -1).all()
    with pytest.raises(ValueError, match=r"tood: object class ids must be in \[0, 1\).*\[3\.0\]"):
        run_tood(dict(case, targets=torch.tensor([[[3.0, *OBJ]]])))


@pytest.mark.parametrize(("key", "value"), [("tood_alpha", -1.0), ("tood_beta", -0.5)])
def test_negative_exponents_are_config_errors_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}' must be >= 0"):
        TrialConfig(**{key: value})
    assert (TrialConfig().tood_alpha, TrialConfig().tood_beta) == (1.0, 6.0)
