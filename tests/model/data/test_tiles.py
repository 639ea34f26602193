"""Native-resolution training tiles (model/data/tiles.py) and the tile-mode training loader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from model.config import ConfigError, TrialConfig, config_from_dict
from model.data.augment import AugmentParams, sample_rng, train_sample
from model.data.dataset import load_dataset
from model.data.loader import build_train_loader, training_source
from model.data.synth import generate_flow_like
from model.data.tiles import TileImages, crop_tile, place_tile
from model.data.transforms import PAD_VALUE


def frame(w: int, h: int) -> np.ndarray:
    """A frame whose pixel (y, x) encodes its position, so crops can be checked exactly."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs % 251, ys % 251, (xs + ys) % 7], -1).astype(np.uint8)


def test_a_crop_keeps_every_box_inside_it_exactly_in_tile_coordinates() -> None:
    img = frame(200, 120)
    labels = np.array([[50.5, 40.25, 60.0, 52.0, 0], [70, 45, 90, 75, 0]], np.float32)
    crop, kept, counts = crop_tile(img, labels, 40, 30, 64, 0.25)
    assert crop.shape == (64, 64, 3)
    assert np.array_equal(crop, img[30:94, 40:104])
    assert kept.tolist() == [[10.5, 10.25, 20.0, 22.0, 0], [30, 15, 50, 45, 0]]
    assert counts.tolist() == [2, 0, 0]


def test_a_box_cut_by_the_edge_is_clipped_or_dropped_under_the_visible_fraction() -> None:
    img = frame(200, 120)
    labels = np.array(
        [
            [90, 10, 110, 20, 0],  # x 90..110, crop ends at 100: half visible -> clipped
            [96, 30, 116, 40, 0],  # 4 of 20 px visible (0.2 < 0.25) -> dropped
            [150, 10, 160, 20, 0],  # wholly outside: not in this sample, not counted
            [0, 0, 8, 8, 0],  # wholly inside
        ],
        np.float32,
    )
    _, kept, counts = crop_tile(img, labels, 0, 0, 100, 0.25)
    assert kept.tolist() == [[90, 10, 100, 20, 0], [0, 0, 8, 8, 0]]
    assert counts.tolist() == [1, 1, 1]  # whole, clipped, dropped
    _, kept_all, counts_all = crop_tile(img, labels, 0, 0, 100, 0.2)  # 0.2 is enough now
    assert len(kept_all) == 3 and counts_all.tolist() == [1, 2, 0]


def test_a_frame_smaller_than_the_tile_is_padded_not_upscaled() -> None:
    img = frame(50, 30)
    labels = np.array([[10, 5, 20, 25, 0]], np.float32)
    crop, kept, counts = crop_tile(img, labels, 0, 0, 64, 0.25)
    assert crop.shape == (64, 64, 3)
    assert np.array_equal(crop[:30, :50], img)
    assert (crop[30:] == PAD_VALUE).all() and (crop[:, 50:] == PAD_VALUE).all()
    assert kept.tolist() == [[10, 5, 20, 25, 0]] and counts.tolist() == [1, 0, 0]
    assert place_tile(np.random.default_rng(0), labels, 50, 30, 64, 1.0) == (0, 0)


def test_object_crops_contain_their_box_and_uniform_crops_stay_in_the_frame() -> None:
    labels = np.array([[300, 200, 320, 230, 0]], np.float32)
    rng = np.random.default_rng(1)
    origins = [place_tile(rng, labels, 640, 360, 128, 1.0) for _ in range(200)]
    for x0, y0 in origins:
        assert x0 <= 300 and x0 + 128 >= 320 and y0 <= 200 and y0 + 128 >= 230
    # the box is at a random position of the crop, not always in its middle
    assert len({x0 for x0, _ in origins}) > 50
    uniform = [place_tile(rng, labels, 640, 360, 128, 0.0) for _ in range(200)]
    assert all(0 <= x0 <= 512 and 0 <= y0 <= 232 for x0, y0 in uniform)
    assert min(x0 for x0, _ in uniform) < 100 and max(x0 for x0, _ in uniform) > 400
    # a box larger than the tile is centred
    big = np.array([[100, 100, 400, 300, 0]], np.float32)
    assert place_tile(np.random.default_rng(2), big, 640, 360, 128, 1.0) == (186, 136)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flow_tiles")
    return generate_flow_like(root, n_train=6, n_test=2, width=200, height=120, video=False)


