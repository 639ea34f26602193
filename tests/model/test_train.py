from __future__ import annotations

import dataclasses
import math
import operator
from pathlib import Path

import pytest
import torch

import model.trainer as train_mod
from model.assign import hambox as hambox_module
from model.assign.diagnostics import ASSIGN_DIAGNOSTICS
from model.checkpoint import load_checkpoint, load_trained_detector
from model.coco_eval import TEST_METRICS, VAL_METRICS
from model.config import ConfigError, TrialConfig
from model.data.synth import generate_flow_like
from model.trainer import TrainingError, is_eval_epoch, multiscale_size, train_detector
from model.yolox import build_yolox_from_config
from model.yolox.loss import LOSS_KEYS


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared 2-core machine the
    OpenMP spin-waits of two threads make a run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flow")
    # 10 training images: 8 train (4 iterations of 2) and 2 held out for validation
    return generate_flow_like(root, n_train=10, n_test=4, width=160, height=96, video=False)


def tiny(data: Path, **overrides) -> TrialConfig:
    """2 images a batch, 4 iterations an epoch; 12 iterations over 3 epochs cross the first
    multi-scale change (iteration 10) and the no-aug switch (epoch 3)."""
    cfg = TrialConfig(
        size="nano", data=str(data), img_size=64, batch_size=2, epochs=3, no_aug_epochs=1,
        warmup_epochs=1, eval_interval=2, workers=0, multiscale=1, device="cpu", seed=3,
        lr=0.02,
    )
    return dataclasses.replace(cfg, **overrides)


class Killed(RuntimeError):
    pass


