"""Post-processing: score filter and class-aware NMS on hand-placed boxes; backends agree."""

from __future__ import annotations

import pytest
import torch

from model.postprocess import NMS_BACKENDS, nms, nms_backend, nms_torch, postprocess

try:
    import torchvision  # noqa: F401

    HAS_TORCHVISION = True
except (ImportError, RuntimeError, OSError):
    HAS_TORCHVISION = False

# every backend; torchvision's runs are skipped (and reported) where it does not import
BACKENDS = [
    pytest.param(b, marks=pytest.mark.skipif(not HAS_TORCHVISION, reason="torchvision absent"))
    if b == "torchvision"
    else b
    for b in NMS_BACKENDS
]


def pred_row(cx: float, cy: float, w: float, h: float, obj: float, *cls: float) -> list[float]:
    return [cx, cy, w, h, obj, *cls]


# Two classes. Rows (cx, cy, w, h, objectness, class scores):
ROWS = [
    pred_row(50, 50, 20, 20, 0.9, 0.9, 0.1),  # 0: class 0, score 0.81
    pred_row(52, 50, 20, 20, 0.8, 0.9, 0.1),  # 1: class 0, IoU with 0 = 18*20/(800-360) = 0.818
    pred_row(52, 50, 20, 20, 0.8, 0.1, 0.9),  # 2: same box as 1 but class 1: kept
    pred_row(60, 50, 20, 20, 0.85, 0.8, 0.1),  # 3: class 0, 0.68, IoU with 0 = 200/600: kept
    pred_row(150, 50, 20, 20, 0.5, 0.015, 0.01),  # 4: score 0.0075 < 0.01: dropped
    pred_row(150, 150, 10, 30, 0.1, 0.2, 0.3),  # 5: class 1, score 0.03: kept
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_placed_boxes(backend: str) -> None:
    pred = torch.tensor([ROWS])  # (1, 6, 7)
    (det,) = postprocess(pred, num_classes=2, conf_thre=0.01, nms_thre=0.65, backend=backend)
    assert det.shape == (4, 7)
    # by decreasing score: rows 0 (0.81), 2 (0.72), 3 (0.68), 5 (0.03); row 1 suppressed by 0
    expected = torch.tensor(
        [
            [40, 40, 60, 60, 0.9, 0.9, 0],
            [42, 40, 62, 60, 0.8, 0.9, 1],
            [50, 40, 70, 60, 0.85, 0.8, 0],
            [145, 135, 155, 165, 0.1, 0.3, 1],
        ]
    )
    torch.testing.assert_close(det, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_class_agnostic_suppresses_across_classes(backend: str) -> None:
    pred = torch.tensor([ROWS])
    (det,) = postprocess(pred, 2, 0.01, 0.65, class_agnostic=True, backend=backend)
    # row 2 (class 1) overlaps row 0 with IoU 0.818 > 0.65: now suppressed
    assert det[:, 6].tolist() == [0, 0, 1]
    assert det[:, 0].tolist() == [40, 50, 145]


def test_threshold_is_inclusive_and_empty_images_are_none() -> None:
    pred = torch.tensor([ROWS, ROWS])
    pred[1, :, 4] = 0.0  # second image: every score 0
    out = postprocess(pred, 2, conf_thre=0.03, nms_thre=0.65)
    assert out[1] is None
    # a score equal to the threshold is kept (row 5's own float32 score as the threshold)
    score5 = pred[0, 5, 4] * pred[0, 5, 6]
    kept = postprocess(pred, 2, conf_thre=float(score5), nms_thre=0.65)[0]
    assert kept[:, 0].tolist()[-1] == 145
    assert postprocess(torch.zeros(2, 0, 7), 2) == [None, None]


def test_nms_threshold_semantics() -> None:
    # IoU of rows 0 and 1 is 0.818: suppressed at 0.65, kept at 0.85
    pred = torch.tensor([ROWS[:2]])
    assert postprocess(pred, 2, 0.01, 0.65)[0].shape[0] == 1
    assert postprocess(pred, 2, 0.01, 0.85)[0].shape[0] == 2


def test_input_not_modified() -> None:
    pred = torch.tensor([ROWS])
    before = pred.clone()
    postprocess(pred, 2)
    assert torch.equal(pred, before)


def random_boxes(seed: int, n: int = 600) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 300
    wh = 2 + torch.rand(n, 2, generator=g) * 60
    classes = torch.randint(0, 4, (n,), generator=g)
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g), classes


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("agnostic", [False, True])
def test_backends_keep_the_same_boxes(backend: str, seed: int, agnostic: bool) -> None:
    """The library NMS (cv2 here, torchvision where installed) against our torch one."""
    boxes, scores, classes = random_boxes(seed)
    cls = None if agnostic else classes
    ref = nms_torch(boxes, scores, 0.5, cls)
    assert 50 < ref.numel() < 600  # some suppressed, some kept
    assert torch.equal(nms(boxes, scores, 0.5, cls, backend=backend), ref)


def test_torch_nms_matches_a_plain_greedy_loop() -> None:
    from model.postprocess import box_iou_xyxy

    boxes, scores, classes = random_boxes(3, n=200)
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    iou = box_iou_xyxy(boxes, boxes)
    kept: list[int] = []
    for j in order:  # the textbook rule, one box at a time
        if all(not (classes[i] == classes[j] and iou[i, j] > 0.5) for i in kept):
            kept.append(j)
    assert nms_torch(boxes, scores, 0.5, classes).tolist() == kept


def test_backend_choice_and_errors() -> None:
    assert nms_backend() == ("torchvision" if HAS_TORCHVISION else "opencv")
    boxes, scores, _ = random_boxes(0, n=5)
    with pytest.raises(ValueError, match="'torchvision', 'opencv', 'torch'"):
        nms(boxes, scores, 0.5, backend="fast")
    if not HAS_TORCHVISION:
        with pytest.raises(ValueError, match="torchvision does not import"):
            nms(boxes, scores, 0.5, backend="torchvision")
