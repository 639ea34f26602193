"""Strategy 1 of the FloW study: a foreground/background classifier with center loss.

The backbone's deepest output (dark5) feeds a small head: 3x3 conv-BN-SiLU, global average
pooling to a feature ``f`` (B, D), and a linear layer to 2 logits (background 0, object 1).
Loss = cross-entropy + ``center_loss_weight`` x center loss (Wen et al., ECCV 2016):

    L_C = 1 / (2B) * sum_i || f_i - c_{y_i} ||^2

with learnable class centres ``c`` (2, D) that have their own SGD optimiser at ``center_lr``.
As in the widely used implementation of Wen et al., the centres' gradient is divided by the loss
weight before their step, so ``center_lr`` is the paper's alpha whatever the weight.
Weight 0 is the cross-entropy-only ablation: the centre term is not computed at all.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from model.config import TrialConfig
from model.pretraining.common import (
    autocast,
    build_backbone,
    check_finite,
    cosine_lr,
    dark5_channels,
    make_sgd,
    seed_everything,
    select_device,
)
from model.pretraining.crops import cut_all, plan_crops, split_held_out

HELD_OUT_FRACTION = 0.2
FEATURE_DIM = 128  # width of the pooled feature the centres live in


def center_loss(features: Tensor, labels: Tensor, centers: Tensor) -> Tensor:
    """L_C = 1/(2B) sum_i ||f_i - c_{y_i}||^2.

    features (B, D) float, labels (B,) int64 in [0, K), centers (K, D) -> scalar.
    """
    diff = features - centers[labels]  # (B, D)
    return 0.5 * diff.pow(2).sum(dim=1).mean()


class FgBgClassifier(nn.Module):
    """Backbone + head. images (B, 3, S, S) BGR 0-255 -> (logits (B, 2), features (B, D))."""

    def __init__(self, backbone: nn.Module, in_channels: int, feat_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, feat_dim, 3, padding=1, bias=False),
            nn.BatchNorm2d(feat_dim),
            nn.SiLU(inplace=True),
        )
        self.fc = nn.Linear(feat_dim, 2)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = self.head(self.backbone(images)["dark5"])  # (B, D, S/32, S/32)
        features = x.mean(dim=(2, 3))  # (B, D)
        return self.fc(features), features


def _to_tensor(crops: np.ndarray, device: torch.device) -> Tensor:
    """uint8 (B, S, S, 3) BGR -> float (B, 3, S, S) 0-255, the detector's input convention."""
    return torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float()


@torch.no_grad()
def _accuracy(
    model: FgBgClassifier, crops: np.ndarray, labels: np.ndarray, batch: int, cfg: TrialConfig
) -> dict[str, float]:
    """Accuracy overall and per class on the held-out crops, the model in eval mode."""
    device = next(model.parameters()).device
    model.eval()
    preds = []
    for i in range(0, len(crops), batch):
        with autocast(cfg, device):
            logits, _ = model(_to_tensor(crops[i : i + batch], device))
        preds.append(logits.argmax(dim=1).cpu().numpy())
    model.train()
    pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    fg, bg = labels == 1, labels == 0
    return {
        "accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
        "fg_accuracy": float((pred[fg] == 1).mean()) if fg.any() else float("nan"),
        "bg_accuracy": float((pred[bg] == 0).mean()) if bg.any() else float("nan"),
    }


class CenterLossStep:
    """One optimisation step of classifier + centres (two optimisers, optional AMP scaler)."""

    def __init__(self, model: FgBgClassifier, cfg: TrialConfig, device: torch.device) -> None:
        self.model = model
        self.cfg = cfg
        self.centers = nn.Parameter(torch.zeros(2, FEATURE_DIM, device=device))  # (2, D)
        self.optimizer = make_sgd(list(model.parameters()), cfg.pretrain_lr)
        self.center_opt = torch.optim.SGD([self.centers], lr=cfg.center_lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp)
        self.device = device
        self.n = 0

    def __call__(self, x: Tensor, y: Tensor, lr: float) -> dict[str, float]:
        """x (B, 3, S, S) BGR 0-255, y (B,) 0/1 -> the loss parts of this step."""
        cfg, weight = self.cfg, self.cfg.center_loss_weight
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(cfg, self.device):
            logits, feats = self.model(x)
        ce = F.cross_entropy(logits.float(), y)
        # Weight 0 (the CE-only ablation): the centre term is not even computed.
        lc = center_loss(feats.float(), y, self.centers) if weight > 0 else ce.new_zeros(())
        loss = ce + weight * lc
        parts = {"loss": loss.item(), "ce_loss": ce.item(), "center_loss": lc.item()}
        check_finite(loss, self.n, parts)
        self.optimizer.zero_grad(set_to_none=True)
        self.center_opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        grad = self.centers.grad
        if weight > 0 and grad is not None and torch.isfinite(grad).all():
            # Undo the loss weight (and the AMP scale) so that center_lr is Wen's alpha.
            grad.mul_(1.0 / (weight * self.scaler.get_scale()))
            self.center_opt.step()
        self.scaler.update()
        self.n += 1
        return parts


