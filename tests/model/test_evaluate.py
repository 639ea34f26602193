from __future__ import annotations

import pytest
import torch

from model.coco_eval import COCO_METRICS, coco_metrics, to_coco_results

# One 1000x1000 image with two objects of each COCO size (small < 32², medium < 96², large).
BOXES = [
    [10, 10, 20, 20],  # small (area 400)
    [100, 10, 25, 20],  # small (500)
    [200, 200, 50, 50],  # medium (2500)
    [400, 200, 60, 40],  # medium (2400)
    [500, 500, 200, 200],  # large (40000)
    [100, 600, 150, 120],  # large (18000)
]


def _gt(boxes: list[list[float]]) -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 1000, "height": 1000}],
        "categories": [{"id": 1, "name": "bottle"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3],
             "iscrowd": 0}
            for i, b in enumerate(boxes)
        ],
    }


def _det(box: list[float], score: float = 0.9) -> dict:
    return {"image_id": 1, "category_id": 1, "bbox": list(box), "score": score}


def test_metric_names_are_the_twelve_in_order() -> None:
    assert COCO_METRICS == (
        "mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
        "AR_100", "AR_300", "AR_1000", "AR_small", "AR_medium", "AR_large",
    )


def test_perfect_detections_score_one_everywhere() -> None:
    metrics, summary = coco_metrics(_gt(BOXES), [_det(b) for b in BOXES])
    assert list(metrics) == list(COCO_METRICS)
    assert all(v == pytest.approx(1.0) for v in metrics.values()), metrics
    lines = summary.splitlines()
    assert len(lines) == 12
    assert lines[0] == (
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=1000 ] = 1.000"
    )
    assert "maxDets= 300" in lines[7]


def test_half_the_objects_found_gives_recall_one_half() -> None:
    found = [BOXES[0], BOXES[2], BOXES[4]]  # one of each size
    metrics, _ = coco_metrics(_gt(BOXES), [_det(b) for b in found])
    for key in ("AR_100", "AR_300", "AR_1000", "AR_small", "AR_medium", "AR_large"):
        assert metrics[key] == pytest.approx(0.5), key
    # precision 1 up to recall 0.5, then 0: 51 of the 101 recall points
    for key in ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"):
        assert metrics[key] == pytest.approx(51 / 101), key


def test_loose_box_counts_only_at_the_low_iou_thresholds() -> None:
    gt = [100, 100, 100, 100]  # area 10000: large
    shifted = [116, 100, 100, 100]  # IoU 84/116 = 0.724: matched at 0.50..0.70, 5 of 10
    metrics, _ = coco_metrics(_gt([gt]), [_det(shifted)])
    assert metrics["mAP"] == pytest.approx(0.5)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)
    assert metrics["AR_100"] == pytest.approx(0.5)
    # no small or medium ground truth: the COCO convention -1
    assert metrics["AP_small"] == -1.0 and metrics["AR_medium"] == -1.0


def test_false_positive_ranked_first_halves_the_precision() -> None:
    gt = [100, 100, 100, 100]
    dets = [_det([600, 600, 100, 100], score=0.9), _det(gt, score=0.8)]
    metrics, _ = coco_metrics(_gt([gt]), dets)
    assert metrics["mAP"] == pytest.approx(0.5)
    assert metrics["AR_1000"] == pytest.approx(1.0)


def test_no_detections_gives_zeros_not_a_crash() -> None:
    metrics, summary = coco_metrics(_gt(BOXES), [])
    assert metrics == {k: 0.0 for k in COCO_METRICS}
    assert summary.count("= 0.000") == 12


