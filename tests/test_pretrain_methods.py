"""The two pretraining methods: losses on hand-worked cases, one tiny epoch each, the artifact."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from model.config import TrialConfig
from model.pretrain import (
    ArtifactError,
    PretrainDataError,
    load_artifact,
    load_pretrained_backbone,
    pretrain_settings,
    run_pretraining,
)
from model.pretrain.center_loss import CenterLossStep, FgBgClassifier, center_loss
from model.pretrain.ssl import (
    Frame,
    check_frames,
    colour_augment,
    cosine_triplet_loss,
    infonce_loss,
    pretrain_ssl,
)
from model.yolox import build_yolox

# --- center loss -------------------------------------------------------------------------------


def test_center_loss_on_a_hand_worked_case() -> None:
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1, 0])
    centers = torch.tensor([[1.0, 1.0], [2.0, 2.0]], requires_grad=True)
    loss = center_loss(feats, labels, centers)
    # ||(0, 1)||^2 + ||(1, 2)||^2 + ||(-1, -1)||^2 = 1 + 5 + 2 = 8; L = 8 / (2 * 3).
    assert loss.item() == pytest.approx(8 / 6)
    loss.backward()
    # dL/dc_j = -(1/B) sum_{i: y_i = j} (f_i - c_j)
    expected = torch.tensor([[1 / 3, 0.0], [-1 / 3, -2 / 3]])
    torch.testing.assert_close(centers.grad, expected)


class _TinyBackbone(nn.Module):
    """A CSPDarknet stand-in with the same output contract: a dict holding "dark5"."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4, padding=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"dark5": torch.relu(self.conv(x / 255.0))}


@pytest.mark.parametrize("weight", [0.01, 1.0])
def test_centres_move_by_center_lr_whatever_the_loss_weight(weight: float) -> None:
    torch.manual_seed(0)
    cfg = TrialConfig(center_loss_weight=weight, center_lr=0.5, device="cpu")
    model = FgBgClassifier(_TinyBackbone(), 8)
    step = CenterLossStep(model, cfg, torch.device("cpu"))
    with torch.no_grad():
        step.centers.copy_(torch.randn(2, step.centers.shape[1]))
    x = torch.rand(6, 3, 32, 32) * 255
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    # The features of this batch (train-mode BN on the same batch gives the same values).
    _, feats = model(x)
    c = step.centers.detach().clone().requires_grad_(True)
    center_loss(feats.detach(), y, c).backward()
    expected = c.detach() - 0.5 * c.grad  # SGD on L_C alone at center_lr: Wen's alpha
    parts = step(x, y, lr=0.01)
    torch.testing.assert_close(step.centers.detach(), expected)
    assert parts["loss"] == pytest.approx(parts["ce_loss"] + weight * parts["center_loss"])


def test_weight_zero_is_cross_entropy_only_and_leaves_the_centres() -> None:
    cfg = TrialConfig(center_loss_weight=0.0, device="cpu")
    model = FgBgClassifier(_TinyBackbone(), 8)
    step = CenterLossStep(model, cfg, torch.device("cpu"))
    before = step.centers.detach().clone()
    parts = step(torch.rand(4, 3, 32, 32) * 255, torch.tensor([0, 1, 0, 1]), lr=0.01)
    assert parts["center_loss"] == 0.0 and parts["loss"] == pytest.approx(parts["ce_loss"])
    torch.testing.assert_close(step.centers.detach(), before)
    # Every classifier parameter learned something; the centres took no gradient.
    assert all(p.grad is not None for p in model.parameters())
    assert step.centers.grad is None


# --- ssl losses and augmentation ----------------------------------------------------------------


def test_cosine_triplet_loss_on_a_hand_worked_case() -> None:
    za = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    zp = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    zn = torch.tensor([[-1.0, 0.0], [3.0, 0.0]])
    # Row 0: -cos 45deg + cos 180deg = -0.7071 - 1; row 1: -1 + 0. Mean of the two.
    expected = ((-math.sqrt(0.5) - 1.0) + (-1.0)) / 2
    assert cosine_triplet_loss(za, zp, zn).item() == pytest.approx(expected)


def test_infonce_on_a_hand_worked_case() -> None:
    za = torch.tensor([[2.0, 0.0]])
    zp = torch.tensor([[1.0, 0.0]])
    zn = torch.tensor([[0.0, 5.0]])
    # Logits (cos / T) = [1 / 0.5, 0 / 0.5] = [2, 0]; loss = -log(e^2 / (e^2 + 1)).
    assert infonce_loss(za, zp, zn, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))


def test_colour_augment_jitters_each_patch_and_sometimes_makes_it_gray() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(400, 3, 8, 8) * 255
    out = colour_augment(x, gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert 40 < int(gray.sum()) < 130  # ~20 % grayscale
    assert not torch.allclose(out[~gray], x[~gray])


# --- bad input ---------------------------------------------------------------------------------


def test_frames_smaller_than_the_patch_grid_name_the_file() -> None:
    frames = [Frame("/v/ok.jpg", 300, 300), Frame("/v/small.png", 300, 150)]
    with pytest.raises(PretrainDataError, match=r"small\.png is 300x150.*3x3 patch grid"):
        check_frames(frames, 64)


def test_a_lone_small_frame_is_a_data_error_naming_it() -> None:
    img = np.zeros((96, 96, 3), np.uint8)
    cfg = TrialConfig(size="nano", ssl_patch_size=32, pretrain_epochs=1, device="cpu")
    with pytest.raises(PretrainDataError, match="lone.jpg"):
        pretrain_ssl(cfg, [Frame("lone.jpg", 96, 96, img)], progress=False)
