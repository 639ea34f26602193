"""Augment on the device: the batch's mosaic warp, mixup, HSV and flip as batched tensor ops.

With ``augment_on: device`` (the default on CUDA) the loader workers only *plan* each sample:
they make every random draw of the CPU pipeline (:mod:`model.data.augment`) from the same
generator in the same order, compute the boxes with the same functions (so the targets are
identical, bit for bit, to the CPU path's for the same key), and gather the pixels as uint8:
the 2S mosaic canvas (the four pieces pasted: a copy) or the letterboxed image, plus mixup's
other image letterboxed. :func:`render_batch` then does, for the whole batch on the training
device (CUDA, or the CPU):

1. the affine warp of each mosaic canvas into the S x S input (``grid_sample``, bilinear,
   border 114), identity for plain samples;
2. mixup: the other canvas resized by its jitter (bilinear, edge-clamped like ``cv2.resize``),
   mirrored, cropped on black, blended ``floor((a + b) / 2)``;
3. HSV jitter with OpenCV's 8-bit rules (its fixed-point hue and saturation, the integer
   shifts, its float sextant back-conversion);
4. the horizontal flip (within the image's width for a letterboxed plain sample, whose padding
   stays 114 and untouched by HSV, as in the CPU path).

Why pixels differ a little from the CPU path: OpenCV's ``warpAffine`` and ``resize`` quantise
sample positions to 1/32 px and weights to 15 (resize: 11) bits and round in fixed point; here
the warps are float32 and round to integers where OpenCV's uint8 output would. The HSV
conversion follows OpenCV's 8-bit rules (its division tables; the truncation of its SIMD path,
which large images take: its scalar path rounds, so OpenCV itself differs by one level between a
16x16 and a 64x64 image of the same HSV colour). ``tests/model/data/test_device_augment.py``
bounds the difference. Why not NVIDIA DALI: docs/measurements.md (*Feeding the device*).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from model.data.augment import AugmentParams, ImageSource, plan_finish, plan_mosaic
from model.data.transforms import PAD_VALUE, letterbox

# Columns of the per-sample parameter rows that travel with the uint8 pixels.
P_INV = slice(0, 6)  # the inverse affine (output pixel -> canvas pixel), row-major (2, 3)
P_MOSAIC = 6  # 1: warp the canvas; 0: the canvas' top-left S x S is the sample (plain)
P_CONTENT_H, P_CONTENT_W = 7, 8  # the image inside the letterbox (S, S for a mosaic)
P_GAINS = slice(9, 12)  # HSV shifts dh, ds, dv
P_HSV, P_FLIP = 12, 13
P_MIX, P_MIX_SIDE, P_MIX_FLIP, P_MIX_X, P_MIX_Y = 14, 15, 16, 17, 18
N_PARAMS = 19


class PlannedSample(NamedTuple):
    """One sample as the loader hands it to the device.

    ``canvas`` (C, C, 3) uint8 BGR: the 2S mosaic canvas, or the S x S letterboxed image;
    ``params`` (N_PARAMS,) float64 (columns ``P_*``); ``other`` (S, S, 3) uint8, mixup's other
    image letterboxed, or None; ``targets`` (max_labels, 5) float32, identical to the CPU path's.
    """

    canvas: np.ndarray
    params: np.ndarray
    other: np.ndarray | None
    targets: np.ndarray


def plan_sample(
    source: ImageSource,
    index: int,
    rng: np.random.Generator,
    p: AugmentParams,
    *,
    augment: bool = True,
) -> PlannedSample:
    """:func:`model.data.augment.train_sample`'s draws and boxes, its pixels left to
    :func:`render_batch`. The same ``rng`` state gives the same draws and targets as there."""
    size = p.img_size
    params = np.zeros(N_PARAMS, dtype=np.float64)
    other = None
    use_mosaic = rng.uniform() < p.mosaic_prob
    if augment and use_mosaic:
        plan = plan_mosaic(source, index, rng, p)
        canvas, labels, hw = plan.canvas, plan.labels, (size, size)
        params[P_INV] = cv2.invertAffineTransform(plan.matrix).reshape(-1)
        params[P_MOSAIC] = 1.0
        params[[P_CONTENT_H, P_CONTENT_W]] = size
        if plan.mixup is not None:
            other, draw = plan.mixup
            params[[P_MIX, P_MIX_SIDE, P_MIX_FLIP, P_MIX_X, P_MIX_Y]] = (
                1.0, int(size * draw.jitter), float(draw.flip), draw.x_offset, draw.y_offset
            )  # fmt: skip
    else:
        img, labels = source.load(index, rng)
        hw = img.shape[:2]
        canvas, r = letterbox(img, size)
        params[P_INV] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        params[[P_CONTENT_H, P_CONTENT_W]] = (int(hw[0] * r), int(hw[1] * r))
    fin = plan_finish(hw, labels, rng, p)
    if fin.gains is not None:
        params[P_GAINS] = fin.gains
        params[P_HSV] = 1.0
    params[P_FLIP] = float(fin.flip)
    return PlannedSample(canvas, params, other, fin.targets)


def collate_planned(
    samples: list[PlannedSample], size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack planned samples: ``(canvas [B, C, C, 3] uint8, params [B, N_PARAMS] float32,
    other [B, S, S, 3] uint8 (or [0] when no sample mixes), targets [B, M, 5])``; ``C`` is 2S
    when any sample is a mosaic, else S; smaller canvases sit top-left, padded with 114."""
    side = max(s.canvas.shape[0] for s in samples)
    canvas = np.full((len(samples), side, side, 3), PAD_VALUE, dtype=np.uint8)
    for b, s in enumerate(samples):
        canvas[b, : s.canvas.shape[0], : s.canvas.shape[1]] = s.canvas
    if any(s.other is not None for s in samples):
        other = np.zeros((len(samples), size, size, 3), dtype=np.uint8)
        for b, s in enumerate(samples):
            if s.other is not None:
                other[b] = s.other
    else:
        other = np.zeros((0,), dtype=np.uint8)
    params = np.stack([s.params for s in samples]).astype(np.float32)
    targets = np.stack([s.targets for s in samples])
    return (torch.from_numpy(canvas), torch.from_numpy(params), torch.from_numpy(other),
            torch.from_numpy(targets))  # fmt: skip


