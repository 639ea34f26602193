"""The YOLOX loss: official parity through the network, hand-worked terms, modes and kinds."""

from __future__ import annotations

import math

import pytest
import torch

from model.box_losses import IOU_KINDS
from model.yolox.head_settings import HeadSettings
from model.yolox.loss import LOSS_KEYS, yolox_loss
from tests.loss_settings import loss_settings
from tests.paths import FIXTURES

# ----------------------------------------------------------------------------- official parity


@pytest.fixture
def one_thread():
    """A 128 px forward is tiny: on a busy 2-core machine two OpenMP threads wait on each other
    for seconds, one thread takes 30 ms."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["parity_nano", "parity_w0125"])
def test_parity_with_official_losses(name: str, one_thread: None) -> None:
    from model.yolox import build_yolox

    ref = torch.load(FIXTURES / f"{name}.pt", weights_only=True)
    arch = ref["arch"]
    net = build_yolox(
        num_classes=arch["num_classes"],
        depth=arch["depth"],
        width=arch["width"],
        depthwise=arch["depthwise"],
        act=arch.get("act", "silu"),
    )
    net.load_state_dict(ref["state_dict"], strict=True)
    net.train()  # batch statistics; the running ones it updates do not enter the loss
    for assign_mode in ("batched", "per_image"):
        net.head.settings = HeadSettings(loss=loss_settings(assign_mode=assign_mode))
        for key, use_l1 in (("no_l1", False), ("l1", True)):
            net.head.use_l1 = use_l1
            with torch.no_grad():  # values only; gradients are checked on synthetic outputs
                got = net(ref["input"], ref["targets"])
            assert set(got) == set(LOSS_KEYS)
            for k, want in ref["train_losses"][key].items():
                assert float(got[k]) == pytest.approx(float(want), rel=1e-4, abs=1e-6), (
                    assign_mode,
                    key,
                    k,
                )


# ----------------------------------------------------------------------------- hand-worked

# One row of six stride-8 cells, centres x = 4, 12, ..., 44 (y = 4); one class.
X = torch.arange(6.0)
Y = torch.zeros(6)
S = torch.full((6,), 8.0)


def head_outputs(boxes: torch.Tensor, obj: float = 0.0, cls: float = 1.0) -> torch.Tensor:
    """(B, 6, 4) boxes -> (B, 6, 6) outputs with constant objectness and class logits."""
    b = boxes.shape[0]
    return torch.cat([boxes, torch.full((b, 6, 1), obj), torch.full((b, 6, 1), cls)], -1)


def test_hand_worked_terms() -> None:
    # Object (class 0) at (16, 4), 8 x 8. Anchor 1 predicts (18, 4, 8, 8): overlap 6 x 8 = 48,
    # IoU = 48 / (64 + 64 - 48) = 0.6; every other anchor predicts far away (IoU 0). The dynamic k
    # is max(1, int(0.6)) = 1 and anchor 1 is the cheapest within the radius: one foreground.
    boxes = torch.tensor([[16.0, 200, 8, 8]]).repeat(1, 6, 1)
    boxes[0, 1] = torch.tensor([18.0, 4, 8, 8])
    targets = torch.tensor([[[0.0, 16, 4, 8, 8], [0, 0, 0, 0, 0]]])
    raw = torch.zeros(1, 6, 4)
    got = yolox_loss(head_outputs(boxes), raw, X, Y, S, targets, num_classes=1, use_l1=True)
    iou = 0.6
    expected = {
        "iou_loss": 5.0 * (1 - iou**2),  # reg_weight x (1 - IoU^2) / 1 foreground
        "conf_loss": 6 * math.log(2),  # objectness logit 0 on 6 anchors: log 2 each
        "cls_loss": math.log(1 + math.e) - 1.0 * iou,  # BCE(logit 1, target IoU)
        # raw (0, 0, 0, 0) vs target (16/8 - 1, 4/8 - 0, log(8/8 + 1e-8), log(8/8 + 1e-8)),
        # the logs being 0 in float32 (1 + 1e-8 rounds to 1)
        "l1_loss": 1.0 + 0.5,
        "num_fg": 1.0,
    }
    expected["total_loss"] = sum(
        expected[k] for k in ("iou_loss", "conf_loss", "cls_loss", "l1_loss")
    )
    for k, want in expected.items():
        assert float(got[k]) == pytest.approx(want, rel=1e-6), k
    # reg_weight scales only the IoU term
    got2 = yolox_loss(head_outputs(boxes), raw, X, Y, S, targets, num_classes=1,
                      settings=loss_settings(reg_weight=1.0))
    assert float(got2["iou_loss"]) == pytest.approx(1 - iou**2, rel=1e-6)
    assert float(got2["l1_loss"]) == 0.0


def test_zero_object_batch_has_only_the_objectness_loss() -> None:
    boxes = torch.rand(2, 6, 4) * 40 + 1
    outputs = head_outputs(boxes, obj=0.5).requires_grad_(True)
    got = yolox_loss(
        outputs, torch.zeros(2, 6, 4), X, Y, S, torch.zeros(2, 3, 5), num_classes=1, use_l1=True
    )
    got["total_loss"].backward()
    assert torch.isfinite(outputs.grad).all()
    got = {k: v.detach() for k, v in got.items()}
    assert float(got["iou_loss"]) == float(got["cls_loss"]) == float(got["l1_loss"]) == 0.0
    assert float(got["num_fg"]) == 0.0
    # all 12 anchors are background: BCE(0.5, 0) = log(1 + e^0.5), divided by max(0, 1) = 1
    assert float(got["conf_loss"]) == pytest.approx(12 * math.log(1 + math.exp(0.5)), rel=1e-6)
    assert float(got["total_loss"]) == float(got["conf_loss"])


# ----------------------------------------------------------------------------- synthetic batch


def synthetic(seed: int, classes: int = 3, size: int = 128) -> dict:
    """Head outputs on a 128 x 128 grid (336 anchors) and targets with 0, 1, 4, 7 objects."""
    g = torch.Generator().manual_seed(seed)
    xs, ys, ss = [], [], []
    for s in (8, 16, 32):
        yv, xv = torch.meshgrid(torch.arange(size // s), torch.arange(size // s), indexing="ij")
        xs.append(xv.flatten())
        ys.append(yv.flatten())
        ss.append(torch.full((xv.numel(),), s))
    x, y, s = torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(ss).float()
    counts = [0, 1, 4, 7]
    b, a = len(counts), x.numel()
    raw = torch.randn(b, a, 4 + 1 + classes, generator=g)
    boxes = torch.cat(
        [(raw[..., :2] + torch.stack([x, y], 1)) * s[:, None], raw[..., 2:4].exp() * s[:, None]], -1
    )
    outputs = torch.cat([boxes, raw[..., 4:]], -1)
    targets = torch.zeros(b, 9, 5)
    for i, n in enumerate(counts):
        if n:
            targets[i, :n, 0] = torch.randint(0, classes, (n,), generator=g).float()
            targets[i, :n, 1:3] = 8 + torch.rand(n, 2, generator=g) * (size - 16)
            targets[i, :n, 3:] = 3 + torch.rand(n, 2, generator=g) * 40
    return {
        "outputs": outputs,
        "raw": raw[..., :4].clone(),
        "x": x,
        "y": y,
        "s": s,
        "targets": targets,
        "classes": classes,
    }


def run(d: dict, use_l1: bool = False, **keys) -> dict[str, torch.Tensor]:
    return yolox_loss(
        d["outputs"], d["raw"], d["x"], d["y"], d["s"], d["targets"], num_classes=d["classes"],
        use_l1=use_l1, settings=loss_settings(**keys),
    )


@pytest.mark.parametrize("use_l1", [False, True])
def test_batched_and_per_image_modes_agree_exactly(use_l1: bool) -> None:
    d = synthetic(0)
    a = run(d, use_l1=use_l1, assign_mode="batched")
    b = run(d, use_l1=use_l1, assign_mode="per_image")
    for k in LOSS_KEYS:
        assert torch.equal(a[k], b[k]), k
    assert 0 < float(a["num_fg"]) and float(a["iou_loss"]) > 0


def test_padding_rows_anywhere_are_ignored() -> None:
    d = synthetic(1)
    shuffled = dict(
        d, targets=d["targets"][:, torch.randperm(9, generator=torch.Generator().manual_seed(3))]
    )
    a, b = run(d), run(shuffled)
    # same objects, other row order: the object order changes only the tie-breaking among
    # objects of exactly equal cost, which random data never has
    for k in LOSS_KEYS:
        assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-6), k


@pytest.mark.parametrize("kind", IOU_KINDS)
def test_every_regression_loss_gives_finite_gradients(kind: str) -> None:
    d = synthetic(2)
    outputs = d["outputs"].clone().requires_grad_(True)
    raw = d["raw"].clone().requires_grad_(True)
    got = yolox_loss(
        outputs,
        raw,
        d["x"],
        d["y"],
        d["s"],
        d["targets"],
        num_classes=3,
        use_l1=True,
        settings=loss_settings(reg_loss=kind),
    )
    assert all(torch.isfinite(v).all() for v in got.values())
    got["total_loss"].backward()
    assert torch.isfinite(outputs.grad).all() and torch.isfinite(raw.grad).all()
    assert outputs.grad[..., :4].abs().sum() > 0 and raw.grad.abs().sum() > 0


def test_bad_options_and_inputs_are_clear_errors() -> None:
    d = synthetic(0)
    with pytest.raises(ValueError, match="'iou', 'giou', 'diou', 'ciou'"):
        run(d, reg_loss="eiou")
    with pytest.raises(ValueError, match="'batched', 'per_image'"):
        run(d, assign_mode="loop")
    with pytest.raises(ValueError, match=r"targets must be \(B=4, max_objects, 5\)"):
        yolox_loss(
            d["outputs"], d["raw"], d["x"], d["y"], d["s"], d["targets"][..., :4], num_classes=3
        )
    with pytest.raises(ValueError, match=r"5 \+ num_classes=7"):
        yolox_loss(d["outputs"], d["raw"], d["x"], d["y"], d["s"], d["targets"], num_classes=2)
    with pytest.raises(ValueError, match="use_l1 needs raw_reg"):
        yolox_loss(
            d["outputs"], None, d["x"], d["y"], d["s"], d["targets"], num_classes=3, use_l1=True
        )
