"""Optimiser pieces of the official YOLOX recipe: parameter groups, the LR schedule and the EMA.

Facts taken from the official code (``yolox/exp/yolox_base.py``, ``yolox/utils/lr_scheduler.py``,
``yolox/utils/ema.py``), re-written here:

* SGD with Nesterov momentum (or, an addition, AdamW) over three groups: normalisation weights
  (no decay), other weights (decay), biases (no decay).
* ``lr = cfg.lr * batch_size / 64`` ("0.01 per 64 images").
* "yoloxwarmcos": quadratic warmup from ``warmup_lr``, cosine down to ``min_lr_ratio * lr``, then a
  constant ``min_lr`` for the last ``no_aug_epochs``; evaluated per iteration.
* EMA of every floating-point state entry (weights and BN statistics) with the decay ramp
  ``d * (1 - exp(-updates / 2000))`` so the average follows the fast-moving early weights. The
  2000 (``ema_ramp``) is configurable: a run of a few hundred updates never leaves the ramp, and
  its "EMA" is then the last few weights (an addition, issue 3).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model.config import TrialConfig

# Normalisation layers whose weights (scales) are excluded from weight decay, as the official
# ``isinstance(v, nn.BatchNorm2d)`` test does; the other norm types cost nothing to include.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
)

EMA_RAMP_UPDATES = 2000.0  # official time constant of the decay ramp


def scaled_lr(cfg: TrialConfig) -> float:
    """The peak learning rate: ``cfg.lr`` is per 64 images, scaled linearly by the batch size."""
    return cfg.lr * cfg.batch_size / 64.0


def param_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split the trainable parameters into the three official groups.

    Returns ``[norm weights (decay 0), other weights (decay weight_decay), biases (decay 0)]``.
    A parameter that is neither a module's ``weight`` nor its ``bias`` (a free ``nn.Parameter``)
    is not dropped as the official loop would drop it: matrices go with the decayed weights,
    vectors and scalars with the biases.
    """
    norm_w: list[nn.Parameter] = []
    decay_w: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in net.modules():
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter) and bias.requires_grad and id(bias) not in seen:
            biases.append(bias)
            seen.add(id(bias))
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.requires_grad and id(weight) not in seen:
            (norm_w if isinstance(module, _NORM_TYPES) else decay_w).append(weight)
            seen.add(id(weight))
    for p in net.parameters():
        if p.requires_grad and id(p) not in seen:
            (decay_w if p.ndim > 1 else biases).append(p)
            seen.add(id(p))
    return [
        {"params": norm_w, "weight_decay": 0.0, "name": "norm_weights"},
        {"params": decay_w, "weight_decay": weight_decay, "name": "weights"},
        {"params": biases, "weight_decay": 0.0, "name": "biases"},
    ]


def build_optimizer(net: nn.Module, cfg: TrialConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg.optimizer`` over :func:`param_groups`; the lr is set per iteration.

    ``sgd``: SGD with Nesterov momentum ``cfg.momentum`` (official). ``adamw``: AdamW with
    ``betas = (cfg.momentum, 0.999)``; its decay is decoupled (``weight_decay * lr`` per step)
    and, as for SGD, left off the norm weights and biases.
    """
    groups = param_groups(net, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=scaled_lr(cfg), betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=scaled_lr(cfg), momentum=cfg.momentum, nesterov=True)


@dataclass(frozen=True)
class YoloxWarmCos:
    """The official "yoloxwarmcos" schedule; ``schedule(iters)`` is the lr of iteration ``iters``.

    ``iters`` counts optimiser steps from 0 over the whole run. The branches are tested in the
    official order (warmup first), so a warmup longer than the cosine part simply never reaches
    the cosine part.
    """

    lr: float  # peak lr (already scaled by the batch size)
    iters_per_epoch: int
    epochs: int
    warmup_epochs: int
    no_aug_epochs: int
    min_lr_ratio: float
    warmup_lr: float = 0.0

    @classmethod
    def from_config(cls, cfg: TrialConfig, iters_per_epoch: int) -> YoloxWarmCos:
        return cls(
            lr=scaled_lr(cfg),
            iters_per_epoch=iters_per_epoch,
            epochs=cfg.epochs,
            warmup_epochs=cfg.warmup_epochs,
            no_aug_epochs=cfg.no_aug_epochs,
            min_lr_ratio=cfg.min_lr_ratio,
            warmup_lr=cfg.warmup_lr,
        )

    @property
    def total_iters(self) -> int:
        return self.iters_per_epoch * self.epochs

    def __call__(self, iters: int) -> float:
        warmup_iters = self.iters_per_epoch * self.warmup_epochs
        no_aug_iters = self.iters_per_epoch * self.no_aug_epochs
        min_lr = self.lr * self.min_lr_ratio
        if warmup_iters > 0 and iters <= warmup_iters:
            return self.warmup_lr + (self.lr - self.warmup_lr) * (iters / warmup_iters) ** 2
        if iters >= self.total_iters - no_aug_iters:
            return min_lr
        cosine_iters = self.total_iters - warmup_iters - no_aug_iters
        progress = (iters - warmup_iters) / cosine_iters
        return min_lr + 0.5 * (self.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class ModelEMA:
    """Exponential moving average of a model's state (parameters and floating-point buffers).

    ``ema.module`` is a frozen copy in eval mode; :meth:`update` follows the training model after
    each optimiser step with decay ``decay * (1 - exp(-updates / ramp))`` (official ramp: 2000).
    """

    def __init__(
        self,
        net: nn.Module,
        decay: float = 0.9998,
        updates: int = 0,
        ramp: float = EMA_RAMP_UPDATES,
    ) -> None:
        self.module = copy.deepcopy(net).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.base_decay = decay
        self.ramp = ramp
        self.updates = updates

    def decay(self, updates: int) -> float:
        return self.base_decay * (1.0 - math.exp(-updates / self.ramp))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.updates += 1
        d = self.decay(self.updates)
        current = net.state_dict()
        for key, avg in self.module.state_dict().items():
            value = current[key].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(value.to(avg.dtype), alpha=1.0 - d)
            else:  # counters such as BN num_batches_tracked: follow the model
                avg.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
