"""SimOTA: identical to the official assignments, batched == per image, hand-worked rules."""

from __future__ import annotations

import pytest
import torch

from model.assign import Assignment, BatchAssignment
from model.assign.simota import simota, simota_batched
from tests.paths import FIXTURES

CASES = torch.load(FIXTURES / "simota_cases.pt", weights_only=True)[
    "cases"
]


def run_case(case: dict, **kw) -> Assignment:
    return simota(
        case["gt_bboxes"],
        case["gt_classes"],
        case["pred_bboxes"],
        case["cls_preds"],
        case["obj_preds"],
        case["x_shifts"],
        case["y_shifts"],
        case["strides"],
        **kw,
    )


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"case{i}" for i in range(len(CASES))])
def test_identical_to_official(i: int) -> None:
    case = CASES[i]
    got = run_case(case)
    assert torch.equal(got.fg_mask, case["fg_mask"])
    assert torch.equal(got.matched_gt_inds, case["matched_gt_inds"])
    assert torch.equal(case["gt_classes"][got.matched_gt_inds], case["gt_matched_classes"])
    assert torch.equal(got.pred_ious, case["pred_ious_this_matching"])  # bit for bit
    assert got.num_fg == case["num_fg"]


def test_official_cases_also_identical_through_batched() -> None:
    """All six cases as one padded batch (1 to 12 objects) through simota_batched."""
    g = max(c["gt_bboxes"].shape[0] for c in CASES)
    b = len(CASES)
    gt = torch.zeros(b, g, 4)
    cls = torch.zeros(b, g)
    valid = torch.zeros(b, g, dtype=torch.bool)
    for i, c in enumerate(CASES):
        n = c["gt_bboxes"].shape[0]
        gt[i, :n], cls[i, :n], valid[i, :n] = c["gt_bboxes"], c["gt_classes"], True
    c0 = CASES[0]
    got = simota_batched(
        gt,
        cls,
        valid,
        torch.stack([c["pred_bboxes"] for c in CASES]),
        torch.stack([c["cls_preds"] for c in CASES]),
        torch.stack([c["obj_preds"] for c in CASES]),
        c0["x_shifts"],
        c0["y_shifts"],
        c0["strides"],
    )
    for i, c in enumerate(CASES):
        one = got.image(i)
        assert torch.equal(one.fg_mask, c["fg_mask"])
        assert torch.equal(one.matched_gt_inds, c["matched_gt_inds"])
        assert torch.equal(one.pred_ious, c["pred_ious_this_matching"])


# ----------------------------------------------------------------------------- hand-worked

# One row of six stride-8 cells: cell centres x = 4, 12, 20, 28, 36, 44 (y = 4).
X = torch.arange(6.0)
Y = torch.zeros(6)
S = torch.full((6,), 8.0)
LOGITS = torch.zeros(6, 1)  # one class, all scores equal: only IoU separates anchors


