"""A trial on several processes (``ddp_workers``, model/distributed.py) trains as one process
with the same total batch: gloo on CPU, two processes, against the single-process run."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.checkpoint import load_checkpoint
from model.config import ConfigError, TrialConfig
from model.data.synth import generate_flow_like
from model.distributed import CpuSyncBatchNorm, free_port
from model.trainer import train_detector

LOSSES = ("total_loss", "iou_loss", "conf_loss", "cls_loss", "l1_loss")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flow")
    return generate_flow_like(root, n_train=10, n_test=4, width=160, height=96, video=False)


def tiny(data: Path, **overrides) -> TrialConfig:
    cfg = TrialConfig(
        size="nano", data=str(data), img_size=64, batch_size=4, epochs=2, no_aug_epochs=1,
        warmup_epochs=1, eval_interval=1, workers=0, multiscale=0, device="cpu", seed=5,
        lr=0.02, threads=2, channels_last=False,
    )
    return dataclasses.replace(cfg, **overrides)


def test_two_processes_train_as_one_with_the_same_total_batch(data_dir, tmp_path) -> None:
    """Batch 4 on one process against 2 + 2 on two, an epoch of two steps with L1 and the last
    epoch's evaluation: the same losses and the same weights, to float rounding (the sums run in
    another order: 1e-4 relative, as between two thread counts of one process, 5e-5 in the
    gradients; over many steps such differences grow, as they do between thread counts, because
    SimOTA's dynamic k is a discrete choice)."""
    one: list[dict] = []
    cfg = tiny(data_dir, epochs=1)
    train_detector(cfg, lambda m, p: one.append(m), tmp_path / "one", progress=False)
    two: list[dict] = []
    result = train_detector(dataclasses.replace(cfg, ddp_workers=2), lambda m, p: two.append(m),
                            tmp_path / "two", progress=False)
    assert [m["epoch"] for m in two] == [m["epoch"] for m in one] == [1]
    assert one[0]["l1_loss"] > 0  # (the no-augmentation epoch: every term is compared)
    for a, b in zip(one, two, strict=True):
        for key in LOSSES:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["epoch"], key)
    wa = load_checkpoint(tmp_path / "one" / "last.pt")["model"]
    wb = load_checkpoint(tmp_path / "two" / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst < 1e-4, worst
    assert "test_mAP" in result and result["epochs"] == 1  # rank 0 scored and returned


def test_ddp_workers_must_divide_the_batch() -> None:
    with pytest.raises(ConfigError, match="key 'ddp_workers' must divide batch_size=6"):
        TrialConfig(batch_size=6, ddp_workers=4)


def _sync_bn_rank(rank: int, port: int, x: torch.Tensor, out: dict) -> None:
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = CpuSyncBatchNorm(3, eps=1e-3, momentum=0.03)
    part = x[rank * 2:(rank + 1) * 2].clone().requires_grad_(True)
    y = bn(part)
    (y * torch.arange(1.0, 4.0)[None, :, None, None]).sum().backward()
    out[rank] = (y.detach(), part.grad, bn.running_mean.clone(), bn.running_var.clone(),
                 bn.weight.grad.clone())
    dist.destroy_process_group()


def test_the_cpu_sync_batchnorm_is_batchnorm_over_every_rank() -> None:
    """Two ranks of 2 samples each: outputs, input gradients, running statistics and the
    weight's gradient (summed over the ranks, as DDP sums) equal BatchNorm2d's on the 4."""
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_sync_bn_rank, args=(free_port(), x, out), nprocs=2)
        got = dict(out)
    ref = torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.03)
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    (y * torch.arange(1.0, 4.0)[None, :, None, None]).sum().backward()
    assert torch.allclose(torch.cat([got[0][0], got[1][0]]), y, atol=1e-5)
    assert torch.allclose(torch.cat([got[0][1], got[1][1]]), xr.grad, atol=1e-5)
    for r in (0, 1):
        assert torch.allclose(got[r][2], ref.running_mean, atol=1e-6)
        assert torch.allclose(got[r][3], ref.running_var, atol=1e-6)
    assert torch.allclose(got[0][4] + got[1][4], ref.weight.grad, atol=1e-4)
    assert not math.isnan(float(got[0][0].sum()))