@pytest.fixture(scope="module")
def uninterrupted(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("run_a")
    reports: list[tuple[dict, str | None]] = []
    result = train_detector(
        tiny(data_dir), report=lambda m, p: reports.append((m, p)), checkpoint_dir=out,
        progress=False,
    )
    return result, reports, out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(path)
    return {**{f"model.{k}": v for k, v in state["model"].items()},
            **{f"ema.{k}": v for k, v in state["ema"]["module"].items()}}


def test_reports_after_each_evaluation_with_losses_and_coco_numbers(uninterrupted) -> None:
    result, reports, out = uninterrupted
    # eval_interval 2 -> epoch 2; the last (no-aug) epoch is always evaluated
    assert [m["epoch"] for m, _ in reports] == [2, 3]
    assert [m["iteration"] for m, _ in reports] == [8, 12]
    first, last = reports[0][0], reports[1][0]
    for key in ("lr", "total_loss", "iou_loss", "conf_loss", "cls_loss", "l1_loss",
                "images_per_s", "train_time_s", *VAL_METRICS):
        assert isinstance(first[key], float), key
    # the L1 term is switched on for the no-aug epoch only
    assert first["l1_loss"] == 0.0 and last["l1_loss"] > 0.0
    assert last["lr"] == pytest.approx(0.02 * 2 / 64 * 0.05)  # constant min lr in no-aug epochs
    assert reports[1][1] == str(out / "last.pt")
    # validation every evaluation; the test split once, in the last report, on the checkpoint
    # chosen on validation (best.pt), with its bootstrap interval over the 4 test images
    assert not any(k.startswith("test_") for k in first)
    assert last["test_epoch"] == result["best_epoch"] and last["test_images"] == 4
    assert {k: result[k] for k in TEST_METRICS} == {k: last[k] for k in TEST_METRICS}
    assert last["test_mAP_lo"] <= last["test_mAP"] <= last["test_mAP_hi"]
    chosen = next(m for m, _ in reports if m["epoch"] == result["best_epoch"])
    assert result["best_val_mAP"] == chosen["val_mAP"] == max(m["val_mAP"] for m, _ in reports)
    assert {k: result[k] for k in VAL_METRICS} == {k: chosen[k] for k in VAL_METRICS}
    assert result["epochs"] == 3 and result["params"] > 0
    assert result["last_checkpoint"] == str(out / "last.pt")
    assert Path(result["best_checkpoint"]).is_file() and Path(result["test_eval"]).is_file()
    assert result["summary"].count("\n") == 11 and result["test_summary"].count("\n") == 11
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 3 and len(state["history"]) == 2
    assert state["config"] == tiny(Path(state["config"]["data"])).to_dict()


def test_killed_and_resumed_run_ends_identical(uninterrupted, data_dir, tmp_path) -> None:
    result_a, reports_a, out_a = uninterrupted

    def kill(metrics: dict, path: str | None) -> None:
        raise Killed(f"stopped after epoch {metrics['epoch']}")

    with pytest.raises(Killed, match="after epoch 2"):
        train_detector(tiny(data_dir), report=kill, checkpoint_dir=tmp_path, progress=False)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2
    reports_b: list[dict] = []
    result_b = train_detector(
        tiny(data_dir), report=lambda m, p: reports_b.append(m), checkpoint_dir=tmp_path,
        progress=False,
    )
    assert result_b["resumed_from_epoch"] == 2
    assert [m["epoch"] for m in reports_b] == [3]
    for key in (*VAL_METRICS, *TEST_METRICS, "total_loss", "iou_loss", "conf_loss", "l1_loss",
                "lr"):
        assert reports_b[0][key] == reports_a[1][0][key], key
    wa, wb = _weights(out_a / "last.pt"), _weights(tmp_path / "last.pt")
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    # a finished run resumed again trains nothing and returns the same result
    again = train_detector(tiny(data_dir), checkpoint_dir=tmp_path, progress=False)
    keys = (*VAL_METRICS, *TEST_METRICS, "test_mAP_lo", "test_mAP_hi")
    assert {k: again[k] for k in keys} == {k: result_a[k] for k in keys}


def test_same_config_and_seed_reproduce_the_run(uninterrupted, data_dir, tmp_path) -> None:
    _, reports_a, out_a = uninterrupted
    reports: list[dict] = []
    train_detector(tiny(data_dir), report=lambda m, p: reports.append(m), checkpoint_dir=tmp_path,
                   progress=False)
    for key in (*VAL_METRICS, "total_loss", "conf_loss"):
        assert [m[key] for m in reports] == [m[key] for m, _ in reports_a], key
    wa, wb = _weights(out_a / "last.pt"), _weights(tmp_path / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_channels_last_runs_on_cpu_and_its_checkpoint_loads_anywhere(data_dir, tmp_path) -> None:
    # (the layout gives the same step as contiguous tensors:
    # tests/model/yolox/test_yolox_network.py)
    cfg = tiny(data_dir, channels_last=True, epochs=1, no_aug_epochs=0, eval_interval=1)
    result = train_detector(cfg, checkpoint_dir=tmp_path, progress=False)
    assert result["epochs"] == 1
    state = load_checkpoint(tmp_path / "last.pt")
    stem = state["model"]["backbone.backbone.stem.conv.conv.weight"]
    assert stem.is_contiguous(memory_format=torch.channels_last)
    assert not stem.is_contiguous()
    net = build_yolox_from_config(tiny(data_dir))
    net.load_state_dict(state["ema"]["module"])


def test_resume_refuses_a_checkpoint_of_another_config(uninterrupted, data_dir) -> None:
    _, _, out = uninterrupted
    with pytest.raises(ConfigError, match=r"lr: 0.02 -> 0.01.*--no-resume"):
        train_detector(tiny(data_dir, lr=0.01), checkpoint_dir=out, progress=False)


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(
    data_dir, tmp_path, monkeypatch
) -> None:
    build = train_mod.build_yolox_from_config
    calls = {"n": 0}

    def build_poisoned(cfg: TrialConfig):
        net = build(cfg)

        class Poisoned(type(net)):  # a subclass, so the EMA deep copy stays consistent
            def forward(self, images, targets=None):
                out = super().forward(images, targets)
                if targets is not None:
                    calls["n"] += 1
                    if calls["n"] == 6:  # second iteration of epoch 2
                        out = {**out, "total_loss": out["total_loss"] * float("nan")}
                return out

        net.__class__ = Poisoned
        return net

    monkeypatch.setattr(train_mod, "build_yolox_from_config", build_poisoned)
    cfg = tiny(data_dir, epochs=2, eval_interval=1, no_aug_epochs=0)
    with pytest.raises(TrainingError) as err:
        train_detector(cfg, checkpoint_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert "non-finite loss at step 5 (epoch 2/2, iteration 2/4)" in msg
    assert "total_loss=nan" in msg and "iou_loss=" in msg
    assert f"{tmp_path / 'last.pt'} (after epoch 1) is intact" in msg
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1
    net, loaded_cfg, _ = load_trained_detector(tmp_path / "last.pt")
    assert loaded_cfg == cfg
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_num_classes_mismatch_names_both_values(data_dir) -> None:
    with pytest.raises(ConfigError, match=r"'num_classes' is 3 but the dataset .* has 1 class: "
                       r"bottle: \d+ boxes in 13 files \(e\.g\. .*\); set num_classes: 1 to train "
                       r"every class \(--set num_classes=1\)$"):
        train_detector(tiny(data_dir, num_classes=3), progress=False)


def test_ssl_without_artifact_points_to_the_cli(data_dir) -> None:
    with pytest.raises(ConfigError,
                       match="pretrain_artifact.*study/cli/train.py.*study/cli/pretrain.py"):
        train_detector(tiny(data_dir, pretrain="ssl"), progress=False)


def test_backbone_artifact_is_loaded_and_counted(data_dir, tmp_path) -> None:
    from model.pretraining.artifact import FORMAT_VERSION, ArtifactError
    from model.yolox import build_yolox_from_config

    cfg = tiny(data_dir, pretrain="center_loss", epochs=1, no_aug_epochs=0, warmup_epochs=0)
    backbone = build_yolox_from_config(cfg).backbone.backbone.state_dict()
    art = tmp_path / "art.pt"
    torch.save({"method": "center_loss", "size": "nano", "backbone": backbone,
                "format_version": FORMAT_VERSION}, art)
    result = train_detector(
        dataclasses.replace(cfg, pretrain_artifact=str(art)), progress=False
    )
    assert result["pretrain_loaded"] == len(backbone)
    torch.save({"size": "s", "backbone": backbone, "format_version": FORMAT_VERSION}, art)
    with pytest.raises(ArtifactError, match="holds a YOLOX-s backbone but the trial is YOLOX-nano"):
        train_detector(dataclasses.replace(cfg, pretrain_artifact=str(art)), progress=False)


def test_multiscale_sizes_are_seeded_and_in_range() -> None:
    cfg = TrialConfig(img_size=320, multiscale=2, seed=5)
    assert [multiscale_size(cfg, i) for i in range(10)] == [320] * 10
    sizes = [multiscale_size(cfg, i) for i in range(10, 400)]
    assert set(sizes) <= {256, 288, 320, 352, 384} and len(set(sizes)) == 5
    assert sizes == [multiscale_size(cfg, i) for i in range(10, 400)]  # a function of iteration
    assert len(set(sizes[:10])) == 1  # constant within a block of 10
    assert multiscale_size(dataclasses.replace(cfg, multiscale=0), 55) == 320
    # with tiles the tile is the network input, and it varies around tile_size the same way
    tiles = dataclasses.replace(cfg, input_mode="tiles", tile_size=128, img_size=640)
    assert multiscale_size(tiles, 3) == 128
    assert {multiscale_size(tiles, i) for i in range(10, 400)} == {64, 96, 128, 160, 192}


def test_eval_epochs_every_interval_every_no_aug_epoch_and_the_last() -> None:
    cfg = TrialConfig(epochs=12, eval_interval=5, no_aug_epochs=3)
    assert [e + 1 for e in range(12) if is_eval_epoch(cfg, e)] == [5, 10, 11, 12]


def test_the_ema_follows_the_configured_decay_and_ramp(data_dir: Path) -> None:
    trainer = train_mod._Trainer(tiny(data_dir, ema_decay=0.98, ema_ramp=50.0), None, False)
    trainer.setup(resume=False)
    assert trainer.ema is not None
    assert trainer.ema.decay(100) == pytest.approx(0.98 * (1 - math.exp(-2)))


def test_a_tile_run_counts_cut_boxes_and_resumes_identical(data_dir, tmp_path) -> None:
    cfg = tiny(data_dir, input_mode="tiles", tile_size=64, tile_min_visible=0.6)
    reports_a: list[dict] = []
    result_a = train_detector(cfg, report=lambda m, p: reports_a.append(m),
                              checkpoint_dir=tmp_path / "a", progress=False)
    assert result_a["input_mode"] == "tiles"
    counts = result_a["tile_counts"]
    assert counts["tile_boxes_whole"] > 0 and counts["tile_boxes_dropped"] > 0
    assert all(m["tile_boxes_whole"] > 0 for m in reports_a)  # each evaluated epoch's counts

    def kill(metrics: dict, path: str | None) -> None:
        raise Killed(f"stopped after epoch {metrics['epoch']}")

    with pytest.raises(Killed, match="after epoch 2"):
        train_detector(cfg, report=kill, checkpoint_dir=tmp_path / "b", progress=False)
    reports_b: list[dict] = []
    result_b = train_detector(cfg, report=lambda m, p: reports_b.append(m),
                              checkpoint_dir=tmp_path / "b", progress=False)
    assert result_b["resumed_from_epoch"] == 2
    for key in (*VAL_METRICS, "total_loss", "tile_boxes_whole", "tile_boxes_dropped"):
        assert reports_b[-1][key] == reports_a[-1][key], key
    assert result_b["tile_counts"] == counts
    wa, wb = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


def test_a_checkpoint_from_before_the_tile_keys_still_resumes(data_dir, tmp_path) -> None:
    cfg = tiny(data_dir)

    def kill(metrics: dict, path: str | None) -> None:
        raise Killed("stop")

    with pytest.raises(Killed):
        train_detector(cfg, report=kill, checkpoint_dir=tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "last.pt")
    for key in ("input_mode", "tile_size", "tile_overlap", "eval_clip_boxes"):
        del state["config"][key]  # as written before those keys existed
    torch.save(state, tmp_path / "last.pt")
    result = train_detector(cfg, checkpoint_dir=tmp_path, progress=False)
    assert result["resumed_from_epoch"] == 2


def test_an_extra_class_is_named_with_both_fixes_and_classes_keeps_one(tmp_path, caplog) -> None:
    from model.trainer import load_trial_data
    from tests.data_builders import make_flow

    make_flow(tmp_path, train={"a": [("bottle", 2, 2, 6, 6), ("can", 9, 9, 19, 19)],
                               "b": [("bottle", 3, 3, 9, 9)], "c": [("can", 4, 4, 8, 8)],
                               "d": [("can", 1, 1, 5, 5)]}, test={"t": []})
    cfg = TrialConfig(data=str(tmp_path), num_classes=1)
    with pytest.raises(ConfigError) as e:
        load_trial_data(cfg)
    ann = "training/annotations"
    assert str(e.value) == (
        f"key 'num_classes' is 1 but the dataset {tmp_path} has 2 classes: bottle: 2 boxes in 2 "
        f"files ({ann}/a.xml, {ann}/b.xml); can: 3 boxes in 3 files ({ann}/a.xml, {ann}/d.xml, "
        f"{ann}/c.xml); set num_classes: 2 to train every class (--set num_classes=2), or "
        "classes: can to keep only that (--set classes=can; the other boxes are dropped and "
        "counted)"
    )
    assert "class can: 3 boxes in 3 files" in caplog.text  # the data warning is logged
    dataset = load_trial_data(dataclasses.replace(cfg, classes="bottle"))
    assert dataset.train.class_names == ["bottle"]
    assert sum(i.kind == "excluded_class" for i in dataset.report.issues) == 3


def test_resume_takes_a_key_the_checkpoint_predates_as_its_default(tmp_path) -> None:
    cfg = TrialConfig()
    old = {k: v for k, v in cfg.to_dict().items() if k != "classes"}  # written before issue 14
    train_mod._check_resume({"config": old, "iters_per_epoch": 4}, cfg, tmp_path / "last.pt", 4)
    with pytest.raises(ConfigError, match=r"different config \(classes: '' -> 'bottle'\)"):
        train_mod._check_resume({"config": old, "iters_per_epoch": 4},
                                dataclasses.replace(cfg, classes="bottle"), tmp_path / "l.pt", 4)


def test_a_dynamic_run_saves_its_state_and_a_resume_continues_it(data_dir, tmp_path) -> None:
    """Dynamic R-CNN's threshold and beta (updated every 8 iterations here: at iteration 8, the
    end of epoch 2) are in last.pt, and a resume continues them, not the initial 0.4 / 1.0."""
    cfg = tiny(data_dir, assigner="dynamic", dynamic_interval=8)
    reports: list[dict] = []
    train_detector(cfg, report=lambda m, p: reports.append(m), checkpoint_dir=tmp_path / "a",
                   progress=False)
    full = load_checkpoint(tmp_path / "a" / "last.pt")["assign_state"]
    assert full["iteration"] == 12 and len(full["beta_history"]) == 4
    # per image with an object since the update at iteration 8: epoch 3 sees every training
    # image once
    with_objects = {a["image_id"] for a in train_mod.load_trial_data(cfg).train.annotations}
    assert full["iou_history"] == [0.0] * len(with_objects)
    # the diagnostics are in every report (and so in metrics.json and the history)
    for key in ("pos_per_obj_lt16", "pos_per_obj_16_32", "no_pos_share", "pos_mean_iou"):
        assert all(key in m and math.isfinite(m[key]) for m in reports), key

    def kill(metrics: dict, path: str | None) -> None:
        raise Killed(f"stopped after epoch {metrics['epoch']}")

    with pytest.raises(Killed, match="after epoch 2"):
        train_detector(cfg, report=kill, checkpoint_dir=tmp_path / "b", progress=False)
    last = tmp_path / "b" / "last.pt"
    mid = load_checkpoint(last)["assign_state"]
    assert mid["iteration"] == 8 and mid["iou_history"] == mid["beta_history"] == []
    train_detector(cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert load_checkpoint(last)["assign_state"] == full
    # a raised threshold in the checkpoint is the one the resumed epoch assigns with
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    state["epoch"], state["assign_state"] = 2, {**mid, "iou_thr": 0.55}
    torch.save(state, tmp_path / "c.pt")
    (tmp_path / "c").mkdir()
    (tmp_path / "c.pt").rename(tmp_path / "c" / "last.pt")
    seen: list[float] = []
    real = train_mod.build_yolox_from_config

    def spy(c: TrialConfig):
        net = real(c)
        observe = net.head.dynamic_state.observe

        def record(*args):
            seen.append(net.head.dynamic_state.iou_thr)
            observe(*args)

        net.head.dynamic_state.observe = record
        return net

    train_mod.build_yolox_from_config, saved = spy, train_mod.build_yolox_from_config
    try:
        train_detector(cfg, checkpoint_dir=tmp_path / "c", progress=False)
    finally:
        train_mod.build_yolox_from_config = saved
    assert seen == [0.55] * 4


def one_epoch(data: Path, **overrides) -> dict:
    """The report of a 1-epoch run (4 steps) of ``tiny`` with ``overrides``."""
    reports: list[dict] = []
    cfg = tiny(data, epochs=1, no_aug_epochs=1, warmup_epochs=0, eval_interval=1, **overrides)
    result = train_detector(cfg, report=lambda m, p: reports.append(m), progress=False)
    (m,) = reports
    # (ATSS may leave every one of these few-px objects without a positive: num_fg 0)
    assert math.isfinite(m["total_loss"]) and m["num_fg"] >= 0
    assert 0 <= m["no_pos_share"] <= 1 and 0 <= m["pos_mean_iou"] <= 1
    assert result["assignment"] == {k: m[k] for k in result["assignment"]}
    assert len(result["assignment"]) == len(ASSIGN_DIAGNOSTICS) == 6
    return m


@pytest.fixture(scope="module")
def plain_epoch(data_dir: Path) -> dict:
    """The official SimOTA / IoU-target run that each axis below is compared with."""
    m = one_epoch(data_dir)
    assert m["num_fg"] > 0  # SimOTA gives every object at least one positive
    return m


@pytest.mark.parametrize(
    ("overrides", "key", "relation"),
    [
        # every option at its default, spelled out: the same numbers, so the run is deterministic
        # and a difference in the cases below comes from their axis
        ({"assigner": "simota", "assign_overlap": "iou", "cls_target": "iou", "reg_loss": "iou",
          "hambox": False}, None, None),
        # ATSS (IoU >= mean + std of the candidates' priors, centre inside the box) leaves most of
        # these few-px objects without a positive; SimOTA gives nearly every object one
        ({"assigner": "atss"}, "no_pos_share", operator.gt),
        # uniform matching keeps a tiny object's nearest cell (the 0.15 prior-IoU rule drops the
        # rest) whatever its prediction; SimOTA's cost picks the best-overlapping predictions
        ({"assigner": "uniform"}, "pos_mean_iou", operator.lt),
        # k = 9 for every object against SimOTA's max(1, int(sum of tiny IoUs)) = 1
        ({"assigner": "topk"}, "pos_per_obj_lt16", lambda got, base: base < got <= 9),
        # Dynamic SmoothL1 (beta <= 1) lies below L1 term by term: x^2 / 2 beta or |x| - beta / 2
        ({"assigner": "dynamic"}, "l1_loss", operator.lt),
        # QFL scales each BCE term by |y - s|^2; near the prior (s ~ 0.01, y ~ IoU ~ 0.04) a lot
        ({"cls_target": "qfl"}, "cls_loss", lambda got, base: got < base / 10),
        # the first step's positives are the plain run's; their class targets differ
        ({"cls_target": "cleanliness"}, "cls_loss", operator.ne),
        # 1 - NWD of nearby few-px boxes (~0.5) against 1 - IoU^2 (~1 while IoUs are ~0.04)
        ({"reg_loss": "nwd"}, "iou_loss", operator.lt),
        # NWD sums of disjoint tiny candidates exceed their IoU sums: larger dynamic k
        ({"assign_overlap": "nwd"}, "pos_per_obj_lt16", operator.gt),
        # TOOD: up to m = 13 positives of t > 0 against SimOTA's dynamic k of about 1
        ({"assigner": "tood"}, "pos_per_obj_lt16", lambda got, base: base < got <= 13),
    ],
    ids=["defaults", "atss", "uniform", "topk", "dynamic", "qfl", "cleanliness", "nwd-loss",
         "simota-nwd-overlap", "tood"],
)
def test_the_assignment_axes_train_an_epoch(data_dir, plain_epoch, overrides, key, relation):
    """One epoch of each axis against the plain run (same seed): each moves the number it acts
    on, in the direction its rule predicts. The hand-worked values of each rule are in
    tests/model/assign/test_rules.py and test_simota_rules.py."""
    m = one_epoch(data_dir, **overrides)
    if key is None:
        for k in (*LOSS_KEYS, *ASSIGN_DIAGNOSTICS):
            assert m[k] == plain_epoch[k], k
    else:
        assert relation(m[key], plain_epoch[key]), (key, m[key], plain_epoch[key])


def test_hambox_runs_on_every_step(data_dir, monkeypatch) -> None:
    """``hambox: true`` reaches the loss: HAMBox compensation runs on each of the 4 steps'
    assignments (8 training images, batch 2). Its effect is nil here (no untrained prediction
    reaches IoU 0.35 with these few-px objects), so the call itself is what can be checked; its
    rule is worked by hand in tests/model/assign/test_rules.py."""
    calls: list[bool] = []
    real = hambox_module.hambox

    def spy(asg, *args, **kwargs):
        out = real(asg, *args, **kwargs)
        calls.append(out.weights is not None)
        return out

    monkeypatch.setattr(hambox_module, "hambox", spy)
    one_epoch(data_dir, assigner="atss", hambox=True)
    assert calls == [True] * 4
    calls.clear()
    one_epoch(data_dir, assigner="atss")
    assert calls == []


def test_a_truncated_last_checkpoint_resumes_from_the_one_before_and_says_so(
    data_dir, tmp_path, caplog
) -> None:
    """last.pt cut in half (a disk error, a copy that stopped): the resume takes last.prev.pt
    (the checkpoint last.pt replaced), says so in a warning, trains the lost epoch again and
    ends as an uninterrupted run does."""
    cfg = tiny(data_dir, eval_interval=1)
    ref: list[dict] = []
    train_detector(cfg, report=lambda m, p: ref.append(m), checkpoint_dir=tmp_path / "ref",
                   progress=False)

    def kill(metrics: dict, path: str | None) -> None:
        if metrics["epoch"] == 2:
            raise Killed("stopped after epoch 2")

    out = tmp_path / "run"
    with pytest.raises(Killed):
        train_detector(cfg, report=kill, checkpoint_dir=out, progress=False)
    assert load_checkpoint(out / "last.prev.pt")["epoch"] == 1
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    reports: list[dict] = []
    with caplog.at_level("WARNING", logger="model.trainer"):
        result = train_detector(cfg, report=lambda m, p: reports.append(m), checkpoint_dir=out,
                                progress=False)
    (warning,) = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert f"{out / 'last.pt'} is unreadable" in warning
    assert f"{out / 'last.prev.pt'} (after epoch 1)" in warning
    assert result["resumed_from_epoch"] == 1
    assert [m["epoch"] for m in reports] == [2, 3]
    for key in (*VAL_METRICS, "total_loss", "lr"):
        assert [m[key] for m in reports] == [m[key] for m in ref[1:]], key
