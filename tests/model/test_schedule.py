from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from model.config import TrialConfig
from model.optim import ModelEMA, YoloxWarmCos, build_optimizer, param_groups, scaled_lr

# 10 iterations per epoch, 10 epochs: warmup 0..20, cosine 20..80, constant min lr 80..100.
SCHED = YoloxWarmCos(
    lr=0.01, iters_per_epoch=10, epochs=10, warmup_epochs=2, no_aug_epochs=2, min_lr_ratio=0.05
)


@pytest.mark.parametrize(
    ("iters", "expected"),
    [
        (0, 0.0),
        (5, 0.01 * (5 / 20) ** 2),  # quadratic warmup: 0.000625
        (10, 0.0025),
        (20, 0.01),  # end of warmup: the peak
        (50, 0.0005 + 0.5 * 0.0095),  # cosine midpoint (30 of 60): halfway to min lr = 0.00525
        (35, 0.0005 + 0.5 * 0.0095 * (1 + math.cos(math.pi * 15 / 60))),
        (79, 0.0005 + 0.5 * 0.0095 * (1 + math.cos(math.pi * 59 / 60))),
        (80, 0.0005),  # no-aug epochs: constant min lr
        (99, 0.0005),
    ],
)
def test_yoloxwarmcos_at_hand_computed_iterations(iters: int, expected: float) -> None:
    assert SCHED(iters) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_warmup_starts_at_warmup_lr_and_lr_scales_with_batch() -> None:
    cfg = TrialConfig(batch_size=16, lr=0.01, warmup_lr=0.001, warmup_epochs=1, epochs=4,
                      no_aug_epochs=1)
    assert scaled_lr(cfg) == pytest.approx(0.0025)
    s = YoloxWarmCos.from_config(cfg, iters_per_epoch=4)
    assert s(0) == pytest.approx(0.001)
    assert s(2) == pytest.approx(0.001 + (0.0025 - 0.001) * 0.25)
    assert s(4) == pytest.approx(0.0025)


def test_no_warmup_starts_at_peak() -> None:
    s = YoloxWarmCos(lr=0.02, iters_per_epoch=5, epochs=4, warmup_epochs=0, no_aug_epochs=0,
                     min_lr_ratio=0.5)
    assert s(0) == pytest.approx(0.02)
    assert s(10) == pytest.approx(0.015)  # cosine midpoint between 0.02 and 0.01


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1)  # weight and bias
        self.scale = nn.Parameter(torch.ones(2))  # free vector: no decay
        self.mix = nn.Parameter(torch.ones(2, 2))  # free matrix: decay


def test_param_groups_keep_norm_weights_and_biases_out_of_weight_decay() -> None:
    net = _Net()
    groups = param_groups(net, 5e-4)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert [g["weight_decay"] for g in groups] == [0.0, 5e-4, 0.0]
    assert ids[0] == {id(net.bn.weight)}
    assert ids[1] == {id(net.conv.weight), id(net.head.weight), id(net.mix)}
    assert ids[2] == {id(net.bn.bias), id(net.head.bias), id(net.scale)}
    # every parameter exactly once
    assert sum(len(i) for i in ids) == len(list(net.parameters()))


def test_optimizer_is_nesterov_sgd_with_config_momentum() -> None:
    opt = build_optimizer(_Net(), TrialConfig(momentum=0.8, weight_decay=1e-3, batch_size=32))
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.8 for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-3, 0.0]
    assert opt.param_groups[0]["lr"] == pytest.approx(0.005)


def test_adamw_option_decays_only_the_weights_and_steps_by_lr() -> None:
    cfg = TrialConfig(optimizer="adamw", momentum=0.8, weight_decay=1e-3, batch_size=32)
    net = nn.Linear(1, 1)
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"] == (0.8, 0.999) for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 1e-3, 0.0]
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(1.0)
    net(torch.tensor([[0.5]])).sum().backward()  # d/dw = 0.5, d/db = 1
    opt.step()
    # First Adam step: m_hat / sqrt(v_hat) = sign(g); lr 0.01 * 32 / 64 = 0.005; decoupled
    # decay 0.005 * 1e-3 * w on the weight only.
    assert net.weight.item() == pytest.approx(1.0 - 0.005 * 1e-3 - 0.005, abs=1e-7)
    assert net.bias.item() == pytest.approx(1.0 - 0.005, abs=1e-7)


def test_ema_decay_ramp_and_update() -> None:
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = ModelEMA(net, decay=0.9998)
    assert ema.decay(0) == 0.0
    assert ema.decay(2000) == pytest.approx(0.9998 * (1 - math.exp(-1)))
    assert ema.decay(10**6) == pytest.approx(0.9998)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema.update(net)
    d1 = 0.9998 * (1 - math.exp(-1 / 2000))
    assert ema.module.weight.item() == pytest.approx(1 - d1)
    assert not ema.module.weight.requires_grad and not ema.module.training
    # BN statistics are averaged too; the integer counter follows the model
    bn = nn.BatchNorm1d(1)
    ema_bn = ModelEMA(bn)
    bn.train()
    bn(torch.tensor([[2.0], [4.0]]))
    ema_bn.update(bn)
    d = ema_bn.decay(1)
    assert ema_bn.module.running_mean.item() == pytest.approx((1 - d) * bn.running_mean.item())
    assert ema_bn.module.num_batches_tracked.item() == 1


def test_ema_ramp_is_configurable() -> None:
    # ema_ramp 50: half of the way up the ramp after 50 * ln 2 updates; the decay at update 100
    # is 0.98 * (1 - e^-2), and training builds its EMA with the config's ramp.
    ema = ModelEMA(nn.Linear(1, 1), decay=0.98, ramp=50.0)
    assert ema.decay(50 * math.log(2)) == pytest.approx(0.49)
    assert ema.decay(100) == pytest.approx(0.98 * (1 - math.exp(-2)))


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leave numpy with a cached gaussian
    path = save_checkpoint({"rng": rng_state(), "x": [1, 2.5, "s"]}, tmp_path / "c.pt")
    expected = (random.random(), np.random.normal(), torch.rand(3))
    state = load_checkpoint(path)
    set_rng_state(state["rng"])
    got = (random.random(), np.random.normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])
    assert state["x"] == [1, 2.5, "s"]
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file was renamed away


def test_load_checkpoint_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
