"""Bad input to study/cli/train.py and study/run.py: one line on stderr, exit 2, nothing lost.

Data problems reach every run (the console line, data_report.txt, metrics.json) and ``--strict``
stops before training; a split without a usable image is an error naming its folder; an
existing folder is never overwritten; ``--resume`` loads only a study this user created and
that no one else can have changed; a study folder in use by a live driver is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model.config import load_config
from study import run as run_cli
from study.cli import train as train_cli
from study.running import session, trust
from study.space.definition import load_space
from study.space.plan import build_plan
from tests.data_builders import make_flow, truncate

TINY = (
    "size: nano\nimg_size: 64\nbatch_size: 4\nepochs: 1\nno_aug_epochs: 0\nwarmup_epochs: 0\n"
    "workers: 0\ndevice: cpu\nmultiscale: 0\n"
)
SPACE = """
fixed: {epochs: 2, no_aug_epochs: 1, warmup_epochs: 1, workers: 0}
grid: {reg_loss: [iou, giou]}
resources: {cpus: 1}
"""
FAKE = ["--train-fn", "tests.study_fakes:fake_train"]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def one_line(capsys: pytest.CaptureFixture) -> str:
    """The only stderr line (no traceback, nothing else)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def bad_data(root: Path) -> Path:
    """3 usable training images, a truncated JPEG, an empty XML and a zero-area box."""
    make_flow(
        root,
        train={
            "a": [("bottle", 4, 4, 20, 18)],
            "b": [("bottle", 30, 10, 50, 30)],
            "cut": [("bottle", 4, 4, 20, 18)],
            "edge": [("bottle", 10, 10, 30, 26), ("bottle", 11, 11, 11, 21)],
            "blank": [("bottle", 4, 4, 20, 18)],
        },
        test={"t": [("bottle", 5, 5, 25, 25)]},
    )
    truncate(root / "training" / "images" / "cut.jpg")
    (root / "training" / "annotations" / "blank.xml").write_text("")
    return root


def corrupt_split(root: Path) -> Path:
    make_flow(root, train={"a": [("bottle", 4, 4, 20, 18)], "b": []}, test={"t": []})
    for name in ("a", "b"):
        truncate(root / "training" / "images" / f"{name}.jpg")
    return root


def tiny_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return cfg


# --- study/cli/train.py -----------------------------------------------------------------------


REASONS = "corrupt_image: 1 image (1 box), empty_annotation: 1 image, zero_area: 1 box"


def test_train_strict_stops_before_training_and_names_the_report(tmp_path: Path, capsys) -> None:
    data, out = bad_data(tmp_path / "d"), tmp_path / "out"
    code = train_cli.main(
        ["--config", str(tiny_config(tmp_path)), "--data", str(data), "--out", str(out),
         "--quiet", "--strict"]
    )
    assert code == 2
    assert one_line(capsys) == (
        f"train: error: --strict: the dataset {data} has 3 problems ({REASONS}); every one is "
        f"listed in {out / 'data_report.txt'}. Fix those files, or drop --strict to train "
        "without the dropped images and boxes"
    )
    report = (out / "data_report.txt").read_text()
    assert (
        f"dropped image {data / 'training/images/blank.jpg'} (annotations "
        f"{data / 'training/annotations/blank.xml'}): annotation file is empty;"
    ) in report
    assert "truncated JPEG" in report and "box has no area" in report
    assert not (out / "last.pt").exists() and not (out / "config.yaml").exists()


