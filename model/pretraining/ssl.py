"""Strategy 3 of the FloW study: self-supervised backbone pretraining on unlabeled frames.

An anchor patch, a positive directly above/below/left/right of it, and a negative far from it
(or from another frame) go through the backbone (dark5, global average pooled) and a small
projection MLP to embeddings ``z`` (B, 128). Loss, as in the study (``ssl_loss: cosine``):

    L = mean_i [ -cos(z_a, z_p) + cos(z_a, z_n) ]

or InfoNCE (``ssl_loss: infonce``): each anchor must pick its own positive among all positives
and negatives of the batch, logits = cos / ``ssl_temperature``. Every patch gets its own colour
jitter (brightness, contrast, saturation) and random grayscale, so colour alone cannot tell
neighbours apart. (Hue jitter is left out: it needs an HSV round trip per patch.)

Figures: the final loss, and on held-out triplets (frames not trained on, no augmentation) the
triplet accuracy (share with cos(a, p) > cos(a, n)) and the mean gap cos(a, p) - cos(a, n),
before and after training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from model.config import TrialConfig
from model.pretraining.common import (
    PretrainDataError,
    autocast,
    build_backbone,
    check_finite,
    cosine_lr,
    dark5_channels,
    make_sgd,
    pooled_dark5,
    seed_everything,
    select_device,
)
from model.pretraining.crops import read_image
from model.pretraining.patches import GRID, Triplet, cut_patch, plan_triplets

HELD_OUT_FRACTION = 0.2
HELD_OUT_MIN_FRAMES = 5  # fewer frames: evaluate on triplets of the training frames
HELD_OUT_TRIPLETS = 256
EMBED_DIM = 128
GRAY_PROB = 0.2
JITTER = 0.4  # brightness, contrast and saturation factors drawn from 1 +- JITTER


@dataclass
class Frame:
    """One unlabeled frame: in memory (video frames) or read from ``name`` when needed."""

    name: str  # the file (and frame number for videos), for error messages
    width: int
    height: int
    image: np.ndarray | None = None  # (H, W, 3) BGR uint8

    def load(self) -> np.ndarray:
        if self.image is not None:
            return self.image
        return read_image(self.name)


class Embedder(nn.Module):
    """Backbone + projection MLP. patches (B, 3, p, p) BGR 0-255 -> embeddings (B, EMBED_DIM)."""

    def __init__(self, backbone: nn.Module, in_channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, EMBED_DIM),
        )

    def forward(self, patches: Tensor) -> Tensor:
        return self.proj(pooled_dark5(self.backbone, patches))


def cosine_triplet_loss(za: Tensor, zp: Tensor, zn: Tensor) -> Tensor:
    """The study's loss: mean(-cos(a, p) + cos(a, n)). Each z is (B, D); returns a scalar."""
    return (-F.cosine_similarity(za, zp, dim=1) + F.cosine_similarity(za, zn, dim=1)).mean()


def infonce_loss(za: Tensor, zp: Tensor, zn: Tensor, temperature: float) -> Tensor:
    """InfoNCE: anchor i against the 2B candidates [positives; negatives], target positive i.

    za, zp, zn (B, D) -> scalar. Logits are cosine similarities divided by ``temperature``.
    """
    a = F.normalize(za, dim=1)
    cand = F.normalize(torch.cat([zp, zn]), dim=1)  # (2B, D)
    logits = a @ cand.T / temperature  # (B, 2B)
    return F.cross_entropy(logits, torch.arange(len(za), device=za.device))


def _gray(x: Tensor) -> Tensor:
    """(B, 3, H, W) BGR -> (B, 1, H, W) luma."""
    return 0.114 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.299 * x[:, 2:3]


