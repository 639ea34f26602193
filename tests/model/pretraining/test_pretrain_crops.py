"""Geometry of the pretraining data: center-loss crops and SSL patch triplets (property tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.pretraining.common import PAD_VALUE, PretrainDataError
from model.pretraining.crops import (
    cut_crop,
    overlaps_any,
    pixel_box,
    plan_crops,
    read_image,
    sample_negative,
    sample_positive,
    split_held_out,
)
from model.pretraining.patches import (
    FAR,
    plan_triplets,
    sample_anchor_positive,
    sample_far_negative,
)

W, H = 320, 200
# Hand-placed COCO boxes (x, y, w, h): tiny, fractional, at each border, one wider than a crop.
BOXES = [
    (10.0, 12.0, 8.0, 6.0),
    (150.4, 90.7, 20.2, 15.9),
    (0.0, 170.0, 30.0, 30.0),
    (300.0, 0.0, 20.0, 25.0),
    (40.0, 120.0, 90.0, 40.0),
]
CROP = 64


def _intersection(crop: tuple[int, int, int], box: tuple[float, ...]) -> float:
    """Overlap area of a crop (x0, y0, side) and a float COCO box, computed independently."""
    x0, y0, s = crop
    bx, by, bw, bh = box
    ix = max(0.0, min(x0 + s, bx + bw) - max(x0, bx))
    iy = max(0.0, min(y0 + s, by + bh) - max(y0, by))
    return ix * iy


@pytest.mark.parametrize("box", BOXES)
def test_positive_crops_always_contain_their_whole_object(box: tuple[float, ...]) -> None:
    rng = np.random.default_rng(0)
    bx, by, bw, bh = box
    for _ in range(2000):
        x0, y0, s = sample_positive(rng, pixel_box(box), W, H, CROP)
        assert x0 <= bx and y0 <= by and x0 + s >= bx + bw and y0 + s >= by + bh
        # Side ~ crop_size x U(0.8, 1.2), or the object's own size when that is larger.
        assert round(0.8 * CROP) <= s <= max(round(1.2 * CROP), int(np.ceil(max(bw, bh))) + 1)
        # Every crop fits inside this image, so none needs padding.
        assert 0 <= x0 and x0 + s <= W and 0 <= y0 and y0 + s <= H


def test_positive_crops_spread_over_positions_around_the_object() -> None:
    rng = np.random.default_rng(1)
    crops = {sample_positive(rng, pixel_box(BOXES[1]), W, H, CROP)[:2] for _ in range(500)}
    assert len(crops) > 100  # not always centred: the object's place in the crop varies


def test_positive_crop_of_an_image_smaller_than_the_crop_reaches_past_the_border() -> None:
    rng = np.random.default_rng(2)
    box = (5.0, 5.0, 10.0, 10.0)
    for _ in range(200):
        x0, y0, s = sample_positive(rng, pixel_box(box), 40, 30, CROP)
        assert x0 <= 5 and y0 <= 5 and x0 + s >= 15 and y0 + s >= 15


def test_negative_crops_never_overlap_any_object() -> None:
    rng = np.random.default_rng(3)
    hulls = [pixel_box(b) for b in BOXES]
    found = 0
    for _ in range(3000):
        crop = sample_negative(rng, hulls, W, H, CROP)
        if crop is None:
            continue
        found += 1
        x0, y0, s = crop
        assert 0 <= x0 and x0 + s <= W and 0 <= y0 and y0 + s <= H
        assert all(_intersection(crop, b) == 0.0 for b in BOXES)
    assert found > 2500  # this image has plenty of background


def test_overlap_counts_a_shared_pixel_but_not_a_shared_edge() -> None:
    box = pixel_box((10.0, 10.0, 5.0, 5.0))  # pixels 10..14
    assert overlaps_any((14, 14, 8), [box])
    assert not overlaps_any((15, 0, 8), [box])  # starts right after the object
    assert not overlaps_any((2, 2, 8), [box])  # ends at pixel 9


def test_no_negative_when_objects_cover_the_image() -> None:
    rng = np.random.default_rng(4)
    assert sample_negative(rng, [(0, 0, W, H)], W, H, CROP) is None


def _images(n: int) -> list[dict]:
    return [{"id": i, "file_name": f"/x/{i}.jpg", "width": W, "height": H} for i in range(n)]


def test_plan_crops_gives_one_positive_per_object_and_as_many_negatives() -> None:
    anns = [
        {"id": k, "image_id": k % 3, "category_id": 1, "bbox": list(b)}
        for k, b in enumerate(BOXES)
    ]
    specs = plan_crops(_images(3), anns, CROP, np.random.default_rng(5), "toy")
    labels = [s.label for s in specs]
    assert labels.count(1) == len(BOXES) and labels.count(0) == len(BOXES)


def test_zero_boxes_is_an_error_naming_the_dataset() -> None:
    with pytest.raises(PretrainDataError, match=r"no objects to crop.*/data/empty.*0 boxes"):
        plan_crops(_images(4), [], CROP, np.random.default_rng(0), "/data/empty")


def test_no_background_anywhere_is_an_error() -> None:
    anns = [{"id": 0, "image_id": 0, "category_id": 1, "bbox": [0, 0, W, H]}]
    with pytest.raises(PretrainDataError, match=r"no background crops.*lower crop_size"):
        plan_crops(_images(1), anns, CROP, np.random.default_rng(0), "toy")


def test_cut_crop_copies_pixels_and_pads_past_the_border() -> None:
    image = np.arange(20 * 30 * 3, dtype=np.uint32).reshape(20, 30, 3).astype(np.uint8)
    inside = cut_crop(image, (5, 4, 8), 8)
    np.testing.assert_array_equal(inside, image[4:12, 5:13])
    edge = cut_crop(image, (-2, 15, 8), 8)  # 2 columns left of the image, 3 rows below it
    assert (edge[:, :2] == PAD_VALUE).all() and (edge[5:] == PAD_VALUE).all()
    np.testing.assert_array_equal(edge[:5, 2:], image[15:20, 0:6])
    assert cut_crop(image, (0, 0, 16), 32).shape == (32, 32, 3)  # resized to crop_size


def test_held_out_split_is_stratified_disjoint_and_seeded() -> None:
    labels = np.array([1] * 50 + [0] * 30)
    train, held = split_held_out(labels, 0.2, seed=0)
    assert set(train).isdisjoint(held) and len(train) + len(held) == 80
    assert (labels[held] == 1).sum() == 10 and (labels[held] == 0).sum() == 6
    again = split_held_out(labels, 0.2, seed=0)[1]
    np.testing.assert_array_equal(held, again)
    assert not np.array_equal(held, split_held_out(labels, 0.2, seed=1)[1])


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(PretrainDataError, match="broken.jpg"):
        read_image(bad)


# --- SSL patches -----------------------------------------------------------------------------

P = 32


def test_positive_patches_share_a_whole_edge_with_the_anchor() -> None:
    rng = np.random.default_rng(6)
    directions = set()
    for _ in range(2000):
        (ax, ay), (px, py) = sample_anchor_positive(rng, 200, 150, P)
        dx, dy = px - ax, py - ay
        # Adjacent: offset by exactly one patch along one axis, aligned on the other.
        assert (abs(dx), abs(dy)) in ((P, 0), (0, P))
        directions.add((np.sign(dx), np.sign(dy)))
        for x, y in ((ax, ay), (px, py)):
            assert 0 <= x <= 200 - P and 0 <= y <= 150 - P
    assert directions == {(0, -1), (0, 1), (-1, 0), (1, 0)}  # up, down, left, right all occur


def test_far_negatives_are_at_least_three_patches_away() -> None:
    rng = np.random.default_rng(7)
    for _ in range(2000):
        anchor, _ = sample_anchor_positive(rng, 320, 200, P)
        neg = sample_far_negative(rng, anchor, 320, 200, P)
        assert neg is not None
        assert max(abs(neg[0] - anchor[0]), abs(neg[1] - anchor[1])) >= FAR * P
        assert 0 <= neg[0] <= 320 - P and 0 <= neg[1] <= 200 - P


def test_a_three_by_three_frame_has_no_far_patch() -> None:
    rng = np.random.default_rng(8)
    anchor, _ = sample_anchor_positive(rng, 3 * P, 3 * P, P)
    assert anchor == (P, P)  # the only place whose four neighbours fit
    assert sample_far_negative(rng, anchor, 3 * P, 3 * P, P) is None


def test_triplets_take_negatives_far_in_frame_or_from_another_frame() -> None:
    rng = np.random.default_rng(9)
    sizes = [(3 * P, 3 * P), (320, 200), (200, 320)]
    triplets = plan_triplets(rng, sizes, [0, 1, 2], 50, P)
    assert len(triplets) == 150
    crossed = 0
    for t in triplets:
        if t.neg_frame == t.frame:
            assert max(abs(t.negative[0] - t.anchor[0]), abs(t.negative[1] - t.anchor[1])) >= 3 * P
        else:
            crossed += 1
        w, h = sizes[t.neg_frame]
        assert 0 <= t.negative[0] <= w - P and 0 <= t.negative[1] <= h - P
    assert 0 < crossed < 150
    # The 3x3 frame has no far patch: its negatives always come from another frame.
    assert all(t.neg_frame != 0 for t in triplets if t.frame == 0)


def test_a_lone_frame_without_far_patches_is_an_error() -> None:
    with pytest.raises(ValueError, match="no other frame"):
        plan_triplets(np.random.default_rng(0), [(3 * P, 3 * P)], [0], 1, P)
