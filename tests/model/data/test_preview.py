"""The augmentation preview draws each sample's boxes where its targets say."""

from __future__ import annotations

import sys
import types
from dataclasses import replace

import cv2
import numpy as np
import pytest

from model.config import TrialConfig
from model.data.augment import AugmentParams, sample_rng, train_sample
from model.data.loader import SplitImages, epoch_order
from model.data.preview import class_colour, draw_targets, render_grid, render_preview
from tests.model.data.test_loader import BOXES, W, make_split


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    return make_split(tmp_path_factory.mktemp("preview"))


def edge_pixels(tile: np.ndarray, cx: float, cy: float, w: float, h: float) -> np.ndarray:
    """The pixels of the bottom and right edges of a drawn box (the label text sits on top)."""
    x1, y1, x2, y2 = round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2)
    return np.concatenate([tile[y2, x1 : x2 + 1], tile[y1 + 1 : y2 + 1, x2]])


def test_draw_targets_outlines_each_box_in_its_class_colour():
    img = np.full((64, 64, 3), 100, np.uint8)
    targets = np.zeros((4, 5), np.float32)
    targets[0] = [0, 20, 30, 10, 8]
    targets[1] = [1, 45, 45, 12, 12]
    out = draw_targets(img, targets, ["bottle", "can"])
    assert (edge_pixels(out, *targets[0, 1:]) == class_colour(0)).all()
    assert (edge_pixels(out, *targets[1, 1:]) == class_colour(1)).all()
    assert (out[31, 20] == 100).all()  # inside stays untouched
    assert (img == 100).all()  # input not modified


def test_grid_without_augmentation_shows_letterboxed_boxes(split):
    cfg = TrialConfig(img_size=96, mosaic_prob=0.0, hsv_prob=0.0, flip_prob=0.0)
    grid = render_grid(split, cfg, n=5, seed=1)
    assert grid.shape == (2 * 96, 3 * 96, 3)
    order = epoch_order(len(split.images), 5, 1, 0)
    r = 96 / W
    for k in range(5):
        row, col = divmod(k, 3)
        tile = grid[row * 96 : (row + 1) * 96, col * 96 : (col + 1) * 96]
        x, y, w, h = (v * r for v in BOXES[int(order[k])])
        assert (edge_pixels(tile, x + w / 2, y + h / 2, w, h) == class_colour(0)).all()
        assert (tile[70:] == 114).all()  # letterbox padding below the 54 px image
    assert (grid[96:, 2 * 96 :] == 0).all()  # the sixth cell is empty


def test_grid_with_full_augmentation_draws_the_loader_targets(split):
    cfg = TrialConfig(img_size=96, seed=0)
    grid = render_grid(split, cfg, n=4, seed=3)
    source, params = SplitImages(split, 96, progress=False), AugmentParams.from_config(cfg)
    order = epoch_order(len(split.images), 4, 3, 0)
    drawn = 0
    for k in range(4):
        _, targets = train_sample(source, int(order[k]), sample_rng(3, 0, k), params)
        row, col = divmod(k, 2)
        tile = grid[row * 96 : (row + 1) * 96, col * 96 : (col + 1) * 96]
        for t in targets[targets[:, 3] > 0]:
            x2, y2 = round(t[1] + t[3] / 2), round(t[2] + t[4] / 2)
            if x2 < 96 and y2 < 96:
                assert (edge_pixels(tile, *t[1:]) == class_colour(0)).all()
                drawn += 1
    assert drawn >= 4


def test_render_preview_writes_a_png(split, tmp_path, monkeypatch):
    class FakeDataset:
        train = split

    # render_preview imports load_dataset when called: a stand-in module serves it here.
    fake = types.ModuleType("model.data.dataset")
    fake.load_dataset = lambda src: FakeDataset()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "model.data.dataset", fake)
    out = render_preview(
        "ignored",
        tmp_path / "sub" / "p.png",
        n=2,
        img_size=64,
        cfg=replace(TrialConfig(), mosaic_prob=0.0),
    )
    img = cv2.imread(str(out))
    assert img.shape == (64, 2 * 64, 3)


def test_tile_preview_shows_native_resolution_crops(split) -> None:
    cfg = replace(TrialConfig(), input_mode="tiles", tile_size=64, img_size=640, mosaic_prob=0.0,
                  hsv_prob=0.0, flip_prob=0.0)
    grid = render_grid(split, cfg, n=2, seed=0)
    assert grid.shape == (64, 128, 3)  # cells are tile_size, not img_size
