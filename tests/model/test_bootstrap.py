"""The test-set bootstrap (model/bootstrap.py): pycocotools' accumulate redone for image
multiplicities, checked against pycocotools itself and against a case worked by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.bootstrap import (
    bootstrap_ci,
    bootstrap_mean_ci,
    load_per_image_eval,
    paired_bootstrap,
    weighted_ap,
)
from model.coco_eval import coco_metrics, coco_metrics_per_image


def random_case(
    seed: int, n_img: int = 12, n_cat: int = 2, score_step: float = 0.0
) -> tuple[dict, list[dict]]:
    """Images with 0-3 objects, detections near them (some matching) and stray ones; some
    images without objects, some without detections; continuous scores (no ties), or scores on
    a ``score_step`` grid (ties across images)."""
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 200, "height": 100, "file_name": f"{i}.jpg"}
              for i in range(n_img)]
    anns: list[dict] = []
    dets: list[dict] = []
    for im in images:
        for _ in range(rng.integers(0, 4)):
            x, y = rng.uniform(0, 150), rng.uniform(0, 60)
            w, h = rng.uniform(5, 40), rng.uniform(5, 30)
            c = int(rng.integers(1, n_cat + 1))
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": c,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(rng.integers(0, 3)):
                box = [x + rng.normal(0, 3), y + rng.normal(0, 3), w * rng.uniform(0.8, 1.2),
                       h * rng.uniform(0.8, 1.2)]
                dets.append({"image_id": im["id"], "category_id": c, "bbox": box,
                             "score": float(rng.uniform())})
        for _ in range(rng.integers(0, 4)):
            box = [rng.uniform(0, 150), rng.uniform(0, 60), rng.uniform(5, 40),
                   rng.uniform(5, 30)]
            dets.append({"image_id": im["id"], "category_id": int(rng.integers(1, n_cat + 1)),
                         "bbox": box, "score": float(rng.uniform())})
    cats = [{"id": c + 1, "name": f"c{c}"} for c in range(n_cat)]
    if score_step:
        for d in dets:
            d["score"] = round(d["score"] / score_step) * score_step
    return {"images": images, "annotations": anns, "categories": cats}, dets


def duplicated(gt: dict, dets: list[dict], weights: np.ndarray) -> tuple[dict, list[dict]]:
    """The dataset that holds image i weights[i] times (new ids, copied boxes and detections)."""
    out = {"images": [], "annotations": [], "categories": gt["categories"]}
    copies: list[dict] = []
    new_id = 1000
    for im, k in zip(gt["images"], weights, strict=True):
        for _ in range(int(k)):
            new_id += 1
            out["images"].append({**im, "id": new_id})
            out["annotations"] += [
                {**a, "id": len(out["annotations"]) + 1 + n, "image_id": new_id}
                for n, a in enumerate(x for x in gt["annotations"] if x["image_id"] == im["id"])
            ]
            copies += [{**d, "image_id": new_id} for d in dets if d["image_id"] == im["id"]]
    return out, copies


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weights_of_one_reproduce_pycocotools(seed: int) -> None:
    gt, dets = random_case(seed)
    metrics, _, pe = coco_metrics_per_image(gt, dets)
    found = weighted_ap(pe, np.ones((1, pe.num_images), dtype=np.int64))
    assert found["mAP"][0] == pytest.approx(metrics["mAP"], abs=1e-12)
    assert found["AP50"][0] == pytest.approx(metrics["AP50"], abs=1e-12)


@pytest.mark.parametrize("seed", [0, 3])
def test_integer_weights_equal_pycocotools_on_the_duplicated_dataset(seed: int) -> None:
    gt, dets = random_case(seed)
    _, _, pe = coco_metrics_per_image(gt, dets)
    rng = np.random.default_rng(seed + 10)
    for _ in range(3):
        weights = rng.integers(0, 4, size=pe.num_images)
        weights[0] = 0  # an image left out
        expected, _ = coco_metrics(*duplicated(gt, dets, weights))
        found = weighted_ap(pe, weights[None])
        assert found["mAP"][0] == pytest.approx(expected["mAP"], abs=1e-12)
        assert found["AP50"][0] == pytest.approx(expected["AP50"], abs=1e-12)


def hand_case() -> tuple[dict, list[dict]]:
    """Image 1: one object, a detection on it (score 0.9) and one far away (0.8); image 2: one
    object and a detection on it (0.7). Exact boxes: IoU 1 at every threshold."""
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
         "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400,
         "iscrowd": 0},
    ]
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [70, 70, 20, 20], "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.7},
    ]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "b"}]}, dets


def test_a_case_worked_by_hand() -> None:
    """In score order TP, FP, TP with weights (w1, w1, w2) and npig = w1 + w2.

    (1, 1): recall .5, .5, 1, precision 1, .5, 2/3 → envelope 1, 2/3, 2/3; the 51 recall
    thresholds 0 … 0.50 read 1, the 50 above read 2/3: AP = (51 + 50·2/3) / 101 = 0.834983.
    (2, 0): recall 1, 1, 1, precision 1, .5, .5 → every threshold reads index 0: AP = 1.
    (1, 2): tp 1, 1, 3, fp 0, 1, 1, npig 3 → recall 1/3, 1/3, 1, precision 1, .5, .75 →
    envelope 1, .75, .75; 34 thresholds (0 … 0.33) read 1, 67 read .75: AP = 84.25 / 101.
    Every IoU threshold agrees (exact boxes), so mAP = AP50."""
    _, _, pe = coco_metrics_per_image(*hand_case())
    found = weighted_ap(pe, np.array([[1, 1], [2, 0], [1, 2], [0, 0]]))
    expected = [(51 + 50 * 2 / 3) / 101, 1.0, 84.25 / 101, -1.0]  # no object at all: -1
    assert found["AP50"] == pytest.approx(expected, abs=1e-12)
    assert found["mAP"] == pytest.approx(expected, abs=1e-12)


def test_intervals_are_seeded_and_hold_the_point() -> None:
    gt, dets = random_case(0)
    _, _, pe = coco_metrics_per_image(gt, dets)
    a, b = bootstrap_ci(pe, seed=0), bootstrap_ci(pe, seed=0)
    assert a == b and a["mAP"].resamples == 1000
    assert bootstrap_ci(pe, seed=1)["mAP"].lo != a["mAP"].lo
    for iv in a.values():
        assert iv.lo <= iv.point <= iv.hi and iv.hi - iv.lo > 0.01


def test_paired_bootstrap_signs_and_pairing() -> None:
    gt, dets = random_case(1)
    _, _, pe = coco_metrics_per_image(gt, dets)
    same = paired_bootstrap([pe], [pe])
    assert (same["mAP"].point, same["mAP"].lo, same["mAP"].hi) == (0.0, 0.0, 0.0)
    # a detector whose detections on objects all score higher than the strays is better
    better = [{**d, "score": d["score"] + (1.0 if i % 2 == 0 else 0.0)}
              for i, d in enumerate(dets)]
    _, _, pe_b = coco_metrics_per_image(gt, better)
    d = paired_bootstrap([pe_b], [pe])
    assert d["mAP"].point == pytest.approx(
        weighted_ap(pe_b, np.ones((1, 12)))["mAP"][0] - weighted_ap(pe, np.ones((1, 12)))["mAP"][0]
    )
    # the mean over two runs of an arm: its interval is the runs' average, resample by resample
    mean = bootstrap_mean_ci([pe, pe_b])["mAP"]
    assert mean.point == pytest.approx(
        (bootstrap_ci(pe)["mAP"].point + bootstrap_ci(pe_b)["mAP"].point) / 2
    )


def test_runs_on_other_images_are_refused_by_id() -> None:
    gt, dets = random_case(0)
    _, _, pe = coco_metrics_per_image(gt, dets)
    gt2 = {**gt, "images": gt["images"][:-1] + [{**gt["images"][-1], "id": 99}]}
    dets2 = [d for d in dets if d["image_id"] != 12]
    gt2["annotations"] = [a for a in gt["annotations"] if a["image_id"] != 12]
    _, _, other = coco_metrics_per_image(gt2, dets2)
    with pytest.raises(ValueError, match=r"lacks image ids \[12\] and has \[99\]"):
        paired_bootstrap([pe], [other])


def test_save_and_load_round_trip_without_pickle(tmp_path: Path) -> None:
    gt, dets = random_case(2)
    _, _, pe = coco_metrics_per_image(gt, dets)
    back = load_per_image_eval(pe.save(tmp_path / "test_eval.npz"))
    for key, value in pe.__dict__.items():
        np.testing.assert_array_equal(np.asarray(getattr(back, key)), np.asarray(value))
    assert bootstrap_ci(back) == bootstrap_ci(pe)


def test_no_detections_at_all() -> None:
    gt, _ = hand_case()
    gt["images"].append({"id": 3, "width": 100, "height": 100, "file_name": "3.jpg"})
    metrics, _, pe = coco_metrics_per_image(gt, [])
    assert metrics["mAP"] == 0.0
    ci = bootstrap_ci(pe, resamples=200)
    assert (ci["mAP"].point, ci["mAP"].lo, ci["mAP"].hi) == (0.0, 0.0, 0.0)
    # a resampled set of image 3 three times (1 in 27) holds no object: no score, dropped
    assert 0 < ci["mAP"].dropped < 30


def test_crowd_objects_take_the_general_path_and_still_match_pycocotools() -> None:
    """A crowd object is ignored, and so is a detection matched to it — at some IoU thresholds
    and not at others, which the fast path cannot assume."""
    gt, dets = random_case(4)
    for a in gt["annotations"][::3]:
        a["iscrowd"] = 1
    _, _, pe = coco_metrics_per_image(gt, dets)
    counted = pe.det_tp | pe.det_fp
    assert not (counted == counted[:1]).all()  # the ignores change with the threshold
    rng = np.random.default_rng(5)
    for weights in (np.ones(pe.num_images, dtype=np.int64), rng.integers(0, 3, pe.num_images)):
        expected, _ = coco_metrics(*duplicated(gt, dets, weights))
        found = weighted_ap(pe, weights[None])
        assert found["mAP"][0] == pytest.approx(expected["mAP"], abs=1e-12)
        assert found["AP50"][0] == pytest.approx(expected["AP50"], abs=1e-12)


def test_tied_scores_keep_pycocotools_stable_order() -> None:
    """Scores on a 0.1 grid tie across images: the full set must sort them as pycocotools does
    (stable: image order, then each image's own order)."""
    gt, dets = random_case(4, n_img=40, score_step=0.1)
    metrics, _, pe = coco_metrics_per_image(gt, dets)
    found = weighted_ap(pe, np.ones((1, pe.num_images), dtype=np.int64))
    assert found["mAP"][0] == pytest.approx(metrics["mAP"], abs=1e-12)
    assert found["AP50"][0] == pytest.approx(metrics["AP50"], abs=1e-12)


def test_weights_of_the_wrong_shape_are_refused_and_pickles_never_load(tmp_path: Path) -> None:
    _, _, pe = coco_metrics_per_image(*hand_case())
    with pytest.raises(ValueError, match="weights need 2 columns"):
        weighted_ap(pe, np.ones((3, 5), dtype=np.int64))
    arrays = {k: np.asarray(v) for k, v in pe.__dict__.items()}
    arrays["det_score"] = np.array([{"not": "an array"}], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_per_image_eval(tmp_path / "evil.npz")
