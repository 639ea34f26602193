"""Augmentation on the device (model/data/device_augment.py) against the CPU path.

Boxes: the planned targets equal the CPU path's exactly for the same key, and the generator is
left in the same state (the same draws in the same order, hence the same parameters and the
same distribution). Pixels: equal where no interpolation happens (identity warp, flip; HSV within
one level, where OpenCV's own SIMD and scalar paths differ), close otherwise. The tolerance
for warps: OpenCV quantises a sample position to 1/32 px, so on random-noise images (neighbours
up to 255 apart, the worst case) a pixel can move by 255/64 ~ 4 levels before rounding, and a
hue then re-quantised by HSV can move a saturated channel by a few more; on average the
difference stays far below one level. We check 99.9 % of pixels within 2 levels and under
0.01 % beyond 8, and a mean under 0.5 (measured 0.02-0.06 with OpenCV 5.1; its HSV rounding
convention differs between its code paths, and may between versions, by one level).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.config import ConfigError, TrialConfig
from model.data.augment import AugmentParams, sample_rng, train_sample
from model.data.device_augment import (
    P_FLIP,
    P_HSV,
    P_INV,
    P_MIX,
    P_MIX_SIDE,
    P_MOSAIC,
    collate_planned,
    hsv_shift,
    placement,
    plan_sample,
    render_batch,
)
from model.data.loader import build_train_loader
from model.data.tiles import TileImages
from model.data.transforms import apply_hsv, resize_to_fit
from tests.model.data.test_frame_cache import make_split


class Source:
    """Random-noise images of four shapes with 0-4 boxes each, resized to fit ``size``."""

    def __init__(self, size: int, n: int = 12, seed: int = 0) -> None:
        g = np.random.default_rng(seed)
        self.size, self.images, self.boxes = size, [], []
        for i in range(n):
            h, w = [(360, 640), (480, 640), (300, 200), (270, 480)][i % 4]
            self.images.append(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
            k = int(g.integers(0, 5))
            xy = g.uniform(0, [w - 40, h - 40], (k, 2))
            wh = g.uniform(3, 40, (k, 2))
            self.boxes.append(np.concatenate([xy, xy + wh, np.zeros((k, 1))], 1).astype(np.float32))
        self.labelled = np.array([i for i, b in enumerate(self.boxes) if len(b)])

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int, rng=None):
        img, r = resize_to_fit(self.images[i], self.size)
        lab = self.boxes[i].copy()
        lab[:, :4] *= r
        return img, lab


def tile_source(size: int) -> TileImages:
    src = Source(size * 2)
    tiles = TileImages([str(i) for i in range(len(src))], src.boxes, size, object_share=0.5,
                       min_visible=0.25)
    tiles._cache = src.images
    return tiles


PARAMS = AugmentParams(img_size=96, mosaic_prob=0.8, mixup_prob=0.7, mosaic_scale=(0.3, 1.8))
SOURCES = {"letterbox": lambda: Source(96), "tiles": lambda: tile_source(96)}


def both_paths(source, params, keys):
    """CPU images (B, S, S, 3) float, planned samples, CPU targets, for keys (k, augment)."""
    cpu, plans, targets = [], [], []
    for k, augment in keys:
        rng_cpu, rng_dev = sample_rng(3, 1, k), sample_rng(3, 1, k)
        img, t = train_sample(source, k % len(source), rng_cpu, params, augment=augment)
        plans.append(plan_sample(source, k % len(source), rng_dev, params, augment=augment))
        assert rng_cpu.bit_generator.state == rng_dev.bit_generator.state  # the same draws
        cpu.append(img)
        targets.append(t)
    return np.stack(cpu).astype(np.float32), plans, targets


def render(plans, size):
    canvas, params, other, _targets = collate_planned(plans, size)
    return render_batch(canvas, params, other, size).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("centre", [False, True])
@pytest.mark.parametrize("kind", list(SOURCES))
def test_boxes_are_the_cpu_paths_exactly_and_pixels_close(kind, centre):
    params = dataclasses.replace(PARAMS, mosaic_centre_crop=centre)
    keys = [(k, k % 5 != 0) for k in range(24)]
    cpu, plans, targets = both_paths(SOURCES[kind](), params, keys)
    for plan, t in zip(plans, targets, strict=True):
        assert np.array_equal(plan.targets, t)
    assert any(p.params[P_MIX] for p in plans) and any(p.params[P_MOSAIC] == 0 for p in plans)
    diff = np.abs(render(plans, 96) - cpu)
    assert diff.mean() < 0.5
    assert np.percentile(diff, 99.9) <= 2
    assert (diff > 8).mean() < 1e-4


def test_without_interpolation_the_pixels_are_equal():
    # identity affine: the warp reads whole pixels, so only HSV rounding may differ, by 1: OpenCV
    # itself truncates in its SIMD path and rounds in its scalar one (HSV (73, 207, 246) gives
    # blue 132 in a 64x64 image, 133 in a 16x16 one), and a small image mixes both
    params = dataclasses.replace(
        PARAMS, degrees=0.0, translate=0.0, shear=0.0, mosaic_scale=(1.0, 1.0), mixup_prob=0.0
    )
    keys = [(k, k % 3 != 0) for k in range(16)]
    for source in (Source(96), tile_source(96)):
        cpu, plans, _ = both_paths(source, params, keys)
        diff = np.abs(render(plans, 96) - cpu)
        assert diff.max() <= 1 and diff.mean() < 0.5
        no_hsv = [p._replace(params=p.params * (np.arange(len(p.params)) != P_HSV))
                  for p in plans]
        flipped = [p.params[P_FLIP] > 0 for p in plans]
        assert any(flipped) and not all(flipped)
        cpu_plain, _, _ = both_paths(source, dataclasses.replace(params, hsv_prob=0.0), keys)
        assert np.array_equal(render(no_hsv, 96), cpu_plain)


def test_hsv_follows_opencv_with_hand_worked_pixels():
    # pure red (b, g, r) = (0, 0, 200): H 0, S 255, V 200; hue +30 -> 60 deg*2 = sextant 2 (green)
    img = torch.tensor([[[[0.0]], [[0.0]], [[200.0]]]])  # (1, 3, 1, 1)
    out = hsv_shift(img, torch.tensor([[60.0, 0.0, 0.0]]))
    assert out.flatten().tolist() == [0.0, 200.0, 0.0]
    grey = hsv_shift(torch.full((1, 3, 1, 1), 77.0), torch.tensor([[5.0, 0.0, 10.0]]))
    assert grey.flatten().tolist() == [87.0] * 3  # no saturation: hue is ignored, v + 10
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for gains in ([3, -20, 25], [-4, 15, -30], [0, 0, 0]):
        ref = apply_hsv(noise, np.array(gains, np.int16)).astype(np.float32)
        got = hsv_shift(torch.from_numpy(noise).permute(2, 0, 1)[None].float(),
                        torch.tensor([gains], dtype=torch.float32))
        diff = np.abs(got[0].permute(1, 2, 0).numpy() - ref)
        assert diff.max() <= 1 and diff.mean() < 0.5


def test_the_parameters_follow_the_configured_distribution():
    source = Source(96, n=8)
    params = dataclasses.replace(PARAMS, flip_prob=0.3, hsv_prob=0.6, mosaic_prob=0.5)
    plans = [plan_sample(source, k % 8, sample_rng(0, 0, k), params) for k in range(600)]
    rows = np.stack([p.params for p in plans])
    mosaic = rows[:, P_MOSAIC] > 0
    assert abs(mosaic.mean() - 0.5) < 0.07 and abs((rows[:, P_FLIP] > 0).mean() - 0.3) < 0.07
    assert (rows[:, P_HSV] > 0).mean() < 0.6 + 0.07  # the fallback turns some jitters off
    inv = rows[mosaic][:, P_INV].reshape(-1, 2, 3)
    scale = 1 / np.sqrt(np.abs(np.linalg.det(inv[:, :, :2])))  # the affine's area scale
    assert scale.min() > 0.3 * 0.9 and scale.max() < 1.8 * 1.1  # shear changes it a little
    sides = rows[rows[:, P_MIX] > 0][:, P_MIX_SIDE]
    assert sides.min() >= int(96 * 0.5) and sides.max() <= int(96 * 1.5)


def test_the_loader_augments_on_the_device_when_asked(tmp_path):
    split = make_split(tmp_path / "data")
    cfg = TrialConfig(img_size=96, batch_size=4, workers=0, max_labels=16, seed=5,
                      mixup_prob=0.5, augment_on="device")
    loaders = {where: build_train_loader(split, dataclasses.replace(cfg, augment_on=where),
                                         progress=False) for where in ("loader", "device")}
    assert loaders["device"].placement == "device" and loaders["loader"].placement == "loader"
    for loader in loaders.values():
        loader.set_epoch(2)
    for (ia, ta), (ib, tb) in zip(loaders["loader"], loaders["device"], strict=True):
        assert torch.equal(ta, tb) and ia.shape == ib.shape and ib.dtype == torch.float32
        assert (ia - ib).abs().mean() < 0.5


def test_auto_places_augmentation_on_cuda_only_and_a_typo_is_an_error():
    assert placement("auto", torch.device("cpu")) == "loader"
    assert placement("auto", torch.device("cuda")) == "device"
    assert placement("device", torch.device("cpu")) == "device"
    with pytest.raises(ConfigError, match="augment_on"):
        TrialConfig(augment_on="gpu")


@pytest.mark.gpu
def test_cuda_renders_what_the_cpu_renders():
    plans = both_paths(Source(96), PARAMS, [(k, True) for k in range(16)])[1]
    tensors = collate_planned(plans, 96)[:3]
    cpu = render_batch(*tensors, 96)
    gpu = render_batch(*(t.cuda() for t in tensors), 96).cpu()
    diff = (gpu - cpu).abs()  # float order (FMA) may move a .5 or an HSV boundary by a level
    assert diff.mean() < 0.05 and (diff > 1).float().mean() < 1e-3
