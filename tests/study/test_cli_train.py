from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from model.assign.diagnostics import ASSIGN_DIAGNOSTICS
from model.checkpoint import load_checkpoint, load_trained_detector
from model.coco_eval import COCO_METRICS, evaluate_coco
from model.config import ConfigError
from model.data.synth import generate_flow_like
from model.trainer import load_trial_data
from study.cli import detect as detect_cli
from study.cli import evaluate as evaluate_cli
from study.cli import train as train_cli

TINY = (
    "size: nano\nimg_size: 64\nbatch_size: 4\nepochs: 1\nno_aug_epochs: 0\nwarmup_epochs: 0\n"
    "workers: 0\ndevice: cpu\nmultiscale: 0\n"
)


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
    return generate_flow_like(root, n_train=8, n_test=4, width=160, height=96, video=False)


@pytest.fixture(scope="module")
def trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    cfg = tmp / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp / "out"
    code = train_cli.main(
        ["--config", str(cfg), "--data", str(data_dir), "--out", str(out), "--quiet",
         "--set", "seed=4"]
    )
    assert code == 0
    return out


def test_train_writes_metrics_summary_config_and_checkpoint(trained: Path, capsys) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    split_keys = [f"{split}_{k}" for split in ("val", "test") for k in COCO_METRICS]
    assert set(split_keys) <= set(metrics)
    assert all(isinstance(metrics[k], float) for k in split_keys)
    assert metrics["test_images"] == 4 and metrics["test_epoch"] == metrics["best_epoch"] == 1
    assert metrics["test_mAP_lo"] <= metrics["test_mAP"] <= metrics["test_mAP_hi"]
    assert Path(metrics["test_eval"]).is_file()
    for key in ("params", "train_time_s", "images_per_s", "device", "torch", "config"):
        assert key in metrics, key
    assert metrics["config"]["seed"] == 4 and metrics["config"]["size"] == "nano"
    assert metrics["device"] == "cpu" and metrics["epochs"] == 1
    assert metrics["input_mode"] == "letterbox" and "tile_counts" not in metrics
    assert metrics["eval_boxes"] == "unclipped (official)"  # the scoring choice, named
    # the label assignment's diagnostics of the last epoch (issue 11)
    diag = metrics["assignment"]
    assert set(diag) == set(ASSIGN_DIAGNOSTICS) and 0.0 <= diag["no_pos_share"] <= 1.0
    assert (trained / "last.pt").is_file()
    assert metrics["checkpoint"] == str(trained / "last.pt")
    summary = (trained / "coco_summary.txt").read_text().splitlines()
    assert summary[0] == "validation (best.pt, epoch 1):"
    assert summary[1].startswith(" Average Precision  (AP) @[ IoU=0.50:0.95")
    assert summary[14] == "test (the same checkpoint, scored once):" and len(summary) == 27
    assert "seed: 4" in (trained / "config.yaml").read_text()


def test_train_rerun_into_the_same_folder_resumes(trained: Path, data_dir: Path, capsys) -> None:
    code = train_cli.main(["--config", str(trained / "config.yaml"), "--out", str(trained),
                           "--quiet"])
    assert code == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("train: YOLOX-nano 1 epochs on cpu, resumed after epoch 1: test mAP ")
    assert "(checkpoint of epoch 1, chosen on val mAP " in last
    assert last.endswith(f"-> {trained / 'metrics.json'}")


def stamped(src: Path, dst: Path, sizes: tuple[float, ...] = (12, 24, 48)) -> Path:
    """A copy of a checkpoint whose head ignores the image: every anchor is a box of
    ``sizes[level]`` input pixels at its grid cell, scored sigmoid(5)² — a "detector" that finds
    some of the few-px test objects (AR_1000 > 0 at 320 px), unlike 1 epoch of training."""
    state = load_checkpoint(src)
    for weights in (state["model"], state["ema"]["module"]):
        for level, (stride, size) in enumerate(zip((8, 16, 32), sizes, strict=True)):
            head = {k: f"head.{k}.{level}" for k in ("reg_preds", "obj_preds", "cls_preds")}
            for conv in head.values():
                weights[f"{conv}.weight"].zero_()
            wh = math.log(size / stride)
            weights[f"{head['reg_preds']}.bias"].copy_(torch.tensor([0.5, 0.5, wh, wh]))
            weights[f"{head['obj_preds']}.bias"].fill_(5.0)
            weights[f"{head['cls_preds']}.bias"].fill_(5.0)
    torch.save(state, dst)
    return dst


