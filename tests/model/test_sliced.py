"""Sliced inference (model/sliced.py), its use in evaluation, and the box-scoring choice."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch

from model.coco_eval import coco_metrics, evaluate_coco, predict_images, to_coco_results
from model.config import TrialConfig
from model.data.dataset import load_dataset
from model.data.synth import generate_flow_like
from model.sliced import (
    FULL_FRAME_SOURCE,
    SliceSettings,
    cut_mask,
    frame_tiles,
    merge_detections,
    sliced_detect,
    tile_origins,
)
from model.yolox import build_yolox_from_config


class SquareOracle(torch.nn.Module):
    """A stand-in detector: every bright (> 200 in channel 0) blob of its input is an object.

    Returns YOLOX's decoded layout ``[B, 16, 6]`` (cx, cy, w, h, obj, cls) in input pixels, blob
    boxes first with obj 1 and class score 0.9, then empty rows; it records its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))
        self.inputs: list[tuple[int, ...]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.inputs.append(tuple(images.shape))
        out = torch.zeros(images.shape[0], 16, 6)
        for b, img in enumerate(images):
            mask = (img[0] > 200).numpy().astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
            for k, (x, y, w, h, _) in enumerate(stats[1:n].tolist()):
                out[b, k] = torch.tensor([x + w / 2, y + h / 2, w, h, 1.0, 0.75])
        return out


def scene(w: int, h: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    for x1, y1, x2, y2 in boxes:
        img[y1:y2, x1:x2] = 255
    return img


def test_tile_origins_are_evenly_spaced_with_at_least_the_overlap() -> None:
    assert tile_origins(640, 320, 0.2) == [0, 160, 320]  # step 256 -> 2 steps needed
    assert tile_origins(360, 320, 0.2) == [0, 40]
    assert tile_origins(300, 320, 0.2) == [0]  # smaller than a tile: one, padded
    assert tile_origins(320, 320, 0.2) == [0]
    assert tile_origins(1920, 640, 0.2) == [0, 427, 853, 1280]  # step 512
    assert tile_origins(400, 128, 0.25) == [0, 91, 181, 272]  # step 96
    assert frame_tiles(200, 400, 128, 0.25) == [
        (x, y) for y in (0, 72) for x in (0, 91, 181, 272)
    ]


def test_cut_boxes_are_those_at_an_inner_tile_edge() -> None:
    boxes = torch.tensor([[90.0, 10, 128, 20], [10, 10, 20, 20], [0, 0, 10, 10]])
    # tile at (0, 0) of a 400 x 200 frame: only its right and bottom edges are inside the frame
    assert cut_mask(boxes, 0, 0, 128, 400, 200).tolist() == [True, False, False]
    # the same tile in a 128 x 128 frame: no inner edge at all
    assert cut_mask(boxes, 0, 0, 128, 128, 128).tolist() == [False, False, False]
    # a tile at (91, 72): its left and top edges are inner
    assert cut_mask(torch.tensor([[92.0, 100, 120, 110]]), 91, 72, 128, 400, 200).tolist() == [
        True
    ]


def test_sliced_inference_returns_known_boxes_in_frame_coordinates() -> None:
    # tiles of 128 with overlap 0.25 over 400 x 200: x at 0, 91, 181, 272 and y at 0, 72
    a = (20, 20, 30, 30)  # in tile (0, 0) only
    b = (150, 140, 230, 170)  # split by the tile edges x = 181 and x = 219: two cut halves
    c = (100, 100, 110, 110)  # whole in four tiles: four duplicates of one object
    net = SquareOracle()
    s = SliceSettings(tile=128, overlap=0.25, num_classes=1, conf=0.1, nms_iou=0.65)
    timings: dict[str, float] = {}
    (found,) = sliced_detect(net.eval(), [scene(400, 200, [a, b, c])], s, batch_size=3,
                             timings=timings)
    boxes = sorted(tuple(round(v) for v in row[:4]) for row in found.tolist())
    assert boxes == sorted([a, b, c])
    assert found[:, 4:6].tolist() == [[1.0, 0.75]] * 3 and (found[:, 6] == 0).all()
    # 8 tiles, batched 3 + 3 + 2 across the frame
    assert [shape[0] for shape in net.inputs] == [3, 3, 2] and timings["tiles"] == 8


def test_a_box_split_across_two_tiles_merges_into_one() -> None:
    # left tile [0, 100) sees x 60..100 (cut at its right edge), right tile [80, 180) sees
    # x 80..130 (cut at its left edge); they share x 80..100
    dets = torch.tensor([
        [60.0, 10, 100, 30, 1.0, 0.5, 0],
        [80.0, 10, 130, 30, 1.0, 0.75, 0],
        [20.0, 50, 30, 60, 1.0, 0.5, 0],  # another object of the left tile
    ])
    sources = torch.tensor([0, 1, 0])
    cut = torch.tensor([True, True, False])
    out = merge_detections(dets, sources, cut)
    assert out.tolist() == [[60.0, 10, 130, 30, 1.0, 0.75, 0], [20.0, 50, 30, 60, 1.0, 0.5, 0]]


def test_merge_keeps_whole_boxes_whole_and_never_merges_one_tile_or_two_classes() -> None:
    whole = [10.0, 10, 40, 40, 1.0, 0.75, 0]
    stray = [12.0, 12, 60, 38, 1.0, 0.5, 0]  # IoS 0.93 with `whole`, not cut: suppressed only
    out = merge_detections(torch.tensor([whole, stray]), torch.tensor([0, 1]),
                           torch.tensor([False, False]))
    assert out.tolist() == [whole]
    # the same two from one tile were already settled by that tile's NMS: both stay
    same = merge_detections(torch.tensor([whole, stray]), torch.tensor([2, 2]),
                            torch.tensor([True, True]))
    assert same.tolist() == [whole, stray]
    other_class = [*stray[:6], 1.0]
    two = merge_detections(torch.tensor([whole, other_class]), torch.tensor([0, 1]),
                           torch.tensor([True, True]))
    assert len(two) == 2
    # a full-frame box (never cut) and a cut tile box of one object: one box, grown to the union
    ff = merge_detections(
        torch.tensor([[10.0, 10, 50, 40, 1.0, 0.75, 0], [30.0, 10, 64, 40, 1.0, 0.5, 0]]),
        torch.tensor([FULL_FRAME_SOURCE, 0]), torch.tensor([False, True]),
    )
    assert ff.tolist() == [[10.0, 10, 64, 40, 1.0, 0.75, 0]]


def test_the_full_frame_pass_runs_once_per_frame_and_joins_the_merge() -> None:
    big = (40, 30, 360, 180)  # larger than any 128 tile
    net = SquareOracle()
    s = SliceSettings(tile=128, overlap=0.25, num_classes=1, conf=0.1, nms_iou=0.65,
                      full_frame_size=128)
    timings: dict[str, float] = {}
    (found,) = sliced_detect(net.eval(), [scene(400, 200, [big])], s, timings=timings)
    assert timings["tiles"] == 9 and net.inputs[-1] == (1, 3, 128, 128)
    assert len(found) == 1
    assert found[0, :4].round().tolist() == pytest.approx(list(big), abs=2)


@pytest.fixture(scope="module")
def one_tile_split(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("flow_one_tile")
    data = generate_flow_like(root, n_train=2, n_test=3, width=128, height=96, video=False)
    return data, load_dataset(data).splits["test"]


def test_tiles_and_letterbox_score_the_same_on_frames_no_larger_than_a_tile(one_tile_split):
    data, split = one_tile_split
    torch.manual_seed(0)
    cfg = TrialConfig(size="nano", data=str(data), img_size=128, tile_size=128, batch_size=2,
                      workers=0, test_conf=1e-6)
    net = build_yolox_from_config(cfg).eval()
    boxed = evaluate_coco(net, split, cfg)
    tiled = evaluate_coco(net, split, dataclasses.replace(cfg, input_mode="tiles"))
    assert boxed["num_detections"] > 100
    assert tiled["num_detections"] == boxed["num_detections"]
    assert tiled["summary"] == boxed["summary"]
    assert tiled["images"] == tiled["forwards"] == 3
    frames = [cv2.imread(im["file_name"]) for im in split.images]
    a = predict_images(net, frames, cfg)
    b = predict_images(net, frames, dataclasses.replace(cfg, input_mode="tiles"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_tiles_evaluate_full_frames_against_their_original_boxes(one_tile_split, tmp_path):
    # a 256 x 96 frame with tiles of 64 needs 5 x 2 tiles; the oracle finds the painted boxes
    ann = [[10, 10, 20, 10], [100, 40, 60, 30], [200, 60, 40, 30]]  # x, y, w, h
    img = scene(256, 96, [(x, y, x + w, y + h) for x, y, w, h in ann])
    path = tmp_path / "f.png"
    cv2.imwrite(str(path), img)
    from model.data.dataset import DetectionSplit

    split = DetectionSplit(
        "test",
        [{"id": 1, "file_name": str(path), "width": 256, "height": 96}],
        [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3],
          "iscrowd": 0} for i, b in enumerate(ann)],
        [{"id": 1, "name": "bottle"}],
    )
    cfg = TrialConfig(input_mode="tiles", tile_size=64, tile_overlap=0.25, batch_size=4,
                      workers=0)
    result = evaluate_coco(SquareOracle(), split, cfg)
    assert result["mAP"] == pytest.approx(1.0) and result["num_detections"] == 3
    assert result["forwards"] == len(frame_tiles(96, 256, 64, 0.25)) == 10


def _scored(clip: bool) -> dict[str, float]:
    # a 200 x 100 image with one box at its right edge; the prediction runs 13 px past it
    gt = {
        "images": [{"id": 1, "width": 200, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [180, 10, 20, 20],
                         "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "bottle"}],
    }
    out = torch.tensor([[180.0, 10, 213, 30, 1.0, 0.9, 0]])
    dets = to_coco_results([out], [1], [1.0], {1: (200, 100)}, [1], clip=clip)
    return coco_metrics(gt, dets)[0]


def test_unclipped_scoring_is_official_and_clipping_is_a_choice() -> None:
    # unclipped IoU = 20*20 / (33*20) = 0.606: a match at IoU 0.50, 0.55 and 0.60 of ten
    assert _scored(clip=False)["mAP"] == pytest.approx(0.3)
    assert _scored(clip=True)["mAP"] == pytest.approx(1.0)  # clipped to x2 = 200: IoU 1
    assert TrialConfig().eval_clip_boxes is False
