"""Plumbing shared by the pretraining methods: the error type, device, seeding, the backbone.

Kept apart from the methods so that ``crops.py`` and ``ssl.py`` stay about their data and losses.
"""

from __future__ import annotations

import math
import random
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from torch import Tensor, nn

from model.config import TrialConfig
from model.yolox import build_yolox, load_coco_weights

# Pad value of official YOLOX letterboxing; used where a crop reaches past the image border.
PAD_VALUE = 114


class PretrainingError(ValueError):
    """The one error base of model/pretraining/: the message names the file or key and the fix."""


class PretrainDataError(PretrainingError):
    """The data cannot feed a pretraining method; the message names the cause and the file."""


def select_device(cfg: TrialConfig) -> torch.device:
    """``cfg.device`` resolved: auto = CUDA when available; asking for absent CUDA is an error."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' was asked for but torch sees no CUDA device; set device: auto or cpu"
        )
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def autocast(cfg: TrialConfig, device: torch.device) -> AbstractContextManager:
    """Mixed precision on CUDA when ``cfg.amp``; a no-op on CPU (fp32 there, as in training)."""
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def seed_everything(seed: int) -> np.random.Generator:
    """Seed python, numpy and torch; return a numpy generator for the data sampling."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def build_backbone(cfg: TrialConfig) -> nn.Module:
    """The CSPDarknet of ``cfg.size`` where pretraining starts (``cfg.pretrain_init``).

    Built through the detector builder so that its module names are exactly those of
    ``net.backbone.backbone`` in a detector: the artifact's state_dict then loads strictly.
    With ``pretrain_init: coco`` the official COCO weights are loaded first (downloaded into the
    torch hub cache when missing; the driver checks availability before the first trial).
    """
    net = build_yolox(cfg.size, num_classes=cfg.num_classes)
    if cfg.pretrain_init == "coco":
        load_coco_weights(net, cfg.size, cfg.coco_weights or None, download=True)
    return net.backbone.backbone


def dark5_channels(backbone: nn.Module) -> int:
    """Channels of the backbone's dark5 output, found with one tiny forward in eval mode."""
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        param = next(backbone.parameters())
        out = backbone(torch.zeros(1, 3, 64, 64, device=param.device, dtype=param.dtype))
    backbone.train(was_training)
    return int(out["dark5"].shape[1])


def pooled_dark5(backbone: nn.Module, images: Tensor) -> Tensor:
    """Global-average-pooled dark5 features. images (B, 3, S, S) BGR 0-255 -> (B, C5)."""
    return backbone(images)["dark5"].mean(dim=(2, 3))


def cosine_lr(base_lr: float, step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5 % of ``base_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def make_sgd(params: list[nn.Parameter], lr: float) -> torch.optim.SGD:
    """SGD with Nesterov momentum, weight decay on conv/linear weights only (as in YOLOX)."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]  # BN weights and biases
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": 5e-4},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )


def check_finite(loss: Tensor, step: int, parts: dict[str, float]) -> None:
    """Raise with the step and the loss parts when the loss is NaN or infinite."""
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite pretraining loss at step {step}: {parts}; lower pretrain_lr"
        )