def test_evaluate_cli_reproduces_the_training_metrics(trained: Path, tmp_path, capsys) -> None:
    out = tmp_path / "m.json"
    assert evaluate_cli.main(["--checkpoint", str(trained / "best.pt"), "--json", str(out),
                              "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets= 300 ]" in text
    assert text.strip().splitlines()[-1].startswith(f"evaluate: {trained / 'best.pt'} (epoch 1,")
    trained_metrics = json.loads((trained / "metrics.json").read_text())
    again = json.loads(out.read_text())
    assert again["split"] == "test"  # the test split by default, as training scored best.pt
    assert {k: again[k] for k in COCO_METRICS} == {
        k: trained_metrics[f"test_{k}"] for k in COCO_METRICS
    }
    # one epoch finds nothing (every number 0): the same comparison on weights that do find
    # objects, against the scoring the trainer calls, so that equal zeros cannot pass for it
    stamp = stamped(trained / "best.pt", tmp_path / "stamp.pt")
    assert evaluate_cli.main(["--checkpoint", str(stamp), "--json", str(out), "--quiet",
                              "--set", "img_size=320"]) == 0
    found = json.loads(out.read_text())
    net, cfg, _ = load_trained_detector(stamp)
    cfg = dataclasses.replace(cfg, img_size=320)
    direct = evaluate_coco(net, load_trial_data(cfg).test_split, cfg)
    assert found["AR_1000"] > 0 and found["AP50"] > 0
    assert {k: found[k] for k in COCO_METRICS} == {k: direct[k] for k in COCO_METRICS}
    assert evaluate_cli.main(["--checkpoint", str(stamp), "--json", str(out), "--quiet",
                              "--set", "img_size=320", "--split", "val"]) == 0
    assert json.loads(out.read_text())["split"] == "val"


def test_detect_cli_draws_images_and_video(trained: Path, data_dir: Path, tmp_path, capsys):
    images = sorted((data_dir / "test" / "images").glob("*.jpg"))[:2]
    src = tmp_path / "src"
    src.mkdir()
    for p in images:
        (src / p.name).write_bytes(p.read_bytes())
    video = src / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 96))
    for _ in range(3):
        writer.write(np.full((96, 160, 3), 90, np.uint8))
    writer.release()
    out = tmp_path / "det"
    code = detect_cli.main(["--checkpoint", str(trained / "last.pt"), str(src), "--out",
                            str(out), "--conf", "0.01"])
    assert code == 0
    for p in images:
        drawn = cv2.imread(str(out / p.name))
        assert drawn is not None and drawn.shape == (96, 160, 3)
    assert (out / "clip_det.mp4").stat().st_size > 0
    records = json.loads((out / "detections.json").read_text())
    assert set(records) == {p.name for p in images} | {"clip.avi#0", "clip.avi#1", "clip.avi#2"}
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("detect: 2 images and 3 frames of 1 videos, ")


def test_detect_cli_rejects_a_missing_source(trained: Path, tmp_path, capsys) -> None:
    code = detect_cli.main(["--checkpoint", str(trained / "last.pt"), str(tmp_path / "nope"),
                            "--out", str(tmp_path / "o")])
    assert code == 2
    assert "nope does not exist; pass an image, a video or a folder" in capsys.readouterr().err


