"""The assigners beside SimOTA (model/assign/): hand-worked cases, tiny objects, the dynamic
state, and every option through the loss with finite gradients.

The hand cases share one grid of 20 points on two levels (16 x 16 input):
level 1, stride 4, a 4 x 4 grid, point a = 4 j + i at cell centre (2 + 4 i, 2 + 4 j);
level 2, stride 8, a 2 x 2 grid, point a = 16 + 2 j + i at (4 + 8 i, 4 + 8 j).
Predictions not named in a case sit far away (200, 200), overlapping nothing.
"""

from __future__ import annotations

import pytest
import torch

from model.assign import BatchAssignment, DynamicState
from model.assign.atss import atss
from model.assign.diagnostics import assignment_stats, summarize_stats
from model.assign.dynamic import dynamic
from model.assign.hambox import hambox
from model.assign.topk import topk
from model.assign.uniform import uniform
from model.config import ConfigError, TrialConfig
from model.yolox.loss import yolox_loss
from tests.loss_settings import loss_settings

FAR = (200.0, 200.0, 4.0, 4.0)


def grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys, ss = [], [], []
    for stride, n in ((4, 4), (8, 2)):
        yv, xv = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        xs.append(xv.flatten())
        ys.append(yv.flatten())
        ss.append(torch.full((n * n,), stride))
    return torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(ss).float()


def xyxy(x1: float, y1: float, x2: float, y2: float) -> tuple[float, ...]:
    return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


def preds(**at: tuple[float, ...]) -> torch.Tensor:
    """(1, 20, 4) predictions: FAR except the points named a<index>."""
    p = torch.tensor([FAR] * 20)
    for name, box in at.items():
        p[int(name[1:])] = torch.tensor(box)
    return p[None]