def colour_augment(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Per-image colour jitter and random grayscale. x (B, 3, H, W) BGR 0-255 -> same shape."""
    b = x.shape[0]

    def factor() -> Tensor:
        u = torch.rand(b, 1, 1, 1, generator=generator, device=x.device)
        return 1.0 + JITTER * (2.0 * u - 1.0)

    x = x * factor()  # brightness
    mean = _gray(x).mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * factor() + mean  # contrast
    gray = _gray(x)
    x = (x - gray) * factor() + gray  # saturation
    to_gray = torch.rand(b, 1, 1, 1, generator=generator, device=x.device) < GRAY_PROB
    x = torch.where(to_gray, _gray(x).expand_as(x), x)
    return x.clamp(0.0, 255.0)


def _cut_batch(
    frames: list[Frame], triplets: list[Triplet], p: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchor, positive and negative patches, uint8 (B, p, p, 3) each, reading each frame once."""
    needed = {t.frame for t in triplets} | {t.neg_frame for t in triplets}
    images = {f: frames[f].load() for f in needed}
    a = np.stack([cut_patch(images[t.frame], t.anchor, p) for t in triplets])
    pos = np.stack([cut_patch(images[t.frame], t.positive, p) for t in triplets])
    neg = np.stack([cut_patch(images[t.neg_frame], t.negative, p) for t in triplets])
    return a, pos, neg


def _to_tensor(patches: np.ndarray, device: torch.device) -> Tensor:
    """uint8 (B, p, p, 3) -> float (B, 3, p, p) 0-255."""
    return torch.from_numpy(np.ascontiguousarray(patches)).to(device).permute(0, 3, 1, 2).float()


@torch.no_grad()
def _evaluate(
    model: Embedder, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]], cfg: TrialConfig
) -> dict[str, float]:
    """Triplet accuracy and mean cosine gap on fixed, unaugmented held-out triplets."""
    device = next(model.parameters()).device
    model.eval()
    gaps = []
    for a, pos, neg in batches:
        with autocast(cfg, device):
            z = model(_to_tensor(np.concatenate([a, pos, neg]), device)).float()
        za, zp, zn = z.chunk(3)
        gaps.append((F.cosine_similarity(za, zp, dim=1) - F.cosine_similarity(za, zn, dim=1)).cpu())
    model.train()
    gap = torch.cat(gaps)
    return {"triplet_accuracy": float((gap > 0).float().mean()), "cos_gap": float(gap.mean())}


def check_frames(frames: list[Frame], p: int) -> None:
    """Every frame must hold GRID x GRID patches; otherwise a PretrainDataError naming it."""
    if not frames:
        raise PretrainDataError("no unlabeled frames to take patches from")
    for fr in frames:
        if fr.width < GRID * p or fr.height < GRID * p:
            raise PretrainDataError(
                f"frame {fr.name} is {fr.width}x{fr.height}, smaller than the {GRID}x{GRID} patch "
                f"grid of ssl_patch_size {p} ({GRID * p}x{GRID * p} px); lower ssl_patch_size "
                "or leave this source out"
            )