def test_bad_config_key_names_key_and_file_when_run_as_a_module(tmp_path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("size: nano\nlearning_rate: 0.1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "study.cli.train", "--config", str(cfg), "--out",
         str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert f"train: error: {cfg}: unknown key 'learning_rate'" in proc.stderr
    assert not (tmp_path / "o" / "last.pt").exists()


def test_bad_override_is_reported(tmp_path, capsys) -> None:
    code = train_cli.main(["--set", "epochs=0", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "key 'epochs' must be >= 1, got 0" in capsys.readouterr().err


def test_quiet_drops_the_bar_but_keeps_the_epoch_lines(data_dir: Path, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    code = train_cli.main(["--config", str(cfg), "--data", str(data_dir),
                           "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    assert "epoch 1/1: val mAP " in err and " AP50 " in err
    assert "test (4 images, checkpoint of epoch 1): mAP " in err
    assert "it/s" not in err  # no tqdm bar


def test_overrides_are_checked_against_the_config_not_the_defaults(tmp_path) -> None:
    # The default no_aug_epochs is 15: `--set epochs=10` over a config with no_aug_epochs 8 is
    # fine, and only the merged config decides whether epochs and no_aug_epochs fit together.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 36\nno_aug_epochs: 8\n")
    args = train_cli.build_parser().parse_args(["--config", str(cfg), "--set", "epochs=10"])
    resolved = train_cli.resolve_config(args)
    assert (resolved.epochs, resolved.no_aug_epochs) == (10, 8)
    args = train_cli.build_parser().parse_args(["--config", str(cfg), "--set", "epochs=5"])
    with pytest.raises(ConfigError, match=r"command line: key 'no_aug_epochs' must be in \[0, "
                       r"epochs=5\]"):
        train_cli.resolve_config(args)


def test_train_with_a_center_loss_backbone_says_what_it_loaded(data_dir: Path, tmp_path, capsys):
    cfg = tmp_path / "cl.yaml"
    cfg.write_text(
        TINY + "pretrain: center_loss\npretrain_epochs: 1\npretrain_batch_size: 8\ncrop_size: 32\n"
    )
    out = tmp_path / "out"
    code = train_cli.main(["--config", str(cfg), "--data", str(data_dir), "--out", str(out),
                           "--cache", str(tmp_path / "cache"), "--quiet"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    (artifact,) = (tmp_path / "cache").glob("center_loss-nano-*.pt")
    (said,) = [ln for ln in lines if ln.startswith("pretrain: ")]
    assert said.startswith(f"pretrain: center_loss backbone {artifact} (") and " accuracy " in said
    metrics = json.loads((out / "metrics.json").read_text())
    # every tensor of CSPDarknet-nano (its state_dict) went into the detector
    n_backbone = len(torch.load(artifact, weights_only=True)["backbone"])
    assert metrics["pretrain_loaded"] == n_backbone > 100
    assert metrics["config"]["pretrain_artifact"] == str(artifact)
    assert lines[-1].endswith(
        f", {n_backbone} pretrained tensors loaded (center_loss) -> {out / 'metrics.json'}"
    )


def test_detect_cli_slices_frames_with_tiles(trained: Path, data_dir: Path, tmp_path, capsys):
    image = sorted((data_dir / "test" / "images").glob("*.jpg"))[0]
    out = tmp_path / "det"
    code = detect_cli.main(["--checkpoint", str(trained / "last.pt"), str(image), "--out",
                            str(out), "--conf", "0.01", "--set", "input_mode=tiles",
                            "--set", "tile_size=64"])
    assert code == 0
    assert cv2.imread(str(out / image.name)).shape == (96, 160, 3)  # the full frame, drawn
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "on 64px tiles (overlap 0.2) with sliced inference on cpu" in last
    code = detect_cli.main(["--checkpoint", str(trained / "last.pt"), str(image), "--out",
                            str(out), "--set", "input_mode=slices"])
    assert code == 2
    assert "'input_mode' must be one of 'letterbox', 'tiles'" in capsys.readouterr().err


# --- issue 14: every bad input ends with one line and exit 2 ---


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_malformed_override_exits_2_with_one_line(tmp_path, capsys) -> None:
    assert train_cli.main(["--set", "lr=[1,2", "--out", str(tmp_path / "o")]) == 2
    assert _one_error_line(capsys).startswith(
        "train: error: --set 'lr=[1,2': the value of 'lr' is not valid YAML ("
    )


def test_exponent_floats_reach_the_config(tmp_path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\n")
    args = train_cli.build_parser().parse_args(["--config", str(cfg), "--set", "warmup_lr=1E-6"])
    resolved = train_cli.resolve_config(args)
    assert (resolved.lr, resolved.warmup_lr) == (1e-3, 1e-6)


def test_a_class_too_many_exits_2_naming_it_and_both_fixes(tmp_path, capsys) -> None:
    from tests.data_builders import make_flow

    data = make_flow(tmp_path / "d", train={"a": [("bottle", 2, 2, 6, 6)],
                                            "b": [("can", 3, 3, 9, 9)]}, test={"t": []})
    code = train_cli.main(["--data", str(data), "--out", str(tmp_path / "o"), "--quiet",
                           "--set", "workers=0", "--device", "cpu"])
    assert code == 2
    # the data report's warning (logged, shown with --quiet), then the one-line error
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith(f"data {data}: class can: 1 box in 1 file ")
    assert error == (
        f"train: error: key 'num_classes' is 1 but the dataset {data} has 2 classes: bottle: 1 box "
        "in 1 file (training/annotations/a.xml); can: 1 box in 1 file (training/annotations/b.xml);"
        " set num_classes: 2 to train every class (--set num_classes=2), or classes: bottle to "
        "keep only that (--set classes=bottle; the other boxes are dropped and counted)"
    )
