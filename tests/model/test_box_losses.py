"""IoU-family measures and losses: hand-worked values, gradients, degenerate boxes, errors."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from model.assign.overlap import pairwise_iou
from model.box_losses import (
    IOU_KINDS,
    REG_LOSSES,
    bbox_iou,
    iou_family_loss,
    regression_loss,
)
from model.config import RegLoss


def boxes(*rows: tuple[float, float, float, float], dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


# pred [-1, 1] x [-1, 1] against target [0, 2] x [-1, 1] (cx, cy, w, h below):
# intersection 1 x 2 = 2, union 4 + 4 - 2 = 6, IoU = 1/3; enclosing box [-1, 2] x [-1, 1]: area
# 3 x 2 = 6 = union, diagonal^2 = 3^2 + 2^2 = 13; centre distance^2 = 1; same aspect, so v = 0.
SHIFTED = (boxes((0, 0, 2, 2)), boxes((1, 0, 2, 2)))
# pred [-1, 1] x [-1, 1] inside target [-2, 2] x [-1, 1]: IoU = 4 / 8 = 1/2; enclosing = target
# (area 8 = union, diagonal^2 = 16 + 4 = 20); same centre, d = 0; aspect 1 against 2.
WIDER = (boxes((0, 0, 2, 2)), boxes((0, 0, 4, 2)))
# pred [-1, 1] x [-1, 1], target [4, 6] x [-1, 1]: disjoint; union 8; enclosing [-1, 6] x [-1, 1]:
# area 14, diagonal^2 = 49 + 4 = 53; centre distance^2 = 25.
DISJOINT = (boxes((0, 0, 2, 2)), boxes((5, 0, 2, 2)))

V_WIDER = 4 / math.pi**2 * (math.atan(4 / 2) - math.atan(2 / 2)) ** 2
ALPHA_WIDER = V_WIDER / (1 - 1 / 2 + V_WIDER)

EXPECTED_LOSS = {
    ("iou", "shifted"): 1 - (1 / 3) ** 2,
    ("giou", "shifted"): 1 - (1 / 3 - (6 - 6) / 6),
    ("diou", "shifted"): 1 - (1 / 3 - 1 / 13),
    ("ciou", "shifted"): 1 - (1 / 3 - 1 / 13 - 0.0),
    ("iou", "wider"): 1 - (1 / 2) ** 2,
    ("giou", "wider"): 1 - (1 / 2 - (8 - 8) / 8),
    ("diou", "wider"): 1 - (1 / 2 - 0 / 20),
    ("ciou", "wider"): 1 - (1 / 2 - 0 / 20 - ALPHA_WIDER * V_WIDER),
    ("iou", "disjoint"): 1 - 0.0,
    ("giou", "disjoint"): 1 - (0 - (14 - 8) / 14),
    ("diou", "disjoint"): 1 - (0 - 25 / 53),
    ("ciou", "disjoint"): 1 - (0 - 25 / 53 - 0.0),
}
CASES = {"shifted": SHIFTED, "wider": WIDER, "disjoint": DISJOINT}


@pytest.mark.parametrize(("kind", "case"), list(EXPECTED_LOSS))
def test_hand_worked_values(kind: str, case: str) -> None:
    pred, target = CASES[case]
    loss = iou_family_loss(pred, target, kind)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(EXPECTED_LOSS[(kind, case)], rel=1e-6, abs=1e-7)


def test_bbox_iou_plain_value_and_symmetry() -> None:
    a = torch.cat([SHIFTED[0], WIDER[0], DISJOINT[0]])
    b = torch.cat([SHIFTED[1], WIDER[1], DISJOINT[1]])
    expected = torch.tensor([1 / 3, 1 / 2, 0.0])
    torch.testing.assert_close(bbox_iou(a, b, "iou"), expected)
    torch.testing.assert_close(bbox_iou(b, a, "iou"), expected)


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_disjoint_gradient_zero_only_for_plain_iou(kind: str) -> None:
    pred = DISJOINT[0].clone().requires_grad_(True)
    iou_family_loss(pred, DISJOINT[1], kind).sum().backward()
    if kind == "iou":
        assert torch.equal(pred.grad, torch.zeros_like(pred))  # nothing pulls it to the target
    else:
        assert pred.grad.abs().sum() > 0
        assert pred.grad[0, 0] < 0  # moving right, towards the target, lowers the loss


def test_ciou_alpha_carries_no_gradient() -> None:
    # pred [-1, 1]^2 strictly inside target [-2, 2] x [-1.5, 1.5] (no edge ties, so the loss is
    # differentiable): IoU = w*h / (w*h + 12 - w*h) = 1/3; both centres are 0, so d^2 = 0 and the
    # enclosing box is the target's (d^2 / c^2 has no gradient);
    # v = 4/pi^2 (atan(4/3) - atan(w/h))^2 and alpha = v / (1 - IoU + v), a constant.
    target = boxes((0, 0, 4, 3))
    pred = boxes((0, 0, 2, 2)).requires_grad_(True)
    iou_family_loss(pred, target, "ciou").sum().backward()
    v0 = 4 / math.pi**2 * (math.atan(4 / 3) - math.atan(1.0)) ** 2
    alpha = v0 / (1 - 1 / 3 + v0)
    p = boxes((0, 0, 2, 2)).requires_grad_(True)
    w, h = p[0, 2], p[0, 3]
    iou = w * h / 12
    v = 4 / math.pi**2 * (math.atan(4 / 3) - torch.atan(w / h)) ** 2
    (1 - iou + alpha * v).backward()
    torch.testing.assert_close(pred.grad, p.grad)
    assert pred.grad[0, 2] != 0 and pred.grad[0, 3] != 0


def test_pairwise_iou_matrix_and_batch_dims() -> None:
    a = torch.cat([SHIFTED[0], DISJOINT[1]])  # (2, 4)
    b = torch.cat([SHIFTED[1], WIDER[1], DISJOINT[0]])  # (3, 4)
    # rows: box [-1,1]^2 and box [4,6]x[-1,1]; columns: [0,2]x[-1,1], [-2,2]x[-1,1], [-1,1]^2
    expected = torch.tensor([[1 / 3, 1 / 2, 1.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(pairwise_iou(a, b), expected)
    batched = pairwise_iou(torch.stack([a, a]), torch.stack([b, b]))  # (2, 2, 3)
    assert batched.shape == (2, 2, 3)
    assert torch.equal(batched[1], pairwise_iou(a, b))


def test_pairwise_iou_zero_size_boxes_give_zero_not_nan() -> None:
    z = boxes((5, 5, 0, 0))
    assert pairwise_iou(z, z).item() == 0.0
    assert pairwise_iou(z, boxes((5, 5, 2, 2))).item() == 0.0


DEGENERATE = {
    "zero_size_both": (boxes((5, 5, 0, 0), (5, 5, 0, 0)), boxes((5, 5, 0, 0), (9, 9, 0, 0))),
    "zero_size_pred": (boxes((5, 5, 0, 0), (5, 5, 0, 3)), boxes((5, 5, 4, 4), (6, 5, 4, 4))),
    "zero_size_target": (boxes((5, 5, 4, 4), (5, 5, 4, 4)), boxes((5, 5, 0, 0), (5, 5, 4, 0))),
    "same_centre": (boxes((5, 5, 4, 2)), boxes((5, 5, 4, 2))),
    "huge": (
        boxes((5e4, 5e4, 1e5, 1e5), (1e5, 1e5, 1e5, 2e4)),
        boxes((5e4 + 3, 5e4, 1e5, 9e4), (1, 1, 2, 2)),
    ),
    "float16": (
        boxes((300, 200, 400, 300), (10, 10, 4, 4), dtype=torch.float16),
        boxes((310, 205, 380, 320), (10, 10, 0, 0), dtype=torch.float16),
    ),
}


@pytest.mark.parametrize("kind", IOU_KINDS)
@pytest.mark.parametrize("case", list(DEGENERATE))
def test_finite_values_and_gradients(kind: str, case: str) -> None:
    pred, target = (t.clone() for t in DEGENERATE[case])
    pred.requires_grad_(True)
    loss = iou_family_loss(pred, target, kind)
    assert loss.dtype == torch.float32  # fp16 areas of a 400 x 300 box would overflow
    assert torch.isfinite(loss).all(), loss
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all(), pred.grad


def test_identical_boxes_have_zero_loss() -> None:
    b = boxes((5, 5, 4, 2), (100, 50, 30, 60))
    for kind in IOU_KINDS:
        torch.testing.assert_close(iou_family_loss(b, b, kind), torch.zeros(2))


def test_unknown_kind_lists_allowed() -> None:
    with pytest.raises(ValueError, match="'iou', 'giou', 'diou', 'ciou'") as info:
        iou_family_loss(*SHIFTED, "siou")
    assert "siou" in str(info.value)
    with pytest.raises(ValueError, match="use one of"):
        bbox_iou(*SHIFTED, "IoU")


def test_shape_mismatch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"\(N, 4\).*\(1, 4\) and \(2, 4\)"):
        iou_family_loss(SHIFTED[0], torch.cat([SHIFTED[1], SHIFTED[1]]), "giou")


def test_the_kinds_are_the_configs_and_checked_at_the_public_functions() -> None:
    """One value list (the config's RegLoss Literal), said by the public functions; the inner
    regression_loss (yolox_loss's: it checks the kind once, up front) is the same loss."""
    assert REG_LOSSES == get_args(RegLoss)
    for kind in REG_LOSSES:
        torch.testing.assert_close(
            regression_loss(*SHIFTED, kind), iou_family_loss(*SHIFTED, kind)
        )
