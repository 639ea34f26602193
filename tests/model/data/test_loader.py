"""Training and evaluation loaders: shapes, epochs, determinism across workers, ratios."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.config import TrialConfig
from model.data.loader import (
    EpochBatchSampler,
    SplitImages,
    build_eval_loader,
    build_train_loader,
    epoch_order,
    random_input_size,
    read_image,
    rescale_batch,
    split_labels,
    subset_indices,
)

try:  # the real representation once model/data/dataset.py lands
    from model.data.dataset import DetectionSplit
except ImportError:  # pragma: no cover - stand-in with the same fields

    @dataclass
    class DetectionSplit:  # type: ignore[no-redef]
        name: str
        images: list[dict]
        annotations: list[dict]
        categories: list[dict] = field(default_factory=list)


N_IMAGES, W, H = 10, 160, 90
BOXES = [(12 + 9 * i, 10 + 3 * i, 20 + 2 * i, 14 + i) for i in range(N_IMAGES)]  # COCO x, y, w, h


def make_split(root: Path) -> DetectionSplit:
    images, anns = [], []
    for i, (x, y, w, h) in enumerate(BOXES):
        img = np.full((H, W, 3), 100, np.uint8)
        img[y : y + h, x : x + w] = 255
        path = root / f"im{i}.png"
        cv2.imwrite(str(path), img)
        images.append({"id": 100 + i, "file_name": str(path), "width": W, "height": H})
        anns.append(
            {
                "id": i + 1,
                "image_id": 100 + i,
                "category_id": 1,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
        )
    return DetectionSplit("train", images, anns, [{"id": 1, "name": "bottle"}])


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> DetectionSplit:
    return make_split(tmp_path_factory.mktemp("loader"))


def small_cfg(**kw) -> TrialConfig:
    base = dict(img_size=96, batch_size=4, workers=0, max_labels=16, seed=5)
    return TrialConfig(**{**base, **kw})


def collect(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(im.clone(), t.clone()) for im, t in loader]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for (ia, ta), (ib, tb) in zip(a, b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ta, tb)


def test_split_labels_clip_and_shift_classes():
    split = DetectionSplit(
        "s",
        [{"id": 1, "file_name": "x", "width": 100, "height": 50}],
        [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [-5, 10, 20, 60]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 10, 5, 5]},  # outside: dropped
        ],
        [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    )
    np.testing.assert_array_equal(split_labels(split)[1], [[0, 10, 15, 50, 1]])


def test_subset_is_fixed_sorted_and_independent_of_the_trial_seed(split):
    """``max_train_images: n`` trains on the first n images of one permutation drawn with the
    fixed SUBSET_SEED 0 (numpy's ``default_rng``), in split order: the same images for every
    trial seed and whatever the global RNG state; a larger cap adds images, never swaps them."""
    a = subset_indices(50, 7)
    np.testing.assert_array_equal(a, np.sort(np.random.default_rng(0).permutation(50)[:7]))
    assert len(a) == 7 and (np.diff(a) > 0).all()
    assert not np.array_equal(a, np.arange(7))  # drawn, not the first 7
    assert set(subset_indices(50, 3)) < set(a) < set(subset_indices(50, 20))
    state = np.random.get_state()
    try:
        np.random.seed(1)
        torch.manual_seed(1)
        first = subset_indices(50, 7)
        np.random.seed(2)
        torch.manual_seed(2)
        np.testing.assert_array_equal(subset_indices(50, 7), first)
    finally:
        np.random.set_state(state)
    np.testing.assert_array_equal(first, a)
    # 0 (no cap) and caps >= the split size keep every image, in order
    for cap in (0, 5, 9):
        np.testing.assert_array_equal(subset_indices(5, cap), np.arange(5))
    # through the loader: two trial seeds train on the same 4 of the 10 images
    ids = [
        build_train_loader(split, small_cfg(max_train_images=4, seed=s), progress=False)
        .dataset.source.image_ids
        for s in (1, 2)
    ]
    assert ids[0] == ids[1] == [100 + int(i) for i in subset_indices(N_IMAGES, 4)]
    assert len(set(ids[0])) == 4


def test_source_resizes_to_fit_and_caches_the_same_pixels(split):
    plain, cached = SplitImages(split, 96), SplitImages(split, 96, cache=True, progress=False)
    img, lab = plain.load(3)
    x, y, w, h = BOXES[3]
    assert img.shape == (54, 96, 3)  # 90 x 160 times 0.6
    np.testing.assert_allclose(
        lab, [[x * 0.6, y * 0.6, (x + w) * 0.6, (y + h) * 0.6, 0]], rtol=1e-6
    )
    c_img, c_lab = cached.load(3)
    np.testing.assert_array_equal(img, c_img)
    np.testing.assert_array_equal(lab, c_lab)


def test_train_batches_shapes_and_epoch_length(split):
    cfg = small_cfg()
    loader = build_train_loader(split, cfg, progress=False)
    assert len(loader) == math.ceil(N_IMAGES / 4) == 3
    batches = collect(loader)
    assert len(batches) == 3
    for images, targets in batches:
        assert images.shape == (4, 3, 96, 96) and images.dtype == torch.float32
        assert targets.shape == (4, 16, 5) and targets.dtype == torch.float32
        assert 0 <= images.min() and images.max() <= 255
    keys = [k for b in loader.sampler for k in b]
    assert {k[2] for k in keys} == set(range(N_IMAGES))  # every image at least once
    assert [k[1] for k in keys] == list(range(12))


def test_set_epoch_is_deterministic_and_changes_the_epoch(split):
    cfg = small_cfg()
    a, b = (
        build_train_loader(split, cfg, progress=False),
        build_train_loader(split, cfg, progress=False),
    )
    e0 = collect(a)
    assert_same_batches(e0, collect(b))
    order0 = [k[2] for batch in a.sampler for k in batch]
    a.set_epoch(1)
    e1 = collect(a)
    assert [k[2] for batch in a.sampler for k in batch] != order0
    assert not torch.equal(e0[0][0], e1[0][0])
    a.set_epoch(0)
    assert_same_batches(e0, collect(a))
    other_seed = build_train_loader(split, small_cfg(seed=6), progress=False)
    assert not torch.equal(e0[0][0], collect(other_seed)[0][0])


def test_shuffle_and_augmentation_both_follow_the_epoch(split):
    orders = [epoch_order(50, 50, seed=5, epoch=e) for e in (0, 1)]
    assert all(sorted(o) == list(range(50)) for o in orders)
    assert not np.array_equal(*orders)
    np.testing.assert_array_equal(orders[0], epoch_order(50, 50, seed=5, epoch=0))
    dataset = build_train_loader(split, small_cfg(), progress=False).dataset
    same_image_and_slot = [dataset[(e, 3, 2, True)] for e in (0, 0, 1)]
    np.testing.assert_array_equal(same_image_and_slot[0][0], same_image_and_slot[1][0])
    assert not np.array_equal(same_image_and_slot[0][0], same_image_and_slot[2][0])


def test_batches_do_not_depend_on_worker_count_or_cache(split):
    reference = collect(build_train_loader(split, small_cfg(), progress=False))
    loader = build_train_loader(split, small_cfg(workers=2), progress=False)
    assert_same_batches(reference, collect(loader))
    loader.set_epoch(1)  # persistent workers see the new epoch
    epoch1 = collect(loader)
    ref = build_train_loader(split, small_cfg(cache_images=True), progress=False)
    assert_same_batches(reference, collect(ref))
    ref.set_epoch(1)
    assert_same_batches(epoch1, collect(ref))


def test_sampler_wraps_around_so_every_batch_is_full():
    sampler = EpochBatchSampler(n=3, batch_size=4, seed=0)
    (batch,) = list(sampler)
    assert len(sampler) == 1 and len(batch) == 4
    assert {k[2] for k in batch} == {0, 1, 2} and batch[3][2] == batch[0][2]
    assert [k[1] for k in batch] == [0, 1, 2, 3]  # the repeat gets its own draws
    sampler.epoch = 1
    assert [k[0] for k in next(iter(sampler))] == [1] * 4


def test_close_mosaic_gives_single_letterboxed_images(split):
    cfg = small_cfg(hsv_prob=0.0, flip_prob=0.0, batch_size=10)
    loader = build_train_loader(split, cfg, progress=False)
    loader.close_mosaic()
    assert not loader.augment
    ((images, targets),) = collect(loader)
    keys = next(iter(loader.sampler))
    for row, key in enumerate(keys):
        x, y, w, h = BOXES[key[2]]
        r = 96 / W
        np.testing.assert_allclose(
            targets[row, 0].numpy(), [0, (x + w / 2) * r, (y + h / 2) * r, w * r, h * r], rtol=1e-5
        )
        assert not targets[row, 1:].any()
        assert (images[row, :, 60:] == 114).all()  # below the 54 px high image: padding


def test_max_train_images_caps_the_epoch(split):
    loader = build_train_loader(split, small_cfg(max_train_images=3, batch_size=2), progress=False)
    assert len(loader.dataset) == 3 and len(loader) == 2


def test_rescale_batch_scales_box_columns_only():
    images = torch.zeros(2, 3, 64, 64)
    images[:, :, 16:48, 8:24] = 255
    targets = torch.zeros(2, 4, 5)
    targets[:, 0] = torch.tensor([1.0, 16, 32, 16, 32])
    small, t = rescale_batch(images, targets, 32)
    assert small.shape == (2, 3, 32, 32)
    torch.testing.assert_close(t[:, 0], torch.tensor([[1.0, 8, 16, 8, 16]] * 2))
    assert not t[:, 1:].any()
    assert (small[:, :, 9:23, 5:11] == 255).all() and (small[:, :, :, 13:] == 0).all()
    same = rescale_batch(images, targets, 64)
    assert same[0] is images and same[1] is targets


def test_random_input_size_range():
    rng = np.random.default_rng(0)
    sizes = {random_input_size(TrialConfig(img_size=640, multiscale=5), rng) for _ in range(300)}
    assert sizes == {32 * k for k in range(15, 26)}  # 480..800, both ends included
    assert random_input_size(TrialConfig(img_size=640, multiscale=0), rng) == 640
    assert (
        min(random_input_size(TrialConfig(img_size=64, multiscale=5), rng) for _ in range(50)) == 32
    )


def test_eval_loader_ratio_maps_input_boxes_back_to_original_pixels(split):
    loader = build_eval_loader(split, 128, batch_size=4)
    assert len(loader) == 3
    seen = []
    for images, ids, ratios in loader:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 128, 128)
        for img, image_id, r in zip(images, ids, ratios, strict=True):
            assert r == pytest.approx(min(128 / H, 128 / W))
            ys, xs = torch.nonzero(img[0] > 200, as_tuple=True)
            found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / r
            x, y, w, h = BOXES[image_id - 100]
            np.testing.assert_allclose(found, [x, y, x + w, y + h], atol=1 / r)
            assert (img[:, 72:] == 114).all()  # 90 * 0.8 = 72 rows of image
            seen.append(image_id)
    assert seen == [100 + i for i in range(N_IMAGES)]


def test_eval_loader_with_workers_matches_in_process(split):
    one = [(im, ids) for im, ids, _ in build_eval_loader(split, 64, batch_size=3)]
    two = [(im, ids) for im, ids, _ in build_eval_loader(split, 64, batch_size=3, workers=2)]
    assert [ids for _, ids in one] == [ids for _, ids in two]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(one, two, strict=True))


def test_missing_image_error_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        read_image(str(tmp_path / "nope.jpg"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_loaders_prefetch_the_same_batches(split):
    cpu = collect(build_train_loader(split, small_cfg(workers=1), progress=False))
    gpu = build_train_loader(split, small_cfg(workers=1), device="cuda", progress=False)
    assert gpu._loader.pin_memory
    batches = [(im.cpu(), t.cpu()) for im, t in gpu if im.is_cuda and im.dtype == torch.float32]
    assert_same_batches(cpu, batches)
    ev = build_eval_loader(split, 64, batch_size=3, device="cuda")
    assert all(im.is_cuda and im.dtype == torch.float32 for im, _, _ in ev)
