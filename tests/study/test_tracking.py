"""Tracking (issue 27): a study logs every trial through Ray Tune's own logger callbacks to
TensorBoard (on by default), MLflow and W&B, and the tests read each one back with its own
reader — TensorBoard's event accumulator, the MLflow client on the local store in the study
folder (SQLite: MLflow 3 refuses its old file store), the records of W&B's offline run — against
the trials' history.jsonl.

One local Ray session for the module; the fake training function (tests/study_fakes.py) with
``preview`` writes an ``eval_preview.jpg`` beside each checkpoint, as the trainer does.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

import pytest

from study.layout import StudyError
from study.outputs.results import read_csv, read_history
from study.running import tracking
from study.running.driver import StudyArgs, run_study
from tests.study_fakes import control_folder

SPACE = """
fixed: {epochs: 3, eval_interval: 1, no_aug_epochs: 1, workers: 0}
grid: {reg_loss: [iou, ciou]}
baseline: {reg_loss: iou}
resources: {cpus: 1}
"""


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def ray_session() -> None:
    import ray

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _study(tmp_path: Path, track: list[str], lines: list[str]) -> Path:
    from tests.study_fakes import fake_train

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    ctl = control_folder(tmp_path / "ctl", epoch_s=0.05, preview=True)
    study = tmp_path / "study"
    args = StudyArgs(space=str(space), data=str(ctl), out=study, track=track)
    out = run_study(args, train_fn=fake_train, log=lines.append)
    assert out.exit_code == 0, out.summary
    assert [r["status"] for r in read_csv(study / "results.csv")] == ["done", "done"]
    return study


def _history(study: Path, tid: str) -> list[dict]:
    return read_history(study / "trials" / tid / "history.jsonl")


# --- choosing ---------------------------------------------------------------------------------


def test_trackers_are_chosen_and_checked_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert tracking.chosen_trackers([]) == ("tensorboard",)  # tensorboardX: ray[tune] has it
    assert tracking.chosen_trackers(["mlflow,tensorboard", "mlflow"]) == ("mlflow", "tensorboard")
    assert tracking.chosen_trackers(["none"]) == ()
    with pytest.raises(StudyError, match="unknown tracker 'comet'; choose from tensorboard"):
        tracking.chosen_trackers(["comet"])
    with pytest.raises(StudyError, match="cannot be combined"):
        tracking.chosen_trackers(["none,mlflow"])
    monkeypatch.setattr(tracking, "installed", lambda name: name != "wandb")
    with pytest.raises(StudyError, match=r"--track wandb: wandb is not installed \(wandb: pip"):
        tracking.chosen_trackers(["wandb"])
    monkeypatch.setattr(tracking, "installed", lambda name: False)
    assert tracking.chosen_trackers([]) == ()  # no writer: no default tracker, no error


def test_the_cli_takes_track_repeated_or_comma_separated() -> None:
    from study.cli.args import build_parser

    p = build_parser()
    assert p.parse_args([]).track == []
    assert p.parse_args(["--track", "mlflow,wandb", "--track", "tensorboard"]).track == [
        "mlflow,wandb", "tensorboard"
    ]
    with pytest.raises(SystemExit):
        p.parse_args(["--track", "tensorbored"])


# --- TensorBoard (the default) and MLflow -----------------------------------------------------


def test_tensorboard_by_default_and_mlflow_read_back(ray_session: None, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    lines: list[str] = []
    study = _study(tmp_path, ["tensorboard,mlflow"], lines)
    # said at the start, before the trials run, with the command that opens it
    tb_line = f"TensorBoard: tensorboard --logdir {study.resolve()}"
    assert tb_line in lines
    assert lines.index(tb_line) < next(i for i, ln in enumerate(lines) if ln.startswith("running"))
    assert json.loads((study / "tracking.json").read_text()) == {
        "trackers": ["tensorboard", "mlflow"]
    }

    for tid in ("iou", "ciou"):
        history = _history(study, tid)
        assert [h["epoch"] for h in history] == [1, 2, 3]
        (events,) = (study / "tune" / tid).glob("events.out.tfevents.*")
        acc = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        tags = acc.Tags()
        for key in ("val_mAP", "val_AR_small", "total_loss", "lr", "test_mAP"):
            assert f"ray/tune/{key}" in tags["scalars"], key
        got = [(e.step, e.value) for e in acc.Scalars("ray/tune/val_mAP")]  # stepped by epoch
        assert got == [(h["epoch"], pytest.approx(h["val_mAP"])) for h in history]
        assert [e.step for e in acc.Scalars("ray/tune/test_mAP")] == [3]  # the last report
        images = acc.Images("eval_preview")
        assert [im.step for im in images] == [1, 2, 3]
        assert images[0].encoded_image_string[:4] == b"\x89PNG" and images[0].width == 64

    # MLflow: a local store in the study folder, an experiment named after it, a run per trial
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{study.resolve()}/mlflow.db"
    assert any(ln.startswith(f"MLflow: experiment study in {uri}") for ln in lines)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("study")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"iou", "ciou"}
    for tid, run in runs.items():
        history = _history(study, tid)
        assert run.info.status == "FINISHED" and run.data.params["plan_id"] == tid
        assert run.data.tags["study"] == "study"
        metric = client.get_metric_history(run.info.run_id, "val_mAP")
        assert sorted((m.step, m.value) for m in metric) == [
            (h["epoch"], pytest.approx(h["val_mAP"])) for h in history
        ]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "lr")] == [1, 2, 3]
        shots = [a.path for a in client.list_artifacts(run.info.run_id, "eval_preview")]
        assert shots == [f"eval_preview/epoch_00{e}.jpg" for e in (1, 2, 3)]
        assert (study / "mlartifacts").is_dir()  # not a folder in the current directory


def test_no_tracker_writes_no_tracker_files(ray_session: None, tmp_path: Path) -> None:
    lines: list[str] = []
    study = _study(tmp_path, ["none"], lines)
    assert not list(study.rglob("events.out.tfevents.*")) and not (study / "mlflow.db").exists()
    assert any(ln.startswith("tracking: none") for ln in lines)
    assert (study / "tune" / "iou" / "result.json").is_file()  # Tune's own files stay


# --- W&B, offline -----------------------------------------------------------------------------


def wandb_records(path: Path) -> list[object]:
    """The records of a W&B run file (``run-<id>.wandb``): LevelDB's log format — 32 kB blocks
    of chunks, each with a 7-byte header (CRC, length, type: full, first, middle, last) —
    after W&B's 7-byte file header, each record a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            rec = pb.Record()
            rec.ParseFromString(buf + chunk)
            records.append(rec)
            buf = b""
        elif kind in (2, 3):  # first, middle
            buf += chunk
    return records