def test_train_says_what_the_data_check_dropped(tmp_path: Path, capsys) -> None:
    data, out = bad_data(tmp_path / "d"), tmp_path / "out"
    code = train_cli.main(
        ["--config", str(tiny_config(tmp_path)), "--data", str(data), "--out", str(out), "--quiet"]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == (
        f"data: flow dataset {data}: train 2 images / 2 boxes, val 1 image / 1 box, test 1 image "
        "/ 1 box; dropped "
        f"2 images and 2 boxes, clipped 0 boxes ({REASONS}); first: training/images/blank.jpg "
        "(empty_annotation), training/images/cut.jpg (corrupt_image), training/images/edge.jpg "
        f"(zero_area); full report {out / 'data_report.txt'}"
    )
    assert lines[-1].endswith(
        ", data: 2 images and 2 boxes dropped, 0 clipped (data_report.txt) -> "
        f"{out / 'metrics.json'}"
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"] == {
        "data_images": 4,
        "data_boxes": 4,
        "data_images_dropped": 2,
        "data_boxes_dropped": 2,
        "data_boxes_clipped": 0,
        "data_problems": "corrupt_image: 1 image (1 box); empty_annotation: 1 image; "
        "zero_area: 1 box",
        "report": str(out / "data_report.txt"),
    }


def test_train_split_without_usable_image_names_the_folder(tmp_path: Path, capsys) -> None:
    data = corrupt_split(tmp_path / "d")
    code = train_cli.main(["--data", str(data), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert one_line(capsys) == (
        f"train: error: {data}: the train split has no usable image: the 1 image in "
        f"{data / 'training' / 'images'} was dropped (1 corrupt_image); fix or replace those "
        f"files (python -m model.data check {data} lists each one)"
    )
    assert (tmp_path / "o" / "data_report.txt").read_text().count("truncated JPEG") == 2


def test_train_refuses_another_config_before_writing_anything(tmp_path: Path, capsys) -> None:
    data, out = bad_data(tmp_path / "d"), tmp_path / "out"
    cfg = tiny_config(tmp_path)
    assert train_cli.main(["--config", str(cfg), "--data", str(data), "--out", str(out),
                           "--quiet"]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    lr = load_config(out / "config.yaml").lr
    code = train_cli.main(["--config", str(cfg), "--data", str(data), "--out", str(out),
                           "--quiet", "--set", f"lr={lr * 2}"])
    assert code == 2
    assert one_line(capsys) == (
        f"train: error: {out} holds a run of another config (lr: {lr!r} -> {lr * 2!r}); nothing "
        "there was changed. Train into another --out, or pass --no-resume to start over in "
        "this folder"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --- study/run.py: before any trial -------------------------------------------------------


def _space(tmp_path: Path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def test_run_refuses_a_non_empty_folder_that_is_not_a_study(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "results.csv").write_text("my own results\n")
    (out / "notes").mkdir()
    code = run_cli.main(["--space", str(_space(tmp_path)), "--data", str(bad_data(tmp_path / "d")),
                         "--out", str(out), *FAKE])
    assert code == 2
    assert one_line(capsys) == (
        f"error: {out} is not empty (notes/, results.csv) and holds no study (no plan.json): a "
        "study writes results.csv, report.md, best_config.yaml and more there, replacing files "
        "of those names. Pick a new or empty --out, or pass --force to write into it anyway"
    )
    assert (out / "results.csv").read_text() == "my own results\n"
    assert sorted(p.name for p in out.iterdir()) == ["notes", "results.csv"]


def test_run_strict_stops_before_any_trial(tmp_path: Path, capsys) -> None:
    data, out = bad_data(tmp_path / "d"), tmp_path / "s"
    code = run_cli.main(["--space", str(_space(tmp_path)), "--data", str(data), "--out", str(out),
                         "--strict", *FAKE])
    assert code == 2
    assert one_line(capsys) == (
        f"error: --strict: the dataset {data} has 3 problems ({REASONS}); python -m model.data "
        f"check {data} lists every one. Fix those files, or drop --strict to train without the "
        "dropped images and boxes"
    )
    assert not out.exists() and not (data / "calls").exists()


def test_run_split_without_usable_image_is_one_line(tmp_path: Path, capsys) -> None:
    data = corrupt_split(tmp_path / "d")
    code = run_cli.main(["--space", str(_space(tmp_path)), "--data", str(data),
                         "--out", str(tmp_path / "s"), *FAKE])
    assert code == 2
    assert one_line(capsys).startswith(
        f"error: {data}: the train split has no usable image: the 1 image in "
        f"{data / 'training' / 'images'} was dropped (1 corrupt_image)"
    )
    assert not (tmp_path / "s").exists()


# --- study/run.py --resume: only a study this user created --------------------------------


def fake_study(tmp_path: Path, *, registered: bool = True) -> Path:
    """A study folder as study/run.py leaves it (plan, space, Tune's pickled state)."""
    study = tmp_path / "study"
    (study / "tune").mkdir(parents=True)
    space = _space(tmp_path)
    build_plan(load_space(space), data=str(tmp_path)).save(study / "plan.json")
    (study / "space.yaml").write_text(SPACE)
    (study / "tune" / "tuner.pkl").write_bytes(b"pickled state")
    if registered:
        trust.write_manifest(study)
    return study


def resume(study: Path) -> int:
    return run_cli.main(["--resume", "--out", str(study), *FAKE])


FIX = "To use its results read {s}/results.csv; to run its plan again start a new study: " \
      "python study/run.py --space {s}/space.yaml --out NEW_FOLDER"


def test_resume_refuses_a_folder_without_manifest(tmp_path: Path, capsys) -> None:
    study = fake_study(tmp_path, registered=False)
    assert resume(study) == 2
    assert one_line(capsys) == (
        f"error: --resume: refusing {study}: it has no readable study.json "
        f"(FileNotFoundError), so study/run.py did not create it for you. {trust.RISK}. "
        + FIX.format(s=study)
    )


def test_resume_refuses_a_study_someone_else_created(tmp_path: Path, capsys) -> None:
    study = fake_study(tmp_path, registered=False)
    (study / "study.json").write_text(json.dumps({"study_id": "0123abcd"}))  # copied or forged
    assert resume(study) == 2
    assert one_line(capsys) == (
        f"error: --resume: refusing {study}: its study id 0123abcd is not among the studies you "
        f"created ({trust.registry_dir()}); it comes from another user or machine. {trust.RISK}. "
        f"If it is a study you ran on another machine and you trust every file in it, adopt it "
        f"first: python -m study.cli.adopt {study}; else: " + FIX.format(s=study)
    )


def test_resume_refuses_state_others_can_write(tmp_path: Path, capsys) -> None:
    study = fake_study(tmp_path)
    assert trust.check_resumable(study) is None  # this user's own, untouched: fine
    pkl = study / "tune" / "tuner.pkl"
    pkl.chmod(0o664)
    assert resume(study) == 2
    assert one_line(capsys) == (
        f"error: --resume: refusing {study}: {pkl} is writable by group or others (mode "
        f"-rw-rw-r--), so someone else may have changed the state it would load. {trust.RISK}. "
        f"If you trust every file in it, run chmod -R go-w {study} (as its owner) and resume "
        f"again; else: " + FIX.format(s=study)
    )
    pkl.chmod(0o644)
    if os.getuid() == 0:  # root can hand the file to someone else
        os.chown(pkl, 4321, 4321)
        assert resume(study) == 2
        assert f"{pkl} belongs to uid 4321, not to you (uid 0)" in one_line(capsys)


def test_harden_removes_group_and_other_write(tmp_path: Path) -> None:
    study = fake_study(tmp_path)
    (study / "tune" / "tuner.pkl").chmod(0o666)
    (study / "tune").chmod(0o777)
    trust.harden(study)
    assert trust.unsafe_entry(study) is None
    assert (study / "tune" / "tuner.pkl").stat().st_mode & 0o777 == 0o644


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_resume_refuses_a_study_a_live_driver_is_running(tmp_path: Path, capsys) -> None:
    psutil = session.load_psutil()
    study = fake_study(tmp_path)
    other = _sleeper()
    try:
        proc = psutil.Process(other.pid)
        record = {"driver": session._ident(proc), "since": "then", "ray_processes": []}
        (study / session.RECORD).write_text(json.dumps(record))
        assert resume(study) == 2
        assert one_line(capsys) == (
            f"error: {study} is in use by another run of this study (pid {other.pid}, since "
            f"then); wait for it to end, or stop it with kill -INT {other.pid}, then run again"
        )
        assert other.poll() is None  # never touched
    finally:
        other.kill()
        other.wait()


def test_stale_session_processes_are_stopped_and_reused_pids_spared(tmp_path: Path) -> None:
    psutil = session.load_psutil()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # the killed driver: no such process any more
    left, reused = _sleeper(), _sleeper()
    try:
        time.sleep(0.2)
        stale = session._ident(psutil.Process(left.pid))
        not_it = {**session._ident(psutil.Process(reused.pid)), "started": 1.0}  # pid reused
        record = {
            "driver": {"pid": gone.pid, "started": 2.0, "name": "python"},
            "ray_session_dir": "/tmp/ray/session_x",
            "ray_processes": [stale, not_it],
        }
        (tmp_path / session.RECORD).write_text(json.dumps(record))
        said: list[str] = []
        session.stop_stale(tmp_path, said.append)
        assert left.wait(timeout=10) is not None
        assert reused.poll() is None
        assert said == [
            "stopped 1 Ray processes left running by the killed run of this study (driver pid "
            f"{gone.pid}, Ray session /tmp/ray/session_x)"
        ]
        assert not (tmp_path / session.RECORD).exists()
    finally:
        for p in (left, reused):
            p.kill()
            p.wait()


# --- the records behind results.csv and the progress line ---------------------------------


def test_attempts_count_only_starts_that_trained(tmp_path: Path) -> None:
    from study.outputs.results import count_attempts

    path = tmp_path / "attempts.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"time": 1, "restored_from": None}),
                json.dumps({"time": 2, "restored_from": "tune/x/checkpoint_000001"}),
                json.dumps({"time": 3, "reused_done": True}),
                json.dumps({"time": 4, "restored_from": "c", "finished_before": True}),
                json.dumps({"time": 5, "finished_from_history": True}),
                '{"time": 6, "rest',  # cut by a kill: it was a start
            ]
        )
    )
    assert count_attempts(path) == 3


def test_progress_counts_trials_that_ended_before_a_resume(tmp_path: Path) -> None:
    import pickle

    from study.running.progress import StudyCallback

    plan = build_plan(load_space(_space(tmp_path)), data=str(tmp_path))
    plan.save(tmp_path / "plan.json")
    callback = StudyCallback(str(tmp_path), total=2)
    assert callback.ended == set()
    done = tmp_path / "trials" / "iou"
    done.mkdir(parents=True)
    (done / "done.json").write_text(json.dumps({"final": {"epoch": 2}, "summary": {}}))
    restored = pickle.loads(pickle.dumps(callback))  # as Tune keeps it in tuner.pkl
    restored.setup()
    assert restored.ended == {"iou"}
