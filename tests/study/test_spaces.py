"""Search spaces (study/space/definition.py) and the plan built from them (study/space/plan.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.config import ConfigError
from study.space.definition import SpaceError, load_space, shipped_spaces
from study.space.plan import build_plan, load_plan, trial_id

SHIPPED = {p.stem: p for p in shipped_spaces()}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_spaces_load_and_plan(name: str) -> None:
    space = load_space(name)
    assert space.path == SHIPPED[name]
    assert space.metric == "mAP" and space.mode == "max"
    for data in (None, "/tmp"):  # quick profile and the space's own settings
        plan = build_plan(space, data=data)
        if space.grid:
            n = plan.seeds  # the quick profile may repeat the grid (quick.seeds)
            quick_seeds = 2 if space.quick_seeds == "auto" else space.quick_seeds  # (round 1)
            assert n == (quick_seeds or 1 if data is None else 1)
            for values in space.grid_for(data is None).values():
                n *= len(values)
            assert len(plan.trials) == n
            assert len(plan.baseline_ids()) == plan.seeds


def test_ablation_space_is_the_flow_study() -> None:
    space = load_space("ablation")
    assert space.grid == {
        "pretrain": ["coco", "center_loss", "ssl"],
        "reg_loss": ["iou", "ciou"],
        "size": ["nano", "tiny", "s"],
    }
    assert space.baseline == {"pretrain": "coco", "reg_loss": "iou", "size": "s"}
    full = build_plan(space, data="/data/flow")
    cfg = full.trial("ssl-ciou-tiny").config
    assert (cfg.img_size, cfg.epochs, cfg.batch_size, cfg.data) == (640, 300, 64, "/data/flow")
    # the quick profile pins YOLOX-nano and runs a random-init stand-in for the coco baseline
    plan = build_plan(space)
    assert plan.grid == {**space.grid, "pretrain": ["none", "center_loss"], "size": ["nano"]}
    # seeds where they decide (quick.seeds: auto): two of every grid point first, paired by seed,
    # then rounds within the wall-time budget (quick.budget)
    assert [t.id for t in plan.trials][:3] == [
        "none-iou-nano-seed0", "none-iou-nano-seed1", "none-ciou-nano-seed0"
    ]
    assert plan.seeds == 2 and len(plan.trials) == 8
    assert plan.race is not None and (plan.race.budget_trials, plan.race.budget_s) == (None, 1440)
    assert build_plan(space, seeds=3).race is None  # --seeds N: exactly N, no race
    assert build_plan(space, seeds="auto", budget="20").race.budget_trials == 20
    assert plan.baseline_ids() == ["none-iou-nano-seed0", "none-iou-nano-seed1"]
    assert plan.stand_in_for == {"pretrain": "coco", "size": "s"}
    assert any("stand-in for the study's pretrain=coco, size=s" in n for n in plan.notes)
    assert any("size pinned to nano" in n and "--full" in n for n in plan.notes)
    quick = plan.trial("center_loss-ciou-nano-seed1").config
    assert quick.seed == 1 and quick.split_seed == 0  # every trial validates on one hold-out
    assert quick.data == "" and quick.epochs < 30 and quick.input_mode == "tiles"
    assert quick.workers == 0 and quick.device == "cpu"
    assert (quick.pretrain, quick.reg_loss, quick.size) == ("center_loss", "ciou", "nano")
    # --full: every grid value of the space as well, on the quick data (coco included)
    full_quick = build_plan(space, full=True)
    assert len(full_quick.trials) == 4 * 2 * 3 * 2  # none, center_loss, coco, ssl; 2 seeds
    assert full_quick.trial("coco-iou-s-seed0").config.epochs == quick.epochs
    assert full_quick.baseline_ids() == ["none-iou-nano-seed0", "none-iou-nano-seed1"]
    assert len(build_plan(space, full=True, seeds=1).trials) == 4 * 2 * 3
    with pytest.raises(ConfigError, match="--full"):
        build_plan(space, data="/data/flow", full=True)
    # with --data nothing of the quick profile applies: the study's own baseline
    assert full.baseline_ids() == ["coco-iou-s"] and full.stand_in_for == {}


def test_results_csv_names_the_stand_in_baseline(tmp_path: Path) -> None:
    from study.outputs.results import read_csv, write_results

    plan = build_plan(load_space("ablation"))
    write_results(plan, tmp_path)
    rows = read_csv(tmp_path / "results.csv")
    roles = {r["id"]: r["role"] for r in rows}
    for seed in (0, 1):
        assert roles.pop(f"none-iou-nano-seed{seed}") == (
            "baseline (stand-in for pretrain=coco, size=s)"
        )
    assert set(roles.values()) == {None}  # an empty cell reads back as None
    own = build_plan(load_space("ablation"), data="/d")
    write_results(own, tmp_path)
    rows = read_csv(tmp_path / "results.csv")
    assert [(r["id"], r["role"]) for r in rows if r["role"]] == [("coco-iou-s", "baseline")]


def test_quick_profile_for_cuda_is_chosen_by_flag_and_says_so() -> None:
    from study.space.plan import describe_profile

    space = load_space("ablation")
    cpu, gpu = build_plan(space), build_plan(space, cuda=True)
    c, g = cpu.trials[0].config, gpu.trials[0].config
    assert (c.device, g.device) == ("cpu", "cuda")
    assert g.epochs > c.epochs and g.batch_size > c.batch_size
    assert gpu.resources.gpus > 0 and cpu.resources.gpus == 0
    assert "for CUDA (--device cpu for the CPU profile)" in describe_profile(gpu)
    assert "for CPU" in describe_profile(cpu)
    # --data: the space's own settings whatever the device
    assert build_plan(space, data="/d", cuda=False).resources == space.resources


def test_driver_picks_the_quick_profile_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from study.layout import StudyError
    from study.running.driver import StudyArgs, make_plan, quick_on_cuda

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert quick_on_cuda("auto") and quick_on_cuda("cuda") and not quick_on_cuda("cpu")
    assert make_plan(StudyArgs(space="ablation")).cuda
    assert not make_plan(StudyArgs(space="ablation", device="cpu")).cuda
    on_data = make_plan(StudyArgs(space="ablation", data="/tmp", device="cpu"))
    assert not on_data.cuda and on_data.trials[0].config.device == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not quick_on_cuda("auto")
    with pytest.raises(StudyError, match="no CUDA device"):
        quick_on_cuda("cuda")


def test_quick_seeds_are_the_default_and_the_flag_wins(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "grid: {reg_loss: [iou, ciou]}\nbaseline: {reg_loss: iou}\nquick: {seeds: 3}\n",
    )
    space = load_space(path)
    assert build_plan(space).seeds == 3 and len(build_plan(space).trials) == 6
    assert build_plan(space, seeds=1).seeds == 1
    assert build_plan(space, data="/d").seeds == 1  # the quick profile's only


def test_hparams_space_samples_with_asha() -> None:
    space = load_space("hparams")
    assert space.sampled and not space.grid
    assert {"lr", "weight_decay", "mosaic_prob", "mixup_prob", "multiscale"} <= set(space.sample)
    assert space.sample["lr"].kind == "loguniform"
    assert space.scheduler.kind == "asha" and space.scheduler.max_t == 300
    assert space.quick_num_samples is not None and space.quick_num_samples < space.num_samples
    dist = space.sample["multiscale"].to_optuna()
    assert (dist.low, dist.high, dist.step) == (0, 5, 1)
    assert space.sample["mosaic_centre_crop"].to_optuna().choices == (False, True)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("grid: {size: [nano]}\nsurprise: 1\n", "surprise"),  # unknown top-level key
        ("fixed: {epoch: 3}\n", "epoch"),  # unknown config key (did you mean 'epochs')
        ("grid: {sizes: [nano, s]}\n", "sizes"),
        ("fixed: {epochs: ten}\n", "epochs"),  # wrong type
        ("grid: {size: [nano, huge]}\n", "size"),  # not an allowed value
        ("grid: {lr: [0.01, fast]}\n", "lr"),
        ("grid: {size: []}\n", "size"),  # empty grid
        ("grid: {size: nano}\n", "size"),  # not a list
        ("sample: {lr: {type: gaussian, low: 0.1, high: 1}}\n", "lr"),  # bad distribution
        ("sample: {lr: {type: loguniform, low: 0.0, high: 1}}\n", "lr"),
        ("sample: {lr: {type: uniform, low: 0.5, high: 0.1}}\n", "lr"),
        ("sample: {lr: {type: uniform, low: 0.1}}\n", "lr"),
        ("sample: {lr: {type: uniform, low: 0.1, high: 1, step: 2}}\n", "lr"),
        ("sample: {size: {type: choice, values: []}}\n", "size"),
        ("sample: {epochs: {type: uniform, low: 1, high: 9}}\n", "epochs"),  # float for an int
        ("sample: {mosaic_prob: {type: uniform, low: 0.5, high: 1.5}}\n", "mosaic_prob"),
        ("sample: {lr: 0.01}\n", "lr"),
        ("grid: {size: [nano]}\nsample: {lr: {type: uniform, low: 0.1, high: 1}}\n", "sample"),
        ("grid: {size: [nano, s]}\nbaseline: {size: tiny}\n", "baseline.size"),
        ("grid: {size: [nano, s]}\nbaseline: {reg_loss: iou}\n", "baseline.reg_loss"),
        ("grid: {size: [nano]}\nnum_samples: 4\n", "num_samples"),
        ("grid: {size: [nano]}\nscheduler: {type: hyperband}\n", "scheduler"),
        (
            "grid: {size: [nano]}\nscheduler: {type: asha, max_t: 5, grace_period: 9}\n",
            "scheduler.grace_period",
        ),
        ("grid: {size: [nano]}\nresources: {cpus: 1, tpus: 1}\n", "resources.tpus"),
        ("grid: {size: [nano]}\nquick: {epochs: -1}\n", "epochs"),
        ("grid: {size: [nano]}\nquick: {grid: {reg_loss: [iou]}}\n", "quick.grid.reg_loss"),
        ("grid: {size: [nano, s]}\nquick: {grid: {size: [huge]}}\n", "size"),
        ("grid: {size: [nano]}\nquick: {grid: [nano]}\n", "quick.grid"),
        (
            "grid: {size: [nano, s]}\nbaseline: {size: s}\nquick: {grid: {size: [nano]}}\n",
            "quick.baseline.size",
        ),
        (
            "grid: {size: [nano, s]}\nbaseline: {size: s}\nquick: {baseline: {size: tiny}}\n",
            "quick.baseline.size",
        ),
        ("grid: {size: [nano]}\nquick: {baseline: {size: nano}}\n", "quick.baseline"),
        ("grid: {size: [nano]}\nquick: {seeds: 0}\n", "quick.seeds"),
        ("grid: {size: [nano]}\nquick: {seeds: 2, budget: 10}\n", "quick.budget"),
        ("grid: {size: [nano]}\nquick: {seeds: auto, budget: soon}\n", "quick.budget"),
        ("grid: {size: [nano]}\nquick: {cuda: {epochs: -1}}\n", "epochs"),
        (
            "grid: {size: [nano]}\nquick: {cuda: {resources: {gpus: -1}}}\n",
            "quick.cuda.resources.gpus",
        ),
        ("grid: {size: [nano]}\nmetric: accuracy\n", "metric"),
        # a cross-key rule only a combination of axis values breaks
        ("grid: {epochs: [5, 20]}\nfixed: {no_aug_epochs: 10}\n", "no_aug_epochs"),
    ],
)
def test_bad_space_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError if "surprise" in text else ConfigError) as info:
        load_space(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{key}'" in message or f"{key}:" in message or f".{key}" in message, message


def test_unknown_space_name_lists_the_shipped_ones() -> None:
    with pytest.raises(SpaceError, match="ablation"):
        load_space("no_such_space")


def test_seeds_pin_and_ids() -> None:
    space = load_space("ablation")
    plan = build_plan(space, data="/d", seeds=3, overrides={"size": "tiny", "epochs": 20})
    assert len(plan.trials) == 3 * 2 * 3  # size pinned: pretrain x loss x seeds
    assert {t.config.seed for t in plan.trials} == {0, 1, 2}
    assert all(t.config.size == "tiny" and t.config.epochs == 20 for t in plan.trials)
    assert plan.trials[0].id == "coco-iou-seed0" and plan.pinned == {"size": "tiny"}
    # the baseline is found by config value, so pinning size=tiny loses it (baseline is s)
    assert plan.baseline_ids() == []
    assert trial_id({"lr": 0.001, "ema": True, "seed": 2}) == "0.001-true-seed2"
    with pytest.raises(ConfigError, match="seeds"):
        build_plan(space, seeds=2, overrides={"seed": 3})


def test_plan_json_round_trip(tmp_path: Path) -> None:
    plan = build_plan(load_space("ablation"), seeds=2)
    plan.trials[0].skip = "because"
    plan.save(tmp_path / "plan.json")
    back = load_plan(tmp_path / "plan.json")
    assert [t.to_dict() for t in back.trials] == [t.to_dict() for t in plan.trials]
    assert back.space.grid == plan.space.grid and back.quick and back.seeds == 2
    assert back.base == plan.base and back.race is None
    raced = build_plan(load_space("ablation"), seeds="auto", budget="25m")
    raced.save(tmp_path / "raced.json")
    assert load_plan(tmp_path / "raced.json").race == raced.race


def test_tiles_space_compares_input_modes_at_the_same_network_input() -> None:
    space = load_space("tiles")
    assert space.grid == {"input_mode": ["letterbox", "tiles"], "reg_loss": ["iou", "ciou"]}
    assert space.baseline == {"input_mode": "letterbox", "reg_loss": "iou"}
    full = build_plan(space, data="/data/flow")
    assert full.baseline_ids() == ["letterbox-iou"]
    tiles = full.trial("tiles-ciou").config
    assert (tiles.input_mode, tiles.input_size, tiles.img_size) == ("tiles", 640, 640)
    quick = build_plan(space).trial("tiles-iou").config
    assert quick.input_size == build_plan(space).trial("letterbox-iou").config.input_size
    # the ablation keeps the published study's letterbox at 640
    assert build_plan(load_space("ablation"), data="/d").trial("coco-iou-s").config.input_mode \
        == "letterbox"


def test_exponent_floats_are_numbers_in_every_part_of_a_space(tmp_path: Path) -> None:
    # PyYAML reads 1e-3 (no dot) as a string; the space reads it as the trial config does
    grid = _write(tmp_path, "fixed: {warmup_lr: 1e-4}\ngrid: {lr: [1e-3, 2E-2]}\n")
    space = load_space(grid)
    assert space.grid["lr"] == [1e-3, 2e-2]
    plan = build_plan(space, data="/d")
    assert sorted(t.config.lr for t in plan.trials) == [1e-3, 2e-2]
    assert {t.config.warmup_lr for t in plan.trials} == {1e-4}
    sampled = tmp_path / "s.yaml"
    sampled.write_text(
        "sample:\n  lr: {type: loguniform, low: 1e-4, high: 1E-1}\n"
        "  warmup_lr: {type: choice, values: [0, 1e-5]}\nnum_samples: 2\n"
    )
    space = load_space(sampled)
    assert (space.sample["lr"].low, space.sample["lr"].high) == (1e-4, 1e-1)
    assert space.sample["warmup_lr"].values == (0.0, 1e-5)
    with pytest.raises(SpaceError, match="low and high must be numbers, got '1e-4x'"):
        load_space(_write(tmp_path, "sample: {lr: {type: uniform, low: 1e-4x, high: 1}}\n"))


def test_input_mode_and_tile_size_can_be_sampled_and_are_checked(tmp_path: Path) -> None:
    head = "metric: mAP\nmode: max\nfixed: {size: nano}\nnum_samples: 4\nsample:\n"
    good = _write(tmp_path, head + "  input_mode: {type: choice, values: [letterbox, tiles]}\n"
                  "  tile_size: {type: int, low: 256, high: 640, step: 32}\n")
    space = load_space(str(good))
    assert space.sample["input_mode"].to_optuna().choices == ("letterbox", "tiles")
    assert space.sample["tile_size"].to_optuna().step == 32
    bad = _write(tmp_path, head + "  tile_size: {type: choice, values: [256, 100]}\n")
    with pytest.raises(ConfigError, match="sample.tile_size: key 'tile_size' must be a multiple"):
        load_space(str(bad))