def test_wandb_offline_read_back(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    lines: list[str] = []
    study = _study(tmp_path, ["wandb"], lines)
    assert any(ln.startswith("W&B: project yolox-flow-study, group study, offline") for ln in lines)
    runs = {}  # trial id -> its run file (the run's name is the trial's)
    for f in (study / "wandb").glob("offline-run-*/run-*.wandb"):
        names = [r.run.display_name for r in wandb_records(f) if r.WhichOneof("record_type")
                 == "run"]
        if not names:  # a logging actor Ray restarted before W&B wrote its run (seen under
            continue  # load): no record of the trial's; its whole run is the other file
        assert names[0] not in runs, f"two W&B runs for trial {names[0]}"
        runs[names[0]] = f
    assert set(runs) == {"iou", "ciou"}
    for tid, run_file in runs.items():
        history: dict[int, dict] = {}
        for rec in wandb_records(run_file):
            if rec.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                         for i in rec.history.item}
                history.setdefault(items["_step"], {}).update(items)
        logged = [h for h in history.values() if "val_mAP" in h]
        assert [(h["epoch"], h["val_mAP"]) for h in logged] == [
            (h["epoch"], pytest.approx(h["val_mAP"])) for h in _history(study, tid)
        ]
        shots = [h for h in history.values() if "eval_preview/path" in h]
        assert len(shots) == 3
        for h in shots:
            assert (run_file.parent / "files" / h["eval_preview/path"]).is_file()