def test_radius_dynamic_k_and_picks_beyond_the_radius() -> None:
    # Object A centred at x = 16: within 1.5 * 8 = 12 px lie cells 12 and 20 (anchors 1, 2);
    # cells 4 and 28 are exactly 12 px away, which the official strict test excludes.
    # Object B at x = 40: anchors 4, 5 (cell 28 is again exactly 12 px away).
    # Candidates: anchors 1, 2, 4, 5; anchors 0 and 3 can never be foreground.
    a_box = [16.0, 4.0, 8.0, 8.0]
    gt = torch.tensor([a_box, [40.0, 4.0, 8.0, 8.0]])
    pred = torch.tensor([a_box] * 6)  # every anchor predicts A exactly: IoU(A) = 1, IoU(B) = 0
    got = simota(gt, torch.zeros(2), pred, LOGITS, LOGITS, X, Y, S)
    # k_A = int(1 + 1 + 1 + 1) = 4 over the four candidates: anchors 1, 2 (within its radius),
    # then 4, 5 at cost + 1e6. k_B = max(1, int(0)) = 1: anchor 4 (ties with 5, lower index).
    # Anchor 4 is contested; B's cost there is < 1e6 <= A's, so B keeps it.
    assert got.fg_mask.tolist() == [False, True, True, False, True, True]
    assert got.matched_gt_inds.tolist() == [0, 0, 1, 0]
    assert got.pred_ious.tolist() == [1.0, 1.0, 0.0, 1.0]
    # Anchors 4 and 5 predict far away: k_A = 2 -> anchors 1, 2; B still takes anchor 4.
    far = pred.clone()
    far[[0, 3, 4, 5], 1] = 200.0
    got = simota(gt, torch.zeros(2), far, LOGITS, LOGITS, X, Y, S)
    assert got.fg_mask.tolist() == [False, True, True, False, True, False]
    assert got.matched_gt_inds.tolist() == [0, 0, 1]
    # candidate_topk=1 sums only the largest IoU: k_A = 1; anchors 1 and 2 tie, the lower index
    # wins.
    got = simota(gt, torch.zeros(2), pred, LOGITS, LOGITS, X, Y, S, candidate_topk=1)
    assert got.fg_mask.tolist() == [False, True, False, False, True, False]
    # radius 0.4 strides (3.2 px): no cell centre near either object -> no foreground.
    got = simota(gt, torch.zeros(2), pred, LOGITS, LOGITS, X, Y, S, center_radius=0.4)
    assert got.num_fg == 0 and not got.fg_mask.any()
    # radius 2.5 strides (20 px): A reaches anchors 0-3, B anchors 3-5; k_A = 6 takes all six;
    # B's pick, anchor 3 (lowest of its tied three), is within A's radius too, and A's cost
    # there (IoU 1) beats B's (IoU 0).
    got = simota(gt, torch.zeros(2), pred, LOGITS, LOGITS, X, Y, S, center_radius=2.5)
    assert got.fg_mask.tolist() == [True] * 6
    assert got.matched_gt_inds.tolist() == [0] * 6


def test_batched_handles_picks_beyond_the_radius_and_padding() -> None:
    # The first case above as image 1 of a batch, objects in padded rows 2 and 0; image 0 empty.
    gt = torch.zeros(2, 3, 4)
    gt[1, 2] = torch.tensor([16.0, 4.0, 8.0, 8.0])
    gt[1, 0] = torch.tensor([40.0, 4.0, 8.0, 8.0])
    valid = torch.zeros(2, 3, dtype=torch.bool)
    valid[1, [0, 2]] = True
    pred = torch.tensor([16.0, 4.0, 8.0, 8.0]).repeat(2, 6, 1)
    got = simota_batched(
        gt, torch.zeros(2, 3), valid, pred, torch.zeros(2, 6, 1), torch.zeros(2, 6), X, Y, S
    )
    assert got.fg_mask.tolist() == [[False] * 6, [False, True, True, False, True, True]]
    assert got.matched_gt_inds.tolist() == [[-1] * 6, [-1, 2, 2, -1, 0, 2]]
    assert got.pred_ious[1].tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 1.0]


def test_contested_anchor_goes_to_least_cost_object() -> None:
    # Objects at x = 16 and x = 20 (8 x 8, same class). Only anchor 2 predicts anything nearby:
    # box (18.5, 4, 8, 8) spans x [14.5, 22.5]. With object 0 ([12, 20]): overlap 5.5 -> IoU
    # 44 / (64 + 64 - 44) = 0.524; with object 1 ([16, 24]): overlap 6.5 -> 52 / 76 = 0.684.
    # Both dynamic k = max(1, int(IoU sum < 1)) = 1, both pick anchor 2 (IoU cost lowest);
    # the conflict goes to object 1 (same class cost, lower -log IoU); object 0 gets nothing.
    gt = torch.tensor([[16.0, 4.0, 8.0, 8.0], [20.0, 4.0, 8.0, 8.0]])
    pred = torch.tensor(
        [
            [4.0, 200, 8, 8],
            [12, 200, 8, 8],
            [18.5, 4, 8, 8],
            [28, 200, 8, 8],
            [36, 200, 8, 8],
            [44, 200, 8, 8],
        ]
    )
    got = simota(gt, torch.zeros(2), pred, LOGITS, LOGITS, X, Y, S)
    assert got.fg_mask.tolist() == [False, False, True, False, False, False]
    assert got.matched_gt_inds.tolist() == [1]
    assert got.pred_ious.item() == pytest.approx(52 / 76)
    # A confident wrong-class score flips it: object 1 is class 1, anchor 2 scores class 0 high,
    # so object 1's class cost (-log sqrt(p1 * obj) ...) exceeds object 0's -> object 0 wins.
    cls = torch.zeros(6, 2)
    cls[2] = torch.tensor([6.0, -6.0])
    got = simota(gt, torch.tensor([0.0, 1.0]), pred, cls, LOGITS, X, Y, S)
    assert got.matched_gt_inds.tolist() == [0]
    assert got.pred_ious.item() == pytest.approx(44 / 84)