def _pixel_grid(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(
        torch.arange(size, device=device, dtype=torch.float32),
        torch.arange(size, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return xs, ys  # (S, S) each: output pixel x, y


def _warp(img: torch.Tensor, inv: torch.Tensor, size: int) -> torch.Tensor:
    """``img`` [B, 3, C, C] float through the inverse affines ``inv`` [B, 2, 3] onto S x S:
    bilinear, pixels outside the canvas 114 (each of the four neighbours, as OpenCV's constant
    border), rounded to integers as OpenCV's uint8 output."""
    side = img.shape[-1]
    xs, ys = _pixel_grid(size, img.device)
    a = inv[:, :, None, None, :]  # (B, 2, 1, 1, 3)
    src = a[..., 0] * xs + a[..., 1] * ys + a[..., 2]  # (B, 2, S, S) canvas x, y
    grid = (2.0 * src / (side - 1) - 1.0).permute(0, 2, 3, 1)  # (B, S, S, 2)
    out = F.grid_sample(img - PAD_VALUE, grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return (out + PAD_VALUE).round_().clamp_(0, 255)


def _mixup_crop(other: torch.Tensor, params: torch.Tensor, size: int) -> torch.Tensor:
    """Mixup's crop [B, 3, S, S]: ``other`` [B, 3, S, S] resized to its jittered side, mirrored,
    placed on black and cropped at its offsets (``cv2.resize``'s half-pixel bilinear)."""
    xs, ys = _pixel_grid(size, other.device)
    side = params[:, P_MIX_SIDE, None, None].clamp(min=1)
    u = xs + params[:, P_MIX_X, None, None]  # (B, S, S) pixel of the jittered canvas
    v = ys + params[:, P_MIX_Y, None, None]
    valid = (u < side) & (v < side)
    u = torch.where(params[:, P_MIX_FLIP, None, None] > 0, side - 1 - u, u)
    grid = torch.stack([2.0 * (u + 0.5) / side - 1.0, 2.0 * (v + 0.5) / side - 1.0], -1)
    crop = F.grid_sample(other, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return crop.round_().clamp_(0, 255) * valid[:, None]


# (b, g, r) <- tab[...] per hue sextant, OpenCV's HSV2RGB table (tab: v, p, q, t)
_SECTORS = ((1, 3, 0), (1, 0, 2), (3, 0, 1), (0, 2, 1), (0, 1, 3), (2, 1, 0))
_HSV_SHIFT = 12  # OpenCV's fixed-point BGR2HSV: x / d as (x * round(2^12 / d) + 2^11) >> 12


def _div_table(numerator: float) -> torch.Tensor:
    """OpenCV's division table ``round(numerator * 2^12 / i)`` for i in 0..255 (0 at 0)."""
    i = torch.arange(256, dtype=torch.float64).clamp(min=1)
    table = torch.round(numerator * (1 << _HSV_SHIFT) / i).to(torch.int32)
    table[0] = 0
    return table


_S_DIV, _H_DIV = _div_table(255.0), _div_table(30.0)  # saturation; hue (180 / 6 per sextant)


def _fixed_div(x: torch.Tensor, table: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``(x * table[d] + 2^11) >> 12`` on int32 tensors (an arithmetic shift: floor)."""
    scaled = x * table.to(x.device)[d.long()] + (1 << (_HSV_SHIFT - 1))
    return torch.div(scaled, 1 << _HSV_SHIFT, rounding_mode="floor")


def hsv_shift(img: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """BGR [B, 3, H, W] (integer values in float) to 8-bit HSV as ``cv2.COLOR_BGR2HSV`` (its
    fixed-point division tables, so the same integers), hue shifted by ``gains[:, 0]`` mod
    180, saturation and value by ``gains[:, 1:]`` clipped, and back as ``cv2.COLOR_HSV2BGR``
    (float32 sextants, truncated to integers as OpenCV 5 does). ``gains`` [B, 3]."""
    b, g, r = img.to(torch.int32).unbind(1)  # (B, H, W) each
    v = torch.maximum(torch.maximum(b, g), r)
    diff = v - torch.minimum(torch.minimum(b, g), r)
    s = _fixed_div(diff, _S_DIV, v)
    raw = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = _fixed_div(raw, _H_DIV, diff)
    h = torch.where(h < 0, h + 180, h).float()
    dh, ds, dv = (gains[:, k, None, None] for k in range(3))
    h = torch.remainder(h + dh, 180.0)
    s = (s.float() + ds).clamp(0, 255) * (1.0 / 255.0)
    v = (v.float() + dv).clamp(0, 255) * (1.0 / 255.0)
    h6 = torch.remainder(h * (1.0 / 30.0), 6.0)
    sector = torch.floor(h6)
    f = h6 - sector
    tab = torch.stack([v, v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))], 0)  # (4, B, H, W)
    pick = torch.tensor(_SECTORS, device=img.device)[sector.long().clamp(0, 5)]  # (B, H, W, 3)
    out = torch.gather(tab, 0, pick.permute(3, 0, 1, 2))  # (3, B, H, W): b, g, r
    out = torch.where((s > 0)[None], out, v[None])  # grey: b = g = r = v
    return torch.floor(out.permute(1, 0, 2, 3) * 255.0)


def render_batch(
    canvas: torch.Tensor, params: torch.Tensor, other: torch.Tensor, size: int
) -> torch.Tensor:
    """The augmented batch ``[B, 3, S, S]`` float BGR 0-255 from :func:`collate_planned`'s
    tensors, computed on their device (see the module docstring for the steps)."""
    n = canvas.shape[0]
    img = canvas.permute(0, 3, 1, 2).float()  # (B, 3, C, C)
    mosaic = params[:, P_MOSAIC] > 0
    plain = img[:, :, :size, :size]
    if bool(mosaic.any()):
        warped = _warp(img, params[:, P_INV].view(n, 2, 3), size)
        out = torch.where(mosaic[:, None, None, None], warped, plain)
    else:
        out = plain.clone()
    if other.numel():
        mix = params[:, P_MIX] > 0
        crop = _mixup_crop(other.permute(0, 3, 1, 2).float(), params, size)
        out = torch.where(mix[:, None, None, None], torch.floor((out + crop) * 0.5), out)
    hsv = params[:, P_HSV] > 0
    if bool(hsv.any()):
        out = torch.where(hsv[:, None, None, None], hsv_shift(out, params[:, P_GAINS]), out)
    xs, ys = _pixel_grid(size, out.device)
    ch, cw = params[:, P_CONTENT_H, None, None], params[:, P_CONTENT_W, None, None]
    inside = (xs < cw) & (ys < ch)  # (B, S, S): the letterboxed image; the rest stays 114
    out = torch.where(inside[:, None], out, torch.full_like(out, PAD_VALUE))
    flip = params[:, P_FLIP, None, None] > 0
    src_x = torch.where(flip & (xs < cw), cw - 1 - xs, xs.expand(n, -1, -1))  # (B, S, S)
    return torch.gather(out, 3, src_x.long()[:, None].expand(-1, 3, -1, -1))


def describe_placement(where: str, augment_on: str, device: torch.device) -> str:
    """The log line of where augmentation runs and why."""
    why = "set by augment_on" if augment_on != "auto" else (
        "augment_on: auto picks the device on CUDA" if device.type == "cuda"
        else "augment_on: auto keeps the loader on the CPU, where it measured faster"
    )
    what = ("batched tensor ops on the training device; the loader gathers uint8 frames"
            if where == "device" else "numpy/OpenCV in the loader")
    return f"augmentation: {what} ({device.type}; {why})"


def placement(augment_on: str, device: torch.device) -> str:
    """``"device"`` or ``"loader"`` for ``augment_on`` (auto: device on CUDA, else loader)."""
    if augment_on == "auto":
        return "device" if device.type == "cuda" else "loader"
    return augment_on

