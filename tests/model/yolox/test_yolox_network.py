"""The YOLOX network against the official reference: layout, parameter counts, eval outputs."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
import types

import pytest
import torch

from model.assign import AssignSettings
from model.config import TrialConfig
from model.yolox import SIZES, YOLOX, build_yolox, build_yolox_from_config
from model.yolox.head_settings import HeadSettings, LossSettings
from tests.paths import FIXTURES

MANIFEST = json.loads((FIXTURES / "yolox_state_dict_manifest.json").read_text())


def _parity(name: str) -> tuple[YOLOX, dict]:
    ref = torch.load(FIXTURES / name, weights_only=True)
    a = ref["arch"]
    net = build_yolox(
        depth=a["depth"],
        width=a["width"],
        depthwise=a["depthwise"],
        num_classes=a["num_classes"],
        act=a["act"],
    )
    net.load_state_dict(ref["state_dict"], strict=True)
    return net, ref


@pytest.mark.parametrize("size", list(SIZES))
def test_state_dict_layout_and_param_count_equal_official(size: str) -> None:
    ref = MANIFEST[size]
    assert SIZES[size] == (ref["depth"], ref["width"], ref["depthwise"])
    with torch.device("meta"):  # shapes only: x has 99M parameters
        net = build_yolox(size, num_classes=80)
    got = [[k, list(v.shape)] for k, v in net.state_dict().items()]
    assert got == ref["state_dict"]
    assert sum(p.numel() for p in net.parameters()) == ref["num_params"]


@pytest.mark.parametrize("fixture", ["parity_nano.pt", "parity_w0125.pt"])
def test_eval_output_equals_official(fixture: str) -> None:
    net, ref = _parity(fixture)
    net.eval()
    with torch.no_grad():
        out = net(ref["input"])
    expected = ref["eval_output"]  # (2, 336, 8)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_decoding_and_anchor_order_by_hand() -> None:
    # Zero regression and objectness convs: every box is its cell centre (x, y) * stride with
    # w = h = stride, and objectness = the prior 0.01. A non-square input catches an h/w swap.
    net = build_yolox(depth=0.33, width=0.125, num_classes=2).eval()
    with torch.no_grad():
        for conv in (*net.head.reg_preds, *net.head.obj_preds):
            conv.weight.zero_()
        for conv in net.head.reg_preds:
            conv.bias.zero_()
        out = net(torch.rand(1, 3, 64, 96) * 255)
    assert out.shape == (1, 8 * 12 + 4 * 6 + 2 * 3, 7)
    boxes = out[0, :, :4]
    # anchor 13 is level 0 (stride 8, 12 columns): row 1, column 1
    assert boxes[13].tolist() == [8.0, 8.0, 8.0, 8.0]
    assert boxes[95].tolist() == [88.0, 56.0, 8.0, 8.0]  # last of level 0: row 7, column 11
    assert boxes[96 + 7].tolist() == [16.0, 16.0, 16.0, 16.0]  # level 1: row 1, column 1
    assert boxes[96 + 24 + 5].tolist() == [64.0, 32.0, 32.0, 32.0]  # level 2: row 1, column 2
    torch.testing.assert_close(out[0, :, 4], torch.full((126,), 0.01))


def test_prior_bias_and_batchnorm_settings() -> None:
    net = build_yolox("nano", num_classes=3)
    prior = -math.log(99.0)
    for conv in (*net.head.cls_preds, *net.head.obj_preds):
        torch.testing.assert_close(conv.bias, torch.full_like(conv.bias, prior))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    manifest_bns = [k for k, _ in MANIFEST["nano"]["state_dict"] if k.endswith(".running_var")]
    assert len(bns) == len(manifest_bns) == 104
    assert all(bn.eps == 1e-3 and bn.momentum == 0.03 for bn in bns)
    assert all(isinstance(m, torch.nn.SiLU) for m in net.modules() if hasattr(m, "inplace"))


def test_bn_momentum_from_config_drives_the_running_statistics() -> None:
    net = build_yolox_from_config(TrialConfig(size="nano", bn_momentum=0.25))
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 104 and all(bn.momentum == 0.25 for bn in bns)
    stem = net.backbone.backbone.stem.conv.bn
    net.train()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        net(x)
    # one step from mean 0 moves a quarter of the way to the batch mean of the stem's conv
    with torch.no_grad():
        focus = [x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]]
        feats = net.backbone.backbone.stem.conv.conv(torch.cat(focus, 1))
    torch.testing.assert_close(stem.running_mean, 0.25 * feats.mean((0, 2, 3)))
    default = build_yolox_from_config(TrialConfig(size="nano"))
    assert all(m.momentum == 0.03 for m in default.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_channels_last_training_step_matches_contiguous_on_cpu() -> None:
    torch.manual_seed(0)
    ciou = HeadSettings(loss=LossSettings(reg_loss="ciou"))
    net = build_yolox("nano", num_classes=1, settings=ciou).train()
    images = torch.rand(2, 3, 96, 96) * 255
    targets = torch.zeros(2, 4, 5)
    targets[0, 0] = torch.tensor([0, 30.0, 40.0, 12.0, 9.0])
    targets[1, :2] = torch.tensor([[0, 60.0, 20.0, 20.0, 14.0], [0, 10.0, 70.0, 8.0, 8.0]])
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        copy = build_yolox("nano", num_classes=1, settings=ciou).train()
        copy.load_state_dict(net.state_dict())
        copy = copy.to(memory_format=layout)
        out = copy(images.contiguous(memory_format=layout), targets)
        out["total_loss"].backward()
        grads = {k: p.grad.clone() for k, p in copy.named_parameters()}
        results.append(({k: float(v.detach()) for k, v in out.items()}, grads))
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-3)  # float32 conv algorithms differ
    for k in grad_a:  # same direction and size per tensor, up to float32 rounding
        a, b = grad_a[k].flatten(), grad_b[k].flatten()
        assert (b - a).norm() <= 1e-3 * a.norm() + 1e-6, k


def test_build_from_config_maps_fields() -> None:
    cfg = TrialConfig(
        size="nano",
        num_classes=2,
        reg_loss="giou",
        center_radius=2.5,
        candidate_topk=5,
        iou_cost_weight=1.0,
        reg_weight=2.0,
    )
    net = build_yolox_from_config(cfg)
    h, loss = net.head, net.head.settings.loss
    assert (h.num_classes, loss.reg_loss, loss.assign.center_radius) == (2, "giou", 2.5)
    assign = loss.assign
    assert (assign.candidate_topk, assign.iou_cost_weight, loss.reg_weight) == (5, 1.0, 2.0)
    assert (assign.assign_mode, h.use_l1) == ("batched", False)
    assert net.arch == {
        "size": "nano",
        "depth": 0.33,
        "width": 0.25,
        "depthwise": True,
        "num_classes": 2,
        "act": "silu",
    }
    assert h.cls_preds[0].out_channels == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "small"}, "unknown YOLOX size 'small'; use one of 'nano', 'tiny', 's', 'm'"),
        ({"size": "s", "width": 0.5}, "give either size='s' or explicit depth/width/depthwise"),
        ({"depth": 0.33}, "or both depth= and width="),
        ({"depth": 0.33, "width": 0.0}, "depth and width must be > 0"),
        ({"size": "s", "num_classes": 0}, "num_classes must be >= 1, got 0"),
        ({"size": "s", "act": "gelu"}, "unknown activation 'gelu'; use one of 'silu', 'relu'"),
    ],
)
def test_build_errors_name_the_fix(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        with torch.device("meta"):
            build_yolox(**kwargs)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: LossSettings(reg_loss="eiou"),
            "unknown reg_loss 'eiou'; use one of 'iou', 'giou'",
        ),
        (
            lambda: AssignSettings(assign_mode="loop"),
            "unknown assign_mode 'loop'; use one of 'batched'",
        ),
    ],
)
def test_settings_errors_name_the_fix(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_input_shapes_are_clear_errors() -> None:
    net = build_yolox(depth=0.33, width=0.125, num_classes=1).eval()
    with pytest.raises(ValueError, match=r"multiples of 32.*got shape \(1, 3, 64, 80\)"):
        net(torch.zeros(1, 3, 64, 80))
    with pytest.raises(ValueError, match=r"targets must be \(B=1, max_objects, 5\).*\(1, 4\)"):
        net(torch.zeros(1, 3, 64, 64), torch.zeros(1, 4))


def test_grids_are_cached_per_level_shape_dtype_device() -> None:
    head = build_yolox(depth=0.33, width=0.125).head
    cpu = torch.device("cpu")
    a = head.level_grid(1, 4, 6, torch.float32, cpu)
    assert head.level_grid(1, 4, 6, torch.float32, cpu)[0] is a[0]
    assert head.level_grid(1, 6, 4, torch.float32, cpu)[0] is not a[0]
    assert head.level_grid(1, 4, 6, torch.float64, cpu)[0].dtype == torch.float64
    assert a[0][7].tolist() == [1.0, 1.0] and a[0].shape == (24, 2)  # (x, y), row-major
    assert a[1].unique().tolist() == [16.0]
    assert len(head._grids) == 3


def test_train_mode_hands_the_agreed_inputs_to_yolox_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple, dict]] = []
    fake = types.ModuleType("model.yolox.loss")

    def yolox_loss(*args: object, **kwargs: object) -> dict:
        calls.append((args, kwargs))
        return {"total_loss": torch.zeros(())}

    fake.yolox_loss = yolox_loss
    monkeypatch.setitem(sys.modules, "model.yolox.loss", fake)

    net, ref = _parity("parity_w0125.pt")
    net.eval()  # same BatchNorm statistics in both calls, so the outputs are comparable
    net.head.use_l1 = True
    per_image = AssignSettings(assign_mode="per_image")
    net.head.settings = HeadSettings(loss=LossSettings(assign=per_image))
    with torch.no_grad():
        scores = net(ref["input"])
        assert net(ref["input"], ref["targets"]) == {"total_loss": torch.zeros(())}
    (outputs, raw_reg, x_shifts, y_shifts, strides, targets), kw = calls[0]
    assert outputs.shape == (2, 336, 8) and raw_reg.shape == (2, 336, 4)
    torch.testing.assert_close(outputs[..., :4], scores[..., :4])
    torch.testing.assert_close(outputs[..., 4:].sigmoid(), scores[..., 4:])
    # decoded centre = (raw + cell) * stride, size = exp(raw) * stride
    cells = torch.stack([x_shifts, y_shifts], 1)
    torch.testing.assert_close(outputs[..., :2], (raw_reg[..., :2] + cells) * strides[:, None])
    torch.testing.assert_close(outputs[..., 2:4], raw_reg[..., 2:4].exp() * strides[:, None])
    assert strides.tolist() == [8.0] * 256 + [16.0] * 64 + [32.0] * 16
    assert (x_shifts[17].item(), y_shifts[17].item()) == (1.0, 1.0)  # 16 columns at stride 8
    assert (x_shifts[256 + 9].item(), y_shifts[256 + 9].item()) == (1.0, 1.0)
    assert torch.equal(targets, ref["targets"])
    settings = kw.pop("settings")
    assert kw == {
        "num_classes": 3,
        "use_l1": True,
        "dynamic_state": net.head.dynamic_state,
        "assign_stats": False,
        "world": net.head.world,  # one process: World() (model/distributed.py)
    }
    assert dataclasses.asdict(settings) == {
        "reg_loss": "iou",
        "reg_weight": 5.0,
        "nwd_constant": 12.8,
        "cls_target": "iou",
        "assign": {
            "assigner": "simota",
            "assign_k": 0,
            "hambox": False,
            "assign_overlap": "iou",
            "center_radius": 1.5,
            "candidate_topk": 10,
            "iou_cost_weight": 3.0,
            "nwd_constant": 12.8,
            "dynamic_interval": 100,
            "tood_alpha": 1.0,
            "tood_beta": 6.0,
            "assign_mode": "per_image",
        },
    }


@pytest.mark.skipif(
    importlib.util.find_spec("model.yolox.loss") is None, reason="model/yolox/loss.py not written"
)
@pytest.mark.parametrize("use_l1", [False, True])
def test_train_step_gives_every_parameter_a_gradient(use_l1: bool) -> None:
    torch.manual_seed(0)
    net = build_yolox(depth=0.33, width=0.125, num_classes=2).train()
    net.head.use_l1 = use_l1
    images = torch.rand(2, 3, 128, 128) * 255
    # objects of 8 to 110 px so that every level (and so every class conv) gets foregrounds
    targets = torch.zeros(2, 6, 5)
    targets[0, :4] = torch.tensor(
        [
            [0, 20.0, 24.0, 8.0, 6.0],
            [1, 70.0, 60.0, 16.0, 16.0],
            [0, 40.0, 100.0, 32.0, 32.0],
            [1, 96.0, 96.0, 64.0, 64.0],
        ]
    )
    targets[1, :3] = torch.tensor(
        [[1, 100.0, 30.0, 12.0, 12.0], [0, 30.0, 90.0, 24.0, 20.0], [1, 64.0, 64.0, 110.0, 100.0]]
    )
    losses = net(images, targets)
    assert set(losses) >= {"total_loss", "iou_loss", "l1_loss", "conf_loss", "cls_loss", "num_fg"}
    assert torch.isfinite(losses["total_loss"])
    assert (losses["l1_loss"] > 0) == use_l1
    losses["total_loss"].backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_channels_last_eval_matches_fp32() -> None:
    net, ref = _parity("parity_nano.pt")
    net = net.cuda().eval().to(memory_format=torch.channels_last)
    images = ref["input"].cuda().contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
        out = net(images)
    assert out.dtype == torch.float32  # decoded in fp32
    torch.testing.assert_close(out.cpu(), ref["eval_output"], rtol=2e-2, atol=0.1)