def test_zero_objects_all_background() -> None:
    got = simota(torch.zeros(0, 4), torch.zeros(0), torch.rand(6, 4), LOGITS, LOGITS, X, Y, S)
    assert got.fg_mask.tolist() == [False] * 6 and got.num_fg == 0
    batched = simota_batched(
        torch.zeros(2, 3, 4),
        torch.zeros(2, 3),
        torch.zeros(2, 3, dtype=torch.bool),
        torch.rand(2, 6, 4),
        torch.zeros(2, 6, 1),
        torch.zeros(2, 6),
        X,
        Y,
        S,
    )
    assert not batched.fg_mask.any()
    assert (batched.matched_gt_inds == -1).all() and (batched.pred_ious == 0).all()


def test_object_outside_grid_gets_no_anchor() -> None:
    gt = torch.tensor([[500.0, 500.0, 8.0, 8.0]])
    got = simota(gt, torch.zeros(1), torch.rand(6, 4) * 30, LOGITS, LOGITS, X, Y, S)
    assert got.num_fg == 0


def test_runs_without_gradient() -> None:
    pred = torch.tensor([[16.0, 4.0, 8.0, 8.0]]).repeat(6, 1).requires_grad_(True)
    got = simota(pred[:1].detach(), torch.zeros(1), pred, LOGITS, LOGITS, X, Y, S)
    assert not got.pred_ious.requires_grad


def test_bad_class_id_and_shapes_are_clear_errors() -> None:
    gt = torch.tensor([[16.0, 4.0, 8.0, 8.0]])
    with pytest.raises(ValueError, match=r"class ids must be integers in \[0, 1\).*\[3\.0\]"):
        simota(gt, torch.tensor([3.0]), gt.repeat(6, 1), LOGITS, LOGITS, X, Y, S)
    with pytest.raises(ValueError, match=r"x_shifts \(3,\) \(want \(6,\)\)"):
        simota(gt, torch.zeros(1), gt.repeat(6, 1), LOGITS, LOGITS, X[:3], Y, S)


# ----------------------------------------------------------------------------- batched


