"""One trial on several processes (``ddp_workers`` > 1): torch.distributed data parallelism.

Each of the W processes (ranks) builds the same global batch of ``batch_size`` images — the
loader is seeded per sample, so every rank draws the same one — and trains on its own slice of
``batch_size / W`` images; the gradients are averaged over the ranks after each backward pass,
in one all-reduce (torch's DistributedDataParallel overlaps its own with the backward pass,
where they would interleave with the BatchNorm's collectives in an order that differs between
ranks). Three things make W processes train as
one process with the same total batch, to float rounding (tests/model/test_distributed.py):

* the loss is normalised by the foregrounds of the *whole* batch (every rank's count summed),
  times W, so that the averaged gradients are those of the global loss;
* BatchNorm normalises with the statistics of the whole batch: torch's ``SyncBatchNorm`` on
  CUDA; on CPU (gloo), where torch's refuses to run, :class:`CpuSyncBatchNorm` — the same rule,
  its sums exchanged by the differentiable ``torch.distributed.nn.all_reduce``;
* the loss values shown (epoch means, reports) are the global ones.

Rank 0 evaluates, writes the checkpoints and reports; the others only train. The ranks are
processes of one trial on one node (gloo on CPU, NCCL on CUDA with one GPU each): a trial that
asks Ray for N GPUs gets one bundle of resources, so its processes always start together.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# torch 2.13 marks the differentiable all_reduce deprecated in favour of a functional collective
# that has no autograd on gloo; said once per batch and layer, it would drown the trial's log
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated",
    category=FutureWarning,
)


@dataclass(frozen=True)
class World:
    """This process's place in the trial: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """The rank that evaluates, saves and reports."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global batch (B must divide by the world size)."""
        if not self.active:
            return batch
        part = batch.shape[0] // self.size
        return batch[self.rank * part:(self.rank + 1) * part]

    def average_gradients(self, net: nn.Module) -> None:
        """Every parameter's gradient, the mean over the ranks (one flat all-reduce, after the
        backward pass: collectives never interleave with the BatchNorm ones inside it, whose
        order is the same on every rank)."""
        if not self.active:
            return
        params = [p for p in net.parameters() if p.requires_grad]
        for p in params:  # a branch one rank's slice never reached still takes the others' share
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast(self, net: nn.Module) -> None:
        """Rank 0's parameters and buffers everywhere (the ranks start from the same weights)."""
        if not self.active:
            return
        for t in [*net.parameters(), *net.buffers()]:
            dist.broadcast(t.data, src=0)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """``value`` summed over the ranks (no gradient)."""
        if not self.active:
            return value
        out = value.detach().clone()
        dist.all_reduce(out)
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_world(rank: int, size: int, port: int, device: torch.device) -> World:
    """Join the trial's process group (loopback: every rank runs on this node)."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=size)
    return World(rank, size)


def close_world(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d over the batch of every rank, on CPU: the per-channel count, sum and sum of
    squares are summed over the ranks (differentiably), then the batch mean and the biased
    variance normalise, and the running statistics take the unbiased variance, as torch's
    BatchNorm does for one process. Same parameters and buffers as BatchNorm2d: checkpoints
    load either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        n = torch.tensor(float(x.numel() // x.shape[1]), dtype=torch.float32)
        # two passes, as precise as one process's BatchNorm: E[x²] − mean² would cancel badly
        # where the mean is large against the spread (early layers see 0–255 pixels)
        first = all_reduce(torch.cat([xf.sum((0, 2, 3)), n.reshape(1)]))  # summed, with grads
        count = first[-1]
        mean = first[:-1] / count
        centred = xf - mean[None, :, None, None]
        var = all_reduce((centred * centred).sum((0, 2, 3))) / count  # biased: what normalises
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum if self.momentum is not None else 0.1
            unbiased = var * count / (count - 1).clamp(min=1)
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        y = centred / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` with every BatchNorm2d normalising over the ranks' whole batch."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    for name, child in net.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, CpuSyncBatchNorm):
            sync = CpuSyncBatchNorm(
                child.num_features, eps=child.eps, momentum=child.momentum,
                affine=child.affine, track_running_stats=child.track_running_stats,
            )
            sync.load_state_dict(child.state_dict())
            setattr(net, name, sync)
        else:
            sync_batchnorm(child, device)
    return net


def spawn_ranks(
    size: int, target: Callable[..., Any], args: tuple[Any, ...]
) -> list[Any]:
    """Start ranks 1..size-1 (``target(rank, *args)``) as spawned processes; rank 0 is the
    caller. Returns the processes (join them; a non-zero exit code is a failed rank)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, *args), daemon=True) for rank in
             range(1, size)]
    for p in procs:
        p.start()
    return procs