def gts(*boxes: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([boxes]), torch.ones(1, len(boxes), dtype=torch.bool)


def positives(asg: BatchAssignment) -> dict[int, int]:
    """{point: object} of image 0."""
    fg = asg.fg_mask[0].nonzero().squeeze(1).tolist()
    return {a: int(asg.matched_gt_inds[0, a]) for a in fg}


# GT 0: 32 x 32 at (10, 6.5) = [-6, 26] x [-9.5, 22.5]; GT 1 (tiny): 4 x 4 at (13, 13.5).
ATSS_GT = gts((10.0, 6.5, 32.0, 32.0), (13.0, 13.5, 4.0, 4.0))


def test_atss_hand_worked() -> None:
    # ATSS (Algorithm 1), k = 2 a level; prior boxes 8 x stride: 32 px (level 1), 64 px (level 2).
    # GT 0, centre (10, 6.5). Squared distances, level 1: (10, 6) a6 0.25, (10, 10) a10 12.25,
    #   next (6, 6)/(14, 6) 16.25 -> candidates a6, a10. Level 2: (12, 4) a17 10.25,
    #   (12, 12) a19 34.25, (4, 4) 42.25 -> a17, a19.
    #   IoUs: a6 [-6, 26] x [-10, 22]: inter 32 x 31.5 = 1008, union 2048 - 1008 -> 0.969231;
    #   a10 [-6, 26] x [-6, 26]: 32 x 28.5 = 912 / 1136 -> 0.802817; a17, a19 (64 px) contain the
    #   GT -> 1024 / 4096 = 0.25 each. mean 0.568012, unbiased std sqrt(0.418374 / 3) = 0.373441,
    #   threshold 0.941453: only a6 passes, and its centre (10, 6) is inside the GT -> a6.
    # GT 1 (tiny), centre (13, 13.5): level 1 a15 (14, 14) 1.25, a14 (10, 14) 9.25; level 2
    #   a19 (12, 12) 3.25, a18 (4, 12) 83.25. Every prior contains the 4 px box: IoU 16 / 1024 =
    #   0.015625 (level 1), 16 / 4096 = 0.00390625 (level 2); mean 0.009766, std 0.006766,
    #   threshold 0.016531 > 0.015625: no positive (ATSS leaves this tiny object without one).
    gt, valid = ATSS_GT
    asg = atss(gt, valid, preds(), *grid(), k=2)
    assert positives(asg) == {6: 0}
    assert asg.pred_ious[0, 6] == 0  # its prediction (FAR) does not overlap


def test_hambox_compensates_the_tiny_object_left_by_atss() -> None:
    # On top of the ATSS case (GT 0: a6, GT 1: none), K = 3, IoU >= 0.35.
    # GT 1 [11, 15] x [11.5, 15.5] needs 3: predictions a14 = [11, 15] x [11, 15] and
    #   a15 = [11, 15] x [12, 16] each overlap it 4 x 3.5 = 14 / (32 - 14) = 0.7778; both taken,
    #   weighted 0.7778 (a third prediction over 0.35 does not exist).
    # GT 0 needs 2 more, but a14 and a15 overlap it 16 / 1024 < 0.35 and the rest is FAR: none.
    gt, valid = ATSS_GT
    p = preds(a14=xyxy(11, 11, 15, 15), a15=xyxy(11, 12, 15, 16))
    asg = hambox(atss(gt, valid, p, *grid(), k=2), gt, valid, p)
    assert positives(asg) == {6: 0, 14: 1, 15: 1}
    assert asg.weights is not None
    torch.testing.assert_close(asg.weights[0, [6, 14, 15]], torch.tensor([1.0, 14 / 18, 14 / 18]))
    assert asg.weights[0].count_nonzero() == 3


# GT 0: 10 x 10 = [5, 15] x [1.5, 11.5]; GT 1 (tiny): 4 x 4 = [11, 15] x [11.5, 15.5].
SMALL_GT = gts(xyxy(5, 1.5, 15, 11.5), xyxy(11, 11.5, 15, 15.5))


def test_uniform_hand_worked() -> None:
    # YOLOF's uniform matching with k = 1; priors are the cells (4 px level 1, 8 px level 2).
    # L1 of (x1, y1, x2, y2) to the priors. GT 0: a17 [8, 16] x [0, 8]: 3 + 1.5 + 1 + 3.5 = 9,
    #   the least (a6 [8, 12] x [4, 8]: 12, a10: 13) -> a17. Predictions: a6 equals GT 0 (L1 0),
    #   a0 = [5, 15] x [2, 12] (L1 1) -> a6. Prior IoUs: a17 45.5 / 118.5 = 0.384, a6 (inside the
    #   GT) 16 / 100 = 0.16, both >= 0.15: GT 0 keeps a6 and a17.
    # GT 1: priors a15 [12, 16]^2: 1 + 0.5 + 1 + 0.5 = 3 (a14: 7, a19: 8) -> a15; predictions
    #   a0: 6 + 9.5 + 0 + 3.5 = 19, a6: 20 -> a0. Prior IoUs: a15 10.5 / 21.5 = 0.488 (kept),
    #   a0's cell [0, 4]^2 0 < 0.15 and not GT 1's best -> dropped and ignored. GT 1 keeps a15.
    # Ignored negatives: a0's prediction has IoU 95 / 105 = 0.905 > 0.7 with GT 0 (also dropped).
    gt, valid = SMALL_GT
    p = preds(a6=xyxy(5, 1.5, 15, 11.5), a0=xyxy(5, 2, 15, 12))
    asg = uniform(gt, valid, p, *grid(), k=1)
    assert positives(asg) == {6: 0, 15: 1, 17: 0}
    assert asg.ignore_mask is not None
    assert asg.ignore_mask[0].nonzero().squeeze(1).tolist() == [0]
    assert asg.pred_ious[0, 6] == 1


def test_topk_hand_worked() -> None:
    # k = 3 among points within 1.5 strides of the centre (level 1: 6 px, level 2: 12 px).
    # GT 0 (10, 6.5): level 1 x in {6, 10, 14}, y in {2, 6, 10}; level 2 all four points.
    # GT 1 (13, 13.5): level 1 a10, a11, a14, a15; level 2 all four.
    # Predictions: a6 = GT 0 (IoU 1); a17 = [5, 15] x [2, 12]: GT 0 0.905, GT 1 2 / 114 = 0.0175;
    #   a10 = [11, 15] x [11, 15]: GT 1 14 / 18 = 0.778, GT 0 2 / 114 = 0.0175.
    # GT 0 top 3: a6 (1), a17 (0.905), a10 (0.0175). GT 1 top 3: a10 (0.778), a17 (0.0175),
    #   then IoU 0 ties -> the lowest index in its region, a11.
    # Conflicts to the higher IoU: a10 -> GT 1 (0.778 > 0.0175), a17 -> GT 0 (0.905 > 0.0175).
    gt, valid = SMALL_GT
    p = preds(a6=xyxy(5, 1.5, 15, 11.5), a17=xyxy(5, 2, 15, 12), a10=xyxy(11, 11, 15, 15))
    asg = topk(gt, valid, p, *grid(), k=3)
    assert positives(asg) == {6: 0, 10: 1, 11: 1, 17: 0}
    torch.testing.assert_close(asg.pred_ious[0, [6, 10, 11, 17]],
                               torch.tensor([1.0, 14 / 18, 0.0, 95 / 105]))


@pytest.mark.parametrize(("thr", "want"), [(0.5, {6: 0, 10: 1, 17: 0}), (0.95, {6: 0, 10: 1})])
def test_dynamic_hand_worked(thr: float, want: dict[int, int]) -> None:
    # Same points and predictions as the top-k case, positives = IoU >= thr in the centre region,
    # plus each object's best prediction there. thr 0.5: GT 0 a6 (1), a17 (0.905); GT 1 a10
    # (0.778). thr 0.95: GT 0 a6 only; GT 1's best a10 (0.778 < 0.95) is kept as its best.
    gt, valid = SMALL_GT
    p = preds(a6=xyxy(5, 1.5, 15, 11.5), a17=xyxy(5, 2, 15, 12), a10=xyxy(11, 11, 15, 15))
    assert positives(dynamic(gt, valid, p, *grid(), iou_thr=thr)) == want


def test_dynamic_state_updates_every_interval() -> None:
    # Dynamic R-CNN (label assignment, SmoothL1), K_I = 2, K_beta = 1, C = 2: iteration 1
    # records the 2nd largest IoU 0.8 and the (1 x 1)-th smallest error 0.2; iteration 2
    # records 0.5 and 0.05; then threshold = max(0.4, mean(0.8, 0.5)) = 0.65 and
    # beta = min(1, median(0.2, 0.05)) = 0.125.
    st = DynamicState(iou_topk=2, beta_topk=1, interval=2)
    valid = torch.ones(1, 1, dtype=torch.bool)
    st.observe(torch.tensor([[0.9, 0.8, 0.1]]), valid, torch.tensor([[0.3, 0.2]]))
    assert (st.iou_thr, st.beta) == (0.4, 1.0)
    st.observe(torch.tensor([[0.6, 0.5, 0.4]]), valid, torch.tensor([[0.05, 0.7]]))
    assert st.iou_thr == pytest.approx(0.65) and st.beta == pytest.approx(0.125)
    assert st.iou_history == [] and st.iteration == 2
    again = DynamicState()
    again.load_state_dict(st.state_dict())
    assert again == st


def production_grid(size: int = 128) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys, ss = [], [], []
    for s in (8, 16, 32):
        yv, xv = torch.meshgrid(torch.arange(size // s), torch.arange(size // s), indexing="ij")
        xs.append(xv.flatten())
        ys.append(yv.flatten())
        ss.append(torch.full((xv.numel(),), s))
    return torch.cat(xs).float(), torch.cat(ys).float(), torch.cat(ss).float()


@pytest.mark.parametrize("name", ["uniform", "topk", "hambox"])
def test_a_4px_object_gets_a_positive(name: str) -> None:
    """Anywhere on the grid, with random predictions and a 40 px neighbour."""
    g = torch.Generator().manual_seed(0)
    x, y, s = production_grid()
    a = x.numel()
    for _ in range(20):
        c = 8 + torch.rand(2, generator=g) * 112
        gt = torch.tensor([[[*c.tolist(), 4.0, 4.0], [64.0, 64.0, 40.0, 40.0]]])
        valid = torch.ones(1, 2, dtype=torch.bool)
        p = torch.cat([torch.rand(1, a, 2, generator=g) * 128,
                       4 + torch.rand(1, a, 2, generator=g) * 40], -1)
        if name == "hambox":  # on top of ATSS, with one prediction near the tiny box
            p[0, 0] = torch.tensor([c[0] + 0.5, c[1], 4.0, 4.0])
            asg = hambox(atss(gt, valid, p, x, y, s), gt, valid, p)
        else:
            asg = {"uniform": uniform, "topk": topk}[name](gt, valid, p, x, y, s)
        assert int((asg.matched_gt_inds[0] == 0).sum()) >= 1, c


def test_stats_by_size_bucket() -> None:
    # SMALL_GT (sizes 10 and 4: both < 16 px) under the top-k case: 2 + 2 positives.
    gt, valid = SMALL_GT
    p = preds(a6=xyxy(5, 1.5, 15, 11.5), a17=xyxy(5, 2, 15, 12), a10=xyxy(11, 11, 15, 15))
    stats = summarize_stats(assignment_stats(topk(gt, valid, p, *grid(), k=3), gt, valid))
    assert stats["pos_per_obj_lt16"] == 2.0 and stats["pos_per_obj_16_32"] == 0.0
    assert stats["no_pos_share"] == 0.0
    assert stats["pos_mean_iou"] == pytest.approx((1 + 14 / 18 + 0 + 95 / 105) / 4)
    atss_stats = summarize_stats(assignment_stats(atss(*ATSS_GT, preds(), *grid(), k=2),
                                                  *ATSS_GT))
    assert atss_stats["no_pos_share"] == 0.5  # the tiny object has none
    assert atss_stats["pos_per_obj_32_96"] == 1.0 and atss_stats["pos_per_obj_lt16"] == 0.0


def loss_inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x, y, s = production_grid()
    a = x.numel()
    raw = torch.randn(2, a, 6, generator=g)
    boxes = torch.cat([(raw[..., :2] + torch.stack([x, y], 1)) * s[:, None],
                       raw[..., 2:4].exp() * s[:, None]], -1)
    targets = torch.zeros(2, 4, 5)
    targets[0, :3, 1:] = torch.tensor([[30.0, 30, 4, 4], [60, 70, 20, 30], [100, 40, 50, 40]])
    targets[1, :1, 1:] = torch.tensor([[64.0, 64, 8, 6]])
    return {"outputs": torch.cat([boxes, raw[..., 4:]], -1), "raw": raw[..., :4].clone(),
            "x": x, "y": y, "s": s, "targets": targets}


@pytest.mark.parametrize("assigner", ["simota", "atss", "uniform", "topk", "dynamic", "tood"])
@pytest.mark.parametrize("hambox_on", [False, True])
@pytest.mark.parametrize("cls_target", ["iou", "cleanliness", "qfl"])
def test_every_option_trains_with_finite_gradients(
    assigner: str, hambox_on: bool, cls_target: str
) -> None:
    d = loss_inputs()
    outputs = d["outputs"].requires_grad_(True)
    raw = d["raw"].requires_grad_(True)
    out = yolox_loss(outputs, raw, d["x"], d["y"], d["s"], d["targets"], num_classes=1,
                     use_l1=True, assign_stats=True,
                     settings=loss_settings(assigner=assigner, hambox=hambox_on,
                                            cls_target=cls_target))
    stats = out.pop("assign_stats")
    assert float(stats["positives"]) > 0
    out["total_loss"].backward()
    assert torch.isfinite(outputs.grad).all() and outputs.grad.abs().sum() > 0
    assert torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0


def test_nwd_overlap_in_simota_changes_the_tiny_objects_assignment_only_when_asked() -> None:
    d = loss_inputs()
    base = yolox_loss(d["outputs"], d["raw"], d["x"], d["y"], d["s"], d["targets"],
                      num_classes=1)
    same = yolox_loss(d["outputs"], d["raw"], d["x"], d["y"], d["s"], d["targets"],
                      num_classes=1, settings=loss_settings(assign_overlap="iou"))
    assert all(torch.equal(base[k], same[k]) for k in base)
    nwd = yolox_loss(d["outputs"], d["raw"], d["x"], d["y"], d["s"], d["targets"],
                     num_classes=1,
                     settings=loss_settings(assign_overlap="nwd", assign_mode="per_image"))
    nwd_b = yolox_loss(d["outputs"], d["raw"], d["x"], d["y"], d["s"], d["targets"],
                       num_classes=1, settings=loss_settings(assign_overlap="nwd"))
    assert all(torch.equal(nwd[k], nwd_b[k]) for k in nwd)  # batched == per image with NWD too
    assert float(nwd["num_fg"]) > float(base["num_fg"])  # NWD's sums give larger dynamic k's


def test_unknown_options_name_the_option() -> None:
    d = loss_inputs()
    for key in ("assigner", "assign_overlap", "cls_target"):
        with pytest.raises(ValueError, match=f"unknown {key} 'typo'"):
            yolox_loss(d["outputs"], d["raw"], d["x"], d["y"], d["s"], d["targets"],
                       num_classes=1, settings=loss_settings(**{key: "typo"}))


@pytest.mark.parametrize("name", ["atss", "uniform", "topk", "dynamic", "hambox"])
def test_zero_objects_and_padding_give_background(name: str) -> None:
    x, y, s = grid()
    for g in (0, 2):  # no object row at all, and two padding rows
        gt, valid = torch.zeros(2, g, 4), torch.zeros(2, g, dtype=torch.bool)
        if name == "hambox":
            asg = hambox(topk(gt, valid, preds().expand(2, -1, -1), x, y, s), gt, valid,
                         preds().expand(2, -1, -1))
        else:
            fn = {"atss": atss, "uniform": uniform, "topk": topk, "dynamic": dynamic}[name]
            asg = fn(gt, valid, preds().expand(2, -1, -1), x, y, s)
        assert not asg.fg_mask.any() and (asg.matched_gt_inds == -1).all()


@pytest.mark.parametrize(
    ("key", "value"),
    [("assigner", "atsss"), ("assign_overlap", "giou"), ("cls_target", "soft"), ("assign_k", -1),
     ("dynamic_interval", 0), ("hambox", "yes")],
)
def test_config_errors_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        TrialConfig(**{key: value})
    assert TrialConfig().assigner == "simota" and TrialConfig().cls_target == "iou"
