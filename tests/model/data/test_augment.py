"""Boxes stay on their pixels through every training transform (hand-placed rectangles)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from model.config import TrialConfig
from model.data.augment import (
    AugmentParams,
    finish_sample,
    sample_rng,
    train_sample,
)
from model.data.mosaic import compose_mosaic, mixup, mosaic_placement, random_mixup
from model.data.transforms import (
    affine_matrix,
    apply_hsv,
    box_candidates,
    centre_affine,
    filter_small_boxes,
    hflip,
    hsv_gains,
    letterbox,
    random_affine_matrix,
    to_targets,
    warp_affine,
)

GREY, WHITE = 100, 255


def rect_image(h: int, w: int, box: tuple[int, int, int, int], colour: int = WHITE) -> np.ndarray:
    """A grey ``h`` x ``w`` BGR image with a filled rectangle at integer ``x1, y1, x2, y2``."""
    img = np.full((h, w, 3), GREY, np.uint8)
    x1, y1, x2, y2 = box
    img[y1:y2, x1:x2] = colour
    return img


def labels(*rows: tuple[float, ...]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(-1, 5)


def inside(img: np.ndarray, box, margin: int = 1) -> np.ndarray:
    """The pixels strictly inside ``box`` (x1, y1, x2, y2), shrunk by ``margin``."""
    x1, y1, x2, y2 = (int(round(v)) for v in box[:4])
    return img[y1 + margin : y2 - margin, x1 + margin : x2 - margin]


def ring(img: np.ndarray, box, gap: int = 2) -> np.ndarray:
    """Pixels just outside ``box``: a one-pixel frame ``gap`` px away from its edges."""
    x1, y1, x2, y2 = (int(round(v)) for v in box[:4])
    top, bottom = img[y1 - gap - 1, x1:x2], img[y2 + gap, x1:x2]
    left, right = img[y1:y2, x1 - gap - 1], img[y1:y2, x2 + gap]
    return np.concatenate([top, bottom, left, right])


def assert_box_on_rect(img: np.ndarray, box, colour: int = WHITE) -> None:
    assert inside(img, box).size > 0
    assert (inside(img, box) == colour).all()
    assert (ring(img, box) != colour).all()


# --- letterbox, flip, HSV ---------------------------------------------------------------------


def test_letterbox_scales_boxes_by_ratio_and_pads_bottom_right():
    img = rect_image(100, 200, (50, 20, 100, 60))
    out, r = letterbox(img, 128)
    assert r == pytest.approx(0.64)
    assert out.shape == (128, 128, 3)
    assert (out[64:] == 114).all()  # 100 * 0.64 = 64 rows of image, the rest padding
    box = np.array([50, 20, 100, 60]) * r  # [32, 12.8, 64, 38.4]
    assert_box_on_rect(out, box)


def test_hflip_mirrors_boxes_and_round_trips():
    img = rect_image(60, 100, (10, 20, 30, 40))
    lab = labels((10, 20, 30, 40, 0))
    out, flipped = hflip(img, lab)
    np.testing.assert_array_equal(flipped, labels((70, 20, 90, 40, 0)))
    assert_box_on_rect(np.ascontiguousarray(out), flipped[0])
    back_img, back = hflip(out, flipped)
    np.testing.assert_array_equal(back, lab)
    np.testing.assert_array_equal(back_img, img)


def official_hsv(img: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """The official int16 arithmetic of ``augment_hsv``, written out to check our LUT against."""
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + gains[0]) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] + gains[1], 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] + gains[2], 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)


@pytest.mark.parametrize("gains", [(5, 30, 30), (-5, -30, -30), (3, 0, -17), (0, 0, 0)])
def test_hsv_lut_matches_official_arithmetic(gains):
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    g = np.array(gains, np.int16)
    np.testing.assert_array_equal(apply_hsv(img, g), official_hsv(img, g))


def test_hsv_value_shift_on_grey_and_gain_ranges():
    grey = np.full((4, 4, 3), 100, np.uint8)
    assert (apply_hsv(grey, np.array([4, 0, 20], np.int16)) == 120).all()  # no hue when s = 0
    assert (apply_hsv(grey + 155, np.array([0, 0, 20], np.int16)) == 255).all()  # clipped
    draws = np.stack([hsv_gains(np.random.default_rng(s)) for s in range(200)])
    assert draws.dtype == np.int16
    assert (np.abs(draws) <= [5, 30, 30]).all()
    assert (draws == 0).any(0).all() and (draws != 0).any(0).all()  # each channel on and off


def test_finish_sample_hsv_leaves_boxes_untouched():
    img = rect_image(64, 64, (8, 16, 40, 30))
    lab = labels((8, 16, 40, 30, 0))
    p = AugmentParams(img_size=64, hsv_prob=1.0, flip_prob=0.0)
    for seed in range(5):
        out, targets = finish_sample(img, lab, np.random.default_rng(seed), p)
        np.testing.assert_array_equal(targets[0], [0, 24, 23, 32, 14])
        assert not targets[1:].any()


# --- affine ---------------------------------------------------------------------------------


def test_affine_pure_translation():
    img = rect_image(100, 100, (20, 30, 40, 50))
    m = affine_matrix(100, translate_x=0.1, translate_y=0.2)
    out, lab = warp_affine(img, labels((20, 30, 40, 50, 0)), m, 100)
    np.testing.assert_allclose(lab, labels((30, 50, 50, 70, 0)))
    assert_box_on_rect(out, lab[0])
    assert (out[:20, :] == 114).all() and (out[:, :10] == 114).all()  # uncovered border


def test_affine_pure_scale_about_top_left_corner():
    img = rect_image(100, 100, (20, 30, 60, 70))
    out, lab = warp_affine(img, labels((20, 30, 60, 70, 0)), affine_matrix(100, scale=0.5), 100)
    np.testing.assert_allclose(lab, labels((10, 15, 30, 35, 0)))
    assert_box_on_rect(out, lab[0])
    assert (out[51:, :] == 114).all()  # the 100 px image now covers 50 px


def test_affine_rotation_90_degrees():
    # Rotation about the origin: (x, y) -> (y, -x); a translation of one size brings it back.
    img = rect_image(100, 100, (10, 20, 30, 60))
    m = affine_matrix(100, angle=90.0, translate_y=1.0)
    out, lab = warp_affine(img, labels((10, 20, 30, 60, 0)), m, 100)
    np.testing.assert_allclose(lab, labels((20, 70, 60, 90, 0)), atol=1e-9)
    assert_box_on_rect(out, lab[0])


def test_affine_shear_uses_corner_bounds():
    m = affine_matrix(100, shear_x=45.0)  # y' = y + x
    _, lab = warp_affine(np.zeros((100, 100, 3), np.uint8), labels((10, 10, 20, 20, 0)), m, 100)
    np.testing.assert_allclose(lab, labels((10, 20, 20, 40, 0)), atol=1e-9)


def test_centre_affine_scales_about_the_canvas_centre():
    # 200 px canvas, 100 px output, scale 2: canvas (100, 100) -> output (50, 50), so the box
    # (90, 95)-(110, 105) around the centre becomes (30, 40)-(70, 60); a translation of 0.1
    # of the output adds 10 px on top.
    img = rect_image(200, 200, (90, 95, 110, 105))
    m = centre_affine(affine_matrix(100, scale=2.0), 200, 100)
    out, lab = warp_affine(img, labels((90, 95, 110, 105, 0)), m, 100)
    np.testing.assert_allclose(lab, labels((30, 40, 70, 60, 0)))
    assert_box_on_rect(out, lab[0])
    moved = centre_affine(affine_matrix(100, scale=2.0, translate_x=0.1), 200, 100)
    _, lab = warp_affine(img, labels((90, 95, 110, 105, 0)), moved, 100)
    np.testing.assert_allclose(lab, labels((40, 40, 80, 60, 0)))


def test_centre_affine_rotates_about_the_canvas_centre():
    # 90 degrees about (50, 50) of a 100 px canvas onto a 100 px output: (x, y) -> (y, 100 - x).
    img = rect_image(100, 100, (10, 20, 30, 60))
    m = centre_affine(affine_matrix(100, angle=90.0), 100, 100)
    out, lab = warp_affine(img, labels((10, 20, 30, 60, 0)), m, 100)
    np.testing.assert_allclose(lab, labels((20, 70, 60, 90, 0)), atol=1e-9)
    assert_box_on_rect(out, lab[0])


def test_affine_clips_and_keeps_rows_for_the_final_filter():
    lab = labels((50, 50, 90, 60, 0), (95, 10, 99, 20, 0))
    _, out = warp_affine(
        np.zeros((100, 100, 3), np.uint8), lab, affine_matrix(100, translate_x=0.2), 100
    )
    np.testing.assert_allclose(out, labels((70, 50, 100, 60, 0), (100, 10, 100, 20, 0)))
    assert len(filter_small_boxes(out)) == 1


def test_random_affine_stays_in_configured_ranges():
    for s in range(50):
        m = random_affine_matrix(
            np.random.default_rng(s),
            100,
            degrees=0.0,
            translate=0.1,
            scale_range=(0.5, 1.5),
            shear=0.0,
        )
        assert m[0, 1] == 0 and m[1, 0] == 0 and m[0, 0] == m[1, 1]
        assert 0.5 <= m[0, 0] <= 1.5
        assert abs(m[0, 2]) <= 10 and abs(m[1, 2]) <= 10


# --- filtering and targets -------------------------------------------------------------------


def test_filter_small_boxes_needs_both_sides_over_one_pixel():
    lab = labels((0, 0, 1, 10, 0), (0, 0, 1.5, 10, 0), (0, 0, 10, 1, 0), (5, 5, 5, 9, 0))
    np.testing.assert_array_equal(filter_small_boxes(lab), lab[1:2])


def test_box_candidates_official_rule():
    before = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 100, 1]], float)
    after = np.array([[0, 0, 10, 10], [0, 0, 4, 10], [0, 0, 10, 1.5], [0, 0, 100, 3]], float)
    np.testing.assert_array_equal(box_candidates(before, after, wh_thr=2), [1, 1, 0, 0])


def test_to_targets_converts_to_centres_and_pads():
    t = to_targets(labels((10, 20, 30, 60, 2), (0, 0, 4, 4, 0)), max_labels=3)
    np.testing.assert_array_equal(t, [[2, 20, 40, 20, 40], [0, 2, 2, 4, 4], [0, 0, 0, 0, 0]])
    many = labels(*[(i, i, i + 5, i + 5, 0) for i in range(10)])
    assert to_targets(many, max_labels=4).shape == (4, 5)
    assert to_targets(many, max_labels=4)[3, 1] == 5.5  # the first 4 rows are kept


# --- mosaic ---------------------------------------------------------------------------------


def test_mosaic_placement_hand_values():
    # size 100 (canvas 200), centre (120, 80), tiles 100 wide and 50 high
    assert mosaic_placement(0, 120, 80, 100, 50, 100) == ((20, 30, 120, 80), (0, 0, 100, 50))
    assert mosaic_placement(1, 120, 80, 100, 50, 100) == ((120, 30, 200, 80), (0, 0, 80, 50))
    assert mosaic_placement(2, 120, 80, 100, 50, 100) == ((20, 80, 120, 130), (0, 0, 100, 50))
    assert mosaic_placement(3, 120, 80, 100, 50, 100) == ((120, 80, 200, 130), (0, 0, 80, 50))
    # a tile bigger than the space left is cut on its outer side
    assert mosaic_placement(0, 60, 40, 100, 50, 100) == ((0, 0, 60, 40), (40, 10, 100, 50))


def test_mosaic_boxes_land_on_their_quadrants_pixels():
    colours = [200, 150, 250, 50]
    tiles = [
        (rect_image(50, 100, (10, 10, 30, 20), c), labels((10, 10, 30, 20, q)))
        for q, c in enumerate(colours)
    ]
    tiles[3] = (tiles[3][0], labels((10, 10, 30, 20, 3), (90, 10, 100, 20, 3)))
    canvas, lab = compose_mosaic(tiles, xc=120, yc=80, size=100)
    assert canvas.shape == (200, 200, 3)
    expected = labels(
        (30, 40, 50, 50, 0),
        (130, 40, 150, 50, 1),
        (30, 90, 50, 100, 2),
        (130, 90, 150, 100, 3),
        (200, 90, 200, 100, 3),  # cut off by the canvas edge: zero width, dropped later
    )
    np.testing.assert_array_equal(lab, expected)
    for row, c in zip(lab[:4], colours, strict=True):
        assert_box_on_rect(canvas, row, colour=c)
    assert (canvas[:30] == 114).all()  # above the top tiles


def test_mosaic_cut_tiles_keep_boxes_on_their_pixels():
    # centre (60, 40): the top-left tile loses its left 40 and top 10 px
    tile = rect_image(50, 100, (50, 20, 70, 30), 200)
    tiles = [(tile, labels((50, 20, 70, 30, 0)))] + [(tile, labels())] * 3
    canvas, lab = compose_mosaic(tiles, xc=60, yc=40, size=100)
    np.testing.assert_array_equal(lab, labels((10, 10, 30, 20, 0)))
    assert_box_on_rect(canvas, lab[0], colour=200)


def test_mosaic_resizes_tiles_to_fit():
    big = rect_image(100, 200, (20, 40, 60, 80))  # fits 100 with r = 0.5
    tiles = [(big, labels((20, 40, 60, 80, 0)))] * 4
    canvas, lab = compose_mosaic(tiles, xc=100, yc=100, size=100)
    np.testing.assert_allclose(lab[0], [10, 70, 30, 90, 0])  # 0.5 * box + (0, 50)
    assert_box_on_rect(canvas, lab[0])


# --- mixup ----------------------------------------------------------------------------------


def test_mixup_blends_half_and_half_and_adds_the_other_boxes():
    base = rect_image(64, 64, (40, 40, 50, 50), colour=200)
    base_lab = labels((40, 40, 50, 50, 0))
    other = rect_image(64, 64, (8, 10, 24, 30))
    out, lab = mixup(
        base,
        base_lab,
        other,
        labels((8, 10, 24, 30, 1)),
        jitter=1.0,
        flip=False,
        x_offset=0,
        y_offset=0,
    )
    np.testing.assert_array_equal(lab, labels((40, 40, 50, 50, 0), (8, 10, 24, 30, 1)))
    assert (inside(out, lab[1], 0) == (GREY + WHITE) // 2).all()
    assert (inside(out, lab[0], 0) == (200 + GREY) // 2).all()
    assert (out[0, 0] == GREY).all()


def test_mixup_jitter_flip_and_crop_move_the_box_with_its_pixels():
    base = np.full((50, 50, 3), 0, np.uint8)
    other = rect_image(50, 50, (10, 10, 20, 20))
    # jitter 2: the box goes to [20, 40]; mirrored on the 100 px canvas: [60, 80]; crop at (40, 5)
    out, lab = mixup(
        base,
        labels(),
        other,
        labels((10, 10, 20, 20, 0)),
        jitter=2.0,
        flip=True,
        x_offset=40,
        y_offset=5,
    )
    np.testing.assert_allclose(lab, labels((20, 15, 40, 35, 0)))
    assert (inside(out, lab[0]) == WHITE // 2).all()
    assert (ring(out, lab[0]) == GREY // 2).all()


def test_mixup_without_surviving_boxes_returns_base_unchanged():
    base = np.full((64, 64, 3), 7, np.uint8)
    other = rect_image(64, 64, (0, 0, 8, 8))
    # jitter 0.5 shrinks the 8 px box to 4 px: under the 5 px minimum of the official mixup
    out, lab = mixup(
        base,
        labels((1, 1, 9, 9, 0)),
        other,
        labels((0, 0, 8, 8, 0)),
        jitter=0.5,
        flip=False,
        x_offset=0,
        y_offset=0,
    )
    assert out is base and len(lab) == 1


def test_random_mixup_offsets_stay_inside_the_canvas():
    base = np.zeros((32, 32, 3), np.uint8)
    other = rect_image(32, 32, (4, 4, 28, 28))
    for s in range(30):
        out, lab = random_mixup(
            np.random.default_rng(s), base, labels(), other, labels((4, 4, 28, 28, 0)), (0.5, 1.5)
        )
        assert out.shape == base.shape
        assert (lab[:, :4] >= 0).all() and (lab[:, :4] <= 32).all()


# --- the whole pipeline ---------------------------------------------------------------------


class ListSource:
    """A stand-in image source: fixed images and labels, all already fitting ``size``."""

    def __init__(self, images: list[np.ndarray], labs: list[np.ndarray]) -> None:
        self.images, self.labs = images, labs

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> np.ndarray:
        return np.array([i for i, lab in enumerate(self.labs) if len(lab)], np.int64)

    def load(self, index: int, rng=None) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.labs[index].copy()


def rect_source(n: int = 6, size: int = 128) -> ListSource:
    rng = np.random.default_rng(0)
    images, labs = [], []
    for _ in range(n):
        x, y = (int(v) for v in rng.integers(10, size // 2 - 30, 2))
        w, h = (int(v) for v in rng.integers(14, 30, 2))
        images.append(rect_image(size // 2, size, (x, y, x + w, y + h)))
        labs.append(labels((x, y, x + w, y + h, 0)))
    return ListSource(images, labs)


def test_mosaic_affine_pipeline_box_centres_are_on_rectangles():
    p = AugmentParams(
        img_size=128,
        mixup_prob=0.0,
        hsv_prob=0.0,
        flip_prob=0.5,
        degrees=10.0,
        shear=2.0,
        mosaic_scale=(0.8, 1.6),
    )
    src = rect_source()
    checked = 0
    for pos in range(40):
        img, targets = train_sample(src, pos % len(src), sample_rng(3, 0, pos), p)
        assert img.shape == (128, 128, 3) and targets.shape == (120, 5)
        for _, cx, cy, w, h in targets[targets[:, 3] > 6]:
            if min(w, h) > 6 and 0 < cx < 127 and 0 < cy < 127:
                assert (img[int(cy), int(cx)] > 200).all()
                checked += 1
    assert checked > 20


def test_centre_crop_mosaic_keeps_boxes_on_their_rectangles_and_shows_less_padding():
    # Same draws as the official warp (the flag does not shift the random stream); the centre
    # window of 16:9 tiles holds more image and more boxes than the top-left one.
    src = rect_source()
    base = dict(img_size=128, mixup_prob=0.0, hsv_prob=0.0, mosaic_scale=(0.8, 1.6))
    pad, boxes = {}, {}
    for centre in (False, True):
        p = AugmentParams(**base, mosaic_centre_crop=centre)
        pad[centre], boxes[centre] = [], 0
        for pos in range(40):
            img, targets = train_sample(src, pos % len(src), sample_rng(3, 0, pos), p)
            pad[centre].append((img == 114).all(-1).mean())
            for _, cx, cy, w, h in targets[targets[:, 3] > 0]:
                boxes[centre] += 1
                clipped = min(cx - w / 2, cy - h / 2) <= 0 or max(cx + w / 2, cy + h / 2) >= 128
                if min(w, h) > 6 and not clipped:  # a clipped rotated box may miss its centre
                    assert (img[int(cy), int(cx)] > 200).all()
    assert np.mean(pad[True]) < np.mean(pad[False]) - 0.1
    assert boxes[True] > boxes[False]


def test_pipeline_is_a_function_of_its_rng():
    src, p = rect_source(), AugmentParams(img_size=128)
    a = train_sample(src, 2, sample_rng(7, 3, 11), p)
    b = train_sample(src, 2, sample_rng(7, 3, 11), p)
    c = train_sample(src, 2, sample_rng(7, 4, 11), p)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_no_augmentation_mode_is_letterbox_plus_official_flip():
    src = rect_source(size=128)
    x1, y1, x2, y2, _ = src.labs[1][0]
    off = AugmentParams(img_size=128, hsv_prob=0.0, flip_prob=0.0)
    img, t = train_sample(src, 1, sample_rng(0, 0, 0), off, augment=False)
    np.testing.assert_array_equal(img, letterbox(src.images[1], 128)[0])
    np.testing.assert_allclose(t[0], [0, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
    assert not t[1:].any()
    flip = AugmentParams(img_size=128, hsv_prob=0.0, flip_prob=1.0)
    img, t = train_sample(src, 1, sample_rng(0, 0, 0), flip, augment=False)
    assert t[0, 1] == pytest.approx(128 - (x1 + x2) / 2)
    assert_box_on_rect(img, [128 - x2, y1, 128 - x1, y2])


def test_all_boxes_filtered_falls_back_to_the_input_with_positive_boxes():
    img = rect_image(64, 64, (10, 10, 11, 30))
    lab = labels((10, 10, 11, 30, 0), (20, 20, 20, 30, 0))  # 1 px wide, then zero wide
    p = AugmentParams(img_size=64, hsv_prob=1.0, flip_prob=1.0)
    out, t = finish_sample(img, lab, np.random.default_rng(0), p)
    np.testing.assert_array_equal(out, img)  # neither jittered nor flipped
    np.testing.assert_array_equal(t[:2], [[0, 10.5, 20, 1, 20], [0, 0, 0, 0, 0]])


def test_image_without_boxes_gives_zero_targets():
    src = ListSource([np.full((32, 64, 3), 9, np.uint8)], [labels()])
    img, t = train_sample(src, 0, sample_rng(0, 0, 0), AugmentParams(img_size=64))
    assert img.shape == (64, 64, 3) and not t.any()


def test_augment_params_are_the_configs_values() -> None:
    """One set of defaults (the trial config's), and every field read from the config."""
    assert AugmentParams() == AugmentParams.from_config(TrialConfig())
    cfg = dataclasses.replace(
        TrialConfig(), mosaic_prob=0.3, mixup_prob=0.2, hsv_prob=0.1, flip_prob=0.0, degrees=1.0,
        translate=0.05, mosaic_scale_min=0.5, mosaic_scale_max=1.5, mixup_scale_min=0.8,
        mixup_scale_max=1.2, shear=0.5, max_labels=50, mosaic_centre_crop=True,
        input_mode="tiles", tile_size=320,
    )
    p = AugmentParams.from_config(cfg)
    assert all(getattr(p, f.name) != getattr(AugmentParams(), f.name)
               for f in dataclasses.fields(AugmentParams))  # every field followed the config
    assert (p.img_size, p.mosaic_scale, p.mixup_scale) == (320, (0.5, 1.5), (0.8, 1.2))
