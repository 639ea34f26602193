"""NWD (Wang et al. 2021, arXiv 2110.13389): hand-worked values, gradients, the reg_loss option."""

from __future__ import annotations

import math

import pytest
import torch

from model.assign.overlap import nwd, pairwise_nwd
from model.box_losses import REG_LOSSES, iou_family_loss
from model.config import ConfigError, TrialConfig
from model.yolox.loss import yolox_loss
from tests.loss_settings import loss_settings


def boxes(*rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def test_identical_boxes_give_one_and_zero_loss() -> None:
    b = boxes((5, 5, 4, 4), (100, 50, 30, 60))
    assert torch.equal(nwd(b, b, 12.8), torch.ones(2))
    assert torch.equal(iou_family_loss(b, b, "nwd"), torch.zeros(2))


def test_hand_worked_values() -> None:
    # two 4 x 4 boxes 8 px apart in x: W2^2 = 8^2 + 0 + 0 + 0, W2 = 8
    a, b = boxes((10, 10, 4, 4)), boxes((18, 10, 4, 4))
    assert nwd(a, b, 12.8).item() == pytest.approx(math.exp(-8 / 12.8), rel=1e-6)
    assert nwd(a, b, 8.0).item() == pytest.approx(math.exp(-1), rel=1e-6)
    # same centre, sizes 4 x 4 against 10 x 12: W2^2 = (6 / 2)^2 + (8 / 2)^2 = 25, W2 = 5
    c = boxes((0, 0, 10, 12))
    assert nwd(boxes((0, 0, 4, 4)), c, 5.0).item() == pytest.approx(math.exp(-1), rel=1e-6)
    # centre 3 px in x and 4 px in y: W2 = 5; loss = 1 - exp(-5 / 10)
    d, e = boxes((0, 0, 4, 4)), boxes((3, 4, 4, 4))
    loss = iou_family_loss(d, e, "nwd", nwd_constant=10.0)
    assert loss.item() == pytest.approx(1 - math.exp(-0.5), rel=1e-6)


def test_pairwise_matches_elementwise() -> None:
    a = boxes((10, 10, 4, 4), (0, 0, 4, 4))  # (2, 4)
    b = boxes((18, 10, 4, 4), (3, 4, 4, 4), (0, 0, 10, 12))  # (3, 4)
    got = pairwise_nwd(a, b, 12.8)
    assert got.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            assert got[i, j].item() == pytest.approx(nwd(a[i : i + 1], b[j : j + 1], 12.8).item())
    assert got[0, 0].item() == pytest.approx(math.exp(-8 / 12.8), rel=1e-6)
    assert pairwise_nwd(torch.stack([a, a]), torch.stack([b, b]), 12.8).shape == (2, 2, 3)


def test_disjoint_tiny_boxes_get_a_gradient_where_iou_has_none() -> None:
    target = boxes((18, 10, 4, 4))
    pred = boxes((10, 10, 4, 4)).requires_grad_(True)
    iou_family_loss(pred, target, "iou").sum().backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))  # IoU 0: nothing pulls it
    pred.grad = None
    iou_family_loss(pred, target, "nwd").sum().backward()
    # d loss / d cx = -d NWD / d cx = exp(-W2 / C) * (cx - cx_t) / (W2 * C) = e^-0.625 * -8 / 102.4
    want = math.exp(-8 / 12.8) * (-8) / (8 * 12.8)
    assert pred.grad[0, 0].item() == pytest.approx(want, rel=1e-5)  # < 0: move right
    assert pred.grad[0, 1].item() == 0 and pred.grad[0, 2:].abs().sum().item() == 0


def test_gradcheck_float64() -> None:
    a = torch.tensor([[10.0, 10, 4, 4], [0, 0, 3, 7], [5, 5, 20, 10]], dtype=torch.float64)
    b = torch.tensor([[18.0, 11, 5, 4], [1, -2, 4, 4], [5, 6, 18, 12]], dtype=torch.float64)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: nwd(x, y, 12.8), (a, b))
    assert torch.autograd.gradcheck(lambda x, y: pairwise_nwd(x, y, 7.0), (a, b))


def test_identical_boxes_have_a_finite_zero_gradient() -> None:
    b = boxes((5, 5, 4, 4))
    pred = b.clone().requires_grad_(True)
    iou_family_loss(pred, b, "nwd").sum().backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_config_key_and_value_set() -> None:
    assert "nwd" in REG_LOSSES and TrialConfig().nwd_constant == 12.8
    assert TrialConfig(reg_loss="nwd").reg_loss == "nwd"
    with pytest.raises(ConfigError, match="'nwd_constant' must be > 0"):
        TrialConfig(nwd_constant=0.0)


def test_yolox_loss_with_nwd_has_finite_box_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="xy")
    x, y = xs.reshape(-1), ys.reshape(-1)
    s = torch.full((64,), 8.0)
    raw = torch.randn(1, 64, 4, generator=g) * 0.3
    boxes_ = torch.cat([(raw[..., :2] + torch.stack([x, y], -1)) * 8, raw[..., 2:].exp() * 8], -1)
    outputs = torch.cat([boxes_, torch.randn(1, 64, 2, generator=g)], -1).requires_grad_(True)
    targets = torch.tensor([[[0, 20, 20, 4, 4], [0, 40, 36, 12, 10]]], dtype=torch.float32)
    common = dict(num_classes=1)
    nwd_loss = loss_settings(reg_loss="nwd", nwd_constant=12.8)
    out = yolox_loss(outputs, None, x, y, s, targets, settings=nwd_loss, **common)
    out["total_loss"].backward()
    assert torch.isfinite(outputs.grad).all() and outputs.grad[..., :4].abs().sum() > 0
    base = yolox_loss(outputs, None, x, y, s, targets, settings=loss_settings(reg_loss="iou"),
                      **common)
    assert float(out["conf_loss"].detach()) == float(base["conf_loss"].detach())  # same assignment