def pretrain_center_loss(
    cfg: TrialConfig,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    source: str,
    *,
    progress: bool = True,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Train the classifier on crops of ``images`` (COCO-style dicts) and return the backbone.

    Returns (CSPDarknet state_dict on CPU, metrics): held-out ``accuracy``, ``fg_accuracy``,
    ``bg_accuracy``, final ``loss``/``ce_loss``/``center_loss`` (means over the last epoch),
    crop counts and ``seconds``.
    """
    start = time.perf_counter()
    rng = seed_everything(cfg.seed)
    device = select_device(cfg)
    specs = plan_crops(images, annotations, cfg.crop_size, rng, source)
    crops = cut_all(specs, cfg.crop_size, progress=progress)  # (N, S, S, 3) uint8
    labels = np.array([s.label for s in specs], dtype=np.int64)
    train_idx, held_idx = split_held_out(labels, HELD_OUT_FRACTION, cfg.seed)

    backbone = build_backbone(cfg).to(device)
    model = FgBgClassifier(backbone, dark5_channels(backbone)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_fn = CenterLossStep(model, cfg, device)

    batch = min(cfg.pretrain_batch_size, len(train_idx))
    metrics = _train_classifier(step_fn, crops, labels, train_idx, batch, progress)
    metrics.update(_accuracy(model, crops[held_idx], labels[held_idx], batch, cfg))
    metrics.update(
        n_crops=float(len(specs)),
        n_positive=float(labels.sum()),
        n_held_out=float(len(held_idx)),
        seconds=time.perf_counter() - start,
    )
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    return state, metrics


def _train_classifier(
    step_fn: CenterLossStep,
    crops: np.ndarray,
    labels: np.ndarray,
    train_idx: np.ndarray,
    batch: int,
    progress: bool,
) -> dict[str, float]:
    """Every epoch over the ``train_idx`` crops; returns the last epoch's mean loss parts."""
    cfg = step_fn.cfg
    steps_per_epoch = max(1, len(train_idx) // batch)  # drop the last partial batch (BN)
    total = steps_per_epoch * cfg.pretrain_epochs
    sums: dict[str, float] = {}
    bar = tqdm(total=total, desc="center-loss pretraining", unit="it", disable=not progress)
    for epoch in range(cfg.pretrain_epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(train_idx)
        sums = {"loss": 0.0, "ce_loss": 0.0, "center_loss": 0.0}
        for b in range(steps_per_epoch):
            idx = order[b * batch : (b + 1) * batch]
            x, y = _flipped_batch(crops, labels, idx, step_fn.device)
            step = epoch * steps_per_epoch + b
            lr = cosine_lr(cfg.pretrain_lr, step, total, warmup=min(50, total // 10))
            parts = step_fn(x, y, lr)
            for k in sums:
                sums[k] += parts[k]
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{parts['loss']:.3f}")
    bar.close()
    return {k: v / steps_per_epoch for k, v in sums.items()}


def _flipped_batch(
    crops: np.ndarray, labels: np.ndarray, idx: np.ndarray, device: torch.device
) -> tuple[Tensor, Tensor]:
    """The crops ``idx`` as (B, 3, S, S) floats, each flipped horizontally with chance 1/2,
    and their labels (B,)."""
    x = _to_tensor(crops[idx], device)
    flip = torch.rand(len(idx), device=device) < 0.5  # horizontal flips
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    y = torch.from_numpy(labels[idx]).to(device)
    return x, y