def anchor_grid(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys, ss = [], [], []
    for s in (8, 16, 32):
        yv, xv = torch.meshgrid(torch.arange(size // s), torch.arange(size // s), indexing="ij")
        xs.append(xv.flatten())
        ys.append(yv.flatten())
        ss.append(torch.full((xv.numel(),), s))
    return torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(ss).float()


def random_batch(seed: int, size: int = 128, classes: int = 3) -> dict:
    """8 images: 0 objects, 1, 5, tiny boxes (1-5 px), a crowd of 20 in 12 px, objects at the
    border, a mix, and exact-radius centres; padding rows interleaved with objects."""
    g = torch.Generator().manual_seed(seed)
    x, y, s = anchor_grid(size)
    a = x.numel()
    counts = [0, 1, 5, 12, 20, 6, 9, 4]
    b, m = len(counts), max(counts) + 3
    gt = torch.zeros(b, m, 4)
    cls = torch.zeros(b, m)
    valid = torch.zeros(b, m, dtype=torch.bool)
    for i, n in enumerate(counts):
        if n == 0:
            continue
        centres = torch.rand(n, 2, generator=g) * size
        wh = 2 + torch.rand(n, 2, generator=g) * 40
        if i == 3:
            wh = 1 + torch.rand(n, 2, generator=g) * 4  # tiny
        if i == 4:
            centres = 50 + torch.rand(n, 2, generator=g) * 12  # crowd: anchors contested
        if i == 5:
            centres[:, 0] = torch.tensor([0.0, 1.0, 127.0, 128.0, 64.0, 3.0])  # at the border
        if i == 7:
            centres = torch.tensor([[16.0, 16.0], [28.0, 40.0], [48.0, 8.0], [96.0, 96.0]])
        rows = torch.randperm(m, generator=g)[:n]  # padding anywhere
        gt[i, rows] = torch.cat([centres, wh], 1)
        cls[i, rows] = torch.randint(0, classes, (n,), generator=g).float()
        valid[i, rows] = True
    cell = torch.stack([(x + 0.5) * s, (y + 0.5) * s], 1)
    pred = torch.cat(
        [
            cell + torch.randn(b, a, 2, generator=g) * s[:, None],
            s[:, None] * torch.exp(torch.randn(b, a, 2, generator=g) * 0.7),
        ],
        -1,
    )
    return {
        "gt": gt,
        "cls": cls,
        "valid": valid,
        "pred": pred,
        "x": x,
        "y": y,
        "s": s,
        "cls_logits": torch.randn(b, a, classes, generator=g) * 3,
        "obj_logits": torch.randn(b, a, 1, generator=g) * 3,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_per_image(seed: int) -> None:
    d = random_batch(seed)
    got = simota_batched(
        d["gt"],
        d["cls"],
        d["valid"],
        d["pred"],
        d["cls_logits"],
        d["obj_logits"],
        d["x"],
        d["y"],
        d["s"],
    )
    assert isinstance(got, BatchAssignment)
    total_fg = 0
    for i in range(d["gt"].shape[0]):
        rows = d["valid"][i].nonzero().squeeze(1)
        ref = simota(
            d["gt"][i, rows],
            d["cls"][i, rows],
            d["pred"][i],
            d["cls_logits"][i],
            d["obj_logits"][i],
            d["x"],
            d["y"],
            d["s"],
        )
        one = got.image(i)
        assert torch.equal(one.fg_mask, ref.fg_mask), i
        assert torch.equal(one.matched_gt_inds, rows[ref.matched_gt_inds]), i  # padded indices
        assert torch.equal(one.pred_ious, ref.pred_ious), i
        assert (got.matched_gt_inds[i][~ref.fg_mask] == -1).all()
        total_fg += ref.num_fg
    assert total_fg > 40  # the batch really assigns something
    assert not got.fg_mask[0].any()  # the image without objects


def test_batched_equals_per_image_with_custom_constants() -> None:
    d = random_batch(5)
    kw = {"center_radius": 2.5, "candidate_topk": 4, "iou_cost_weight": 1.0}
    got = simota_batched(
        d["gt"],
        d["cls"],
        d["valid"],
        d["pred"],
        d["cls_logits"],
        d["obj_logits"],
        d["x"],
        d["y"],
        d["s"],
        **kw,
    )
    for i in range(d["gt"].shape[0]):
        rows = d["valid"][i].nonzero().squeeze(1)
        ref = simota(
            d["gt"][i, rows],
            d["cls"][i, rows],
            d["pred"][i],
            d["cls_logits"][i],
            d["obj_logits"][i],
            d["x"],
            d["y"],
            d["s"],
            **kw,
        )
        assert torch.equal(got.image(i).fg_mask, ref.fg_mask)
        assert torch.equal(got.image(i).matched_gt_inds, rows[ref.matched_gt_inds])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    d = random_batch(0)
    args = ("gt", "cls", "valid", "pred", "cls_logits", "obj_logits", "x", "y", "s")
    cpu = simota_batched(*(d[k] for k in args))
    gpu = simota_batched(*(d[k].cuda() for k in args))
    for a, b in zip(cpu, gpu, strict=True):
        assert torch.equal(a, b.cpu())
    rows = d["valid"][3].nonzero().squeeze(1)
    one = simota(
        *(d[k][3, rows].cuda() for k in ("gt", "cls")),
        *(d[k][3].cuda() for k in ("pred", "cls_logits", "obj_logits")),
        d["x"].cuda(),
        d["y"].cuda(),
        d["s"].cuda(),
    )
    assert torch.equal(one.fg_mask.cpu(), cpu.fg_mask[3])