def split_frames(n: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, held_out) frame indices: 20 % held out when there are enough frames."""
    order = np.random.default_rng([seed, 7]).permutation(n).tolist()
    if n < HELD_OUT_MIN_FRAMES:
        return sorted(order), sorted(order)
    n_held = max(2, round(n * HELD_OUT_FRACTION))  # two, so negatives can cross frames
    return sorted(order[n_held:]), sorted(order[:n_held])


def pretrain_ssl(
    cfg: TrialConfig, frames: list[Frame], *, progress: bool = True
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Self-supervised pretraining on ``frames``; returns (CSPDarknet state_dict on CPU, metrics).

    Metrics: ``loss`` (mean over the last epoch), ``triplet_accuracy`` / ``cos_gap`` on held-out
    triplets after training and ``*_init`` before it, frame counts and ``seconds``.
    """
    start = time.perf_counter()
    p = cfg.ssl_patch_size
    check_frames(frames, p)
    rng = seed_everything(cfg.seed)
    device = select_device(cfg)
    train_frames, held_frames = split_frames(len(frames), cfg.seed)
    held = _held_out_triplets(cfg, frames, train_frames, held_frames)
    batch = cfg.pretrain_batch_size
    held_batches = [_cut_batch(frames, held[i : i + batch], p) for i in range(0, len(held), batch)]

    backbone = build_backbone(cfg).to(device)
    model = Embedder(backbone, dark5_channels(backbone)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_fn = _TripletStep(model, cfg, device)

    metrics = {f"{k}_init": v for k, v in _evaluate(model, held_batches, cfg).items()}
    metrics["loss"] = _train_embedder(step_fn, frames, train_frames, rng, progress)
    metrics.update(_evaluate(model, held_batches, cfg))
    metrics.update(
        n_frames=float(len(frames)),
        n_held_out_frames=float(len(held_frames) if len(frames) >= HELD_OUT_MIN_FRAMES else 0),
        seconds=time.perf_counter() - start,
    )
    state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    return state, metrics


def _held_out_triplets(
    cfg: TrialConfig, frames: list[Frame], train_frames: list[int], held_frames: list[int]
) -> list[Triplet]:
    """The fixed evaluation triplets of ``held_frames``, after checking that ``train_frames``
    can give a triplet at all."""
    p = cfg.ssl_patch_size
    sizes = [(fr.width, fr.height) for fr in frames]
    try:  # a lone frame too small for any far negative is a data error naming it
        eval_rng = np.random.default_rng([cfg.seed, 11])
        # 4x the training draws per held-out frame, at most HELD_OUT_TRIPLETS in all.
        per_held = 4 * cfg.ssl_triplets_per_frame
        held = plan_triplets(eval_rng, sizes, held_frames, per_held, p)[:HELD_OUT_TRIPLETS]
        plan_triplets(np.random.default_rng(0), sizes, train_frames, 1, p)  # feasibility
    except ValueError as e:
        raise PretrainDataError(f"{frames[0].name}: {e}; add frames or lower ssl_patch_size") from e
    return held


class _TripletStep:
    """One optimisation step of the embedder on a batch of triplets (optional AMP scaler)."""

    def __init__(self, model: Embedder, cfg: TrialConfig, device: torch.device) -> None:
        self.model = model
        self.cfg = cfg
        self.device = device
        self.optimizer = make_sgd(list(model.parameters()), cfg.pretrain_lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.amp)
        # the colour augmentation's own stream, apart from torch's global one
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(cfg.seed)

    def __call__(
        self, patches: tuple[np.ndarray, np.ndarray, np.ndarray], lr: float, step: int
    ) -> Tensor:
        """patches: anchors, positives, negatives, uint8 (B, p, p, 3) each -> the loss."""
        cfg, device = self.cfg, self.device
        x = colour_augment(_to_tensor(np.concatenate(patches), device), self.gen)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(cfg, device):
            z = self.model(x)
        za, zp, zn = z.float().chunk(3)
        if cfg.ssl_loss == "infonce":
            loss = infonce_loss(za, zp, zn, cfg.ssl_temperature)
        else:
            loss = cosine_triplet_loss(za, zp, zn)
        check_finite(loss, step, {cfg.ssl_loss: loss.item()})
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss


def _train_embedder(
    step_fn: _TripletStep,
    frames: list[Frame],
    train_frames: list[int],
    rng: np.random.Generator,
    progress: bool,
) -> float:
    """Every epoch over ``train_frames`` in an order drawn from ``rng``; returns the last
    epoch's mean loss."""
    cfg = step_fn.cfg
    p, batch, per_frame = cfg.ssl_patch_size, cfg.pretrain_batch_size, cfg.ssl_triplets_per_frame
    sizes = [(fr.width, fr.height) for fr in frames]
    n_triplets = len(train_frames) * per_frame
    steps_per_epoch = max(1, n_triplets // batch)
    total = steps_per_epoch * cfg.pretrain_epochs
    frames_per_batch = max(1, batch // per_frame)
    bar = tqdm(
        total=total, desc=f"ssl pretraining ({cfg.ssl_loss})", unit="it", disable=not progress
    )
    loss_sum = 0.0
    for epoch in range(cfg.pretrain_epochs):
        order = [train_frames[i] for i in rng.permutation(len(train_frames))]
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            chunk = _batch_frames(order, b, frames_per_batch)
            triplets = plan_triplets(rng, sizes, chunk, per_frame, p)[:batch]
            step = epoch * steps_per_epoch + b
            lr = cosine_lr(cfg.pretrain_lr, step, total, warmup=min(50, total // 10))
            loss = step_fn(_cut_batch(frames, triplets, p), lr, step)
            loss_sum += loss.item()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    return loss_sum / steps_per_epoch


def _batch_frames(order: list[int], b: int, frames_per_batch: int) -> list[int]:
    """The frames of batch ``b``: the next ``frames_per_batch`` of ``order``, cycling."""
    chunk = order[(b * frames_per_batch) % len(order) :][:frames_per_batch]
    if len(chunk) < 2 and len(order) > 1:  # cross-frame negatives need a second frame
        chunk = chunk + [order[(b * frames_per_batch + 1) % len(order)]]
    return chunk