def tile_cfg(data: Path, **overrides) -> TrialConfig:
    cfg = TrialConfig(
        size="nano", data=str(data), input_mode="tiles", tile_size=64, img_size=96,
        batch_size=4, workers=0, multiscale=0, mosaic_scale_min=0.5, mosaic_scale_max=1.5,
        seed=5,
    )
    return dataclasses.replace(cfg, **overrides)


def test_tile_samples_are_tile_sized_with_mosaic_mixup_and_plain(data_dir: Path) -> None:
    cfg = tile_cfg(data_dir)
    split = load_dataset(data_dir).train
    source = training_source(split, cfg, progress=False)
    assert isinstance(source, TileImages)
    params = AugmentParams.from_config(cfg)
    assert params.img_size == 64
    for augment in (True, False):
        for k in range(8):
            img, targets = train_sample(source, k % len(source), sample_rng(5, 0, k), params,
                                        augment=augment)
            assert img.shape == (64, 64, 3)
            boxes = targets[np.any(targets != 0, axis=1)]
            assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] <= 64).all()
    # a plain tile (no augmentation, no flip, no HSV) is a crop of the frame, pixel for pixel
    plain = dataclasses.replace(params, hsv_prob=0.0, flip_prob=0.0)
    img, _ = train_sample(source, 0, sample_rng(5, 0, 0), plain, augment=False)
    full = source.frame(0)
    hits = [
        (x, y) for y in range(full.shape[0] - 63) for x in range(full.shape[1] - 63)
        if np.array_equal(full[y : y + 64, x : x + 64], img)
    ]
    assert hits


def _batches(cfg: TrialConfig, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    split = load_dataset(cfg.data).train
    loader = build_train_loader(split, cfg, progress=False)
    loader.set_epoch(epoch)
    return list(loader)


def test_the_same_seed_gives_the_same_tiles_and_another_seed_others(data_dir: Path) -> None:
    cfg = tile_cfg(data_dir)
    a, b = _batches(cfg, 1), _batches(cfg, 1)
    pairs = zip(a, b, strict=True)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in pairs)
    c = _batches(dataclasses.replace(cfg, seed=6), 1)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, c, strict=True))
    cached = _batches(dataclasses.replace(cfg, cache_images=True), 1)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, cached, strict=True))


def test_the_loader_counts_the_boxes_its_crops_cut(data_dir: Path) -> None:
    cfg = tile_cfg(data_dir, tile_min_visible=0.9)
    split = load_dataset(data_dir).train
    loader = build_train_loader(split, cfg, progress=False)
    loader.set_epoch(0)
    for _ in loader:
        pass
    counts = loader.take_cut_counts()
    assert counts["tile_boxes_whole"] > 0
    assert counts["tile_boxes_clipped"] + counts["tile_boxes_dropped"] > 0
    assert loader.take_cut_counts() == dict.fromkeys(counts, 0)  # taken means reset


def test_tile_keys_are_validated_like_every_other() -> None:
    with pytest.raises(ConfigError, match="'input_mode' must be one of 'letterbox', 'tiles'"):
        config_from_dict({"input_mode": "slices"}, source="cfg.yaml")
    with pytest.raises(ConfigError, match="cfg.yaml: key 'tile_size' must be a multiple of 32"):
        config_from_dict({"tile_size": 100}, source="cfg.yaml")
    with pytest.raises(ConfigError, match="'tile_min_visible' must be in"):
        config_from_dict({"tile_min_visible": 0.0}, source="cfg.yaml")
    with pytest.raises(ConfigError, match="'tile_overlap' must be in"):
        config_from_dict({"tile_overlap": 1.0}, source="cfg.yaml")
    cfg = config_from_dict({"input_mode": "tiles", "tile_size": 256, "img_size": 640})
    assert cfg.input_size == 256 and TrialConfig(img_size=640).input_size == 640