def test_maxdets_limit_recall_per_image() -> None:
    # 150 objects in one image, all found: AR_100 sees only the 100 best-scored detections.
    boxes = [[(i % 15) * 60, (i // 15) * 60, 40, 40] for i in range(150)]
    dets = [_det(b, score=1.0 - i / 1000) for i, b in enumerate(boxes)]
    metrics, _ = coco_metrics(_gt(boxes), dets)
    assert metrics["AR_100"] == pytest.approx(100 / 150)
    assert metrics["AR_300"] == pytest.approx(1.0)
    assert metrics["mAP"] == pytest.approx(1.0)  # AP is read at maxDets 1000


def test_to_coco_results_maps_back_by_ratio_and_clips() -> None:
    # Input 64 px, original 200x100 -> ratio 0.32. Second box runs into the pad area.
    out = torch.tensor(
        [[3.2, 6.4, 16.0, 32.0, 0.5, 0.8, 0.0], [48.0, 0.0, 70.0, 20.0, 1.0, 0.5, 1.0]]
    )
    res = to_coco_results(
        [out, None], [7, 8], [0.32, 0.5], {7: (200, 100), 8: (10, 10)}, [1, 5], clip=True
    )
    assert len(res) == 2
    assert res[0]["image_id"] == 7 and res[0]["category_id"] == 1
    assert res[0]["bbox"] == pytest.approx([10.0, 20.0, 40.0, 80.0])
    assert res[0]["score"] == pytest.approx(0.4)
    assert res[1]["category_id"] == 5
    assert res[1]["bbox"] == pytest.approx([150.0, 0.0, 50.0, 62.5])  # x2 clipped to 200


class _OracleNet(torch.nn.Module):
    """Predicts the ground truth of each eval image (in loader order), mapped into input pixels
    by the letterbox ratio: evaluate_coco must map it back and score it perfectly."""

    def __init__(self, split, img_size: int, keep_every: int = 1) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.rows: list[torch.Tensor] = []
        by_image = split.annotations_by_image()
        for img in split.images:
            r = min(img_size / img["height"], img_size / img["width"])
            anns = by_image.get(img["id"], [])[::keep_every] if keep_every else []
            rows = [[(x + w / 2) * r, (y + h / 2) * r, w * r, h * r, 1.0, 1.0]
                    for x, y, w, h in (a["bbox"] for a in anns)]
            self.rows.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, 6))
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(images.shape[0], 64, 6)  # unused anchors score 0
        for b in range(images.shape[0]):
            rows = self.rows[self.calls]
            out[b, : len(rows)] = rows
            self.calls += 1
        return out


@pytest.fixture(scope="module")
def flow_split(tmp_path_factory):
    from model.data.dataset import load_dataset
    from model.data.synth import generate_flow_like

    root = generate_flow_like(tmp_path_factory.mktemp("flow"), n_train=2, n_test=5, width=160,
                              height=96, video=False)
    return load_dataset(root, progress=False).splits["test"]


def _cfg():
    from model.config import TrialConfig

    return TrialConfig(size="nano", img_size=64, batch_size=2, workers=0)


def test_evaluate_coco_maps_oracle_boxes_back_to_a_perfect_score(flow_split) -> None:
    from model.coco_eval import evaluate_coco

    net = _OracleNet(flow_split, 64)
    net.train()
    result = evaluate_coco(net, flow_split, _cfg())
    assert net.training  # mode restored
    assert net.calls == len(flow_split.images) == result["images"]
    assert result["num_detections"] == len(flow_split.annotations)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["AR_100"] == pytest.approx(1.0)
    assert result["summary"].splitlines()[1].endswith("= 1.000")


def test_evaluate_coco_without_detections_is_zero(flow_split) -> None:
    from model.coco_eval import evaluate_coco

    net = _OracleNet(flow_split, 64, keep_every=0)  # keeps nothing: every score is 0
    result = evaluate_coco(net, flow_split, _cfg())
    assert result["num_detections"] == 0
    assert result["mAP"] == 0.0 and result["AP50"] == 0.0 and result["AR_1000"] == 0.0


@pytest.mark.parametrize("keep_every", [2, 0], ids=["half", "none"])
def test_evaluate_coco_per_image_feeds_the_bootstrap(flow_split, keep_every: int) -> None:
    """``per_image=True`` hands the bootstrap the scoring it resamples: its full-set value is
    evaluate_coco's own number (half the objects found, or none at all)."""
    from model.bootstrap import PerImageEval, bootstrap_ci
    from model.coco_eval import evaluate_coco

    net = _OracleNet(flow_split, 64, keep_every=keep_every)  # every 2nd object, or none
    result = evaluate_coco(net, flow_split, _cfg(), per_image=True)
    pe = result["per_image"]
    assert isinstance(pe, PerImageEval) and pe.num_images == len(flow_split.images)
    assert len(pe.det_score) == result["num_detections"]
    ci = bootstrap_ci(pe, resamples=200)
    assert ci["mAP"].point == pytest.approx(result["mAP"], abs=1e-12)
    assert ci["AP50"].point == pytest.approx(result["AP50"], abs=1e-12)
    if not keep_every:
        assert (ci["mAP"].lo, ci["mAP"].hi) == (0.0, 0.0)
    else:
        assert 0.0 < ci["AP50"].point < 1.0 and ci["AP50"].lo < ci["AP50"].hi
    again = _OracleNet(flow_split, 64, keep_every=keep_every)  # (an oracle answers once)
    assert "per_image" not in evaluate_coco(again, flow_split, _cfg())
