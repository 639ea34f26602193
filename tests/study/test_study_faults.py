"""Fault paths of a study, with real processes killed: the driver (SIGKILL, then --resume), a
trial's worker (SIGKILL mid-epoch, real training), and failures that must not be retried.

The driver test runs first and starts its own local Ray in subprocesses (that is what it
checks: the ports it listens on, and what is left when it is killed); the others share one Ray
session for the module, started after it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray  # a dependency: its absence fails, never skips

from study.layout import StudyError
from study.outputs.results import read_csv, read_history
from study.running.driver import StudyArgs, run_study
from study.running.session import load_psutil
from tests.data_builders import truncate
from tests.paths import FAKE_TRAIN_FN, REPO
from tests.study_fakes import control_folder

RUN = [sys.executable, str(REPO / "study" / "run.py")]

psutil = load_psutil()  # Ray ships a copy


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def _calls(ctl: Path) -> dict[str, list[dict]]:
    calls: dict[str, list[dict]] = {}
    for f in sorted((ctl / "calls").iterdir()):
        tid, _ = f.name.rsplit(".", 1)
        calls.setdefault(tid, []).append(json.loads(f.read_text()))
    return calls


def _alive(rec: dict) -> bool:
    try:
        return abs(psutil.Process(rec["pid"]).create_time() - rec["started"]) < 0.05
    except psutil.NoSuchProcess:
        return False


KILL_SPACE = """
fixed: {epochs: 3, eval_interval: 1, no_aug_epochs: 1, workers: 0}
grid: {reg_loss: [iou, giou, ciou]}
baseline: {reg_loss: iou}
resources: {cpus: 1}
"""


def test_driver_killed_then_resumed_reruns_nothing_and_leaves_no_ray_process(
    tmp_path: Path,
) -> None:
    space = tmp_path / "kill.yaml"
    space.write_text(KILL_SPACE)
    ctl = control_folder(tmp_path / "ctl", epoch_s=0.7)
    study = tmp_path / "study"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        XDG_STATE_HOME=str(tmp_path / "state"),
        TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S="0",
    )
    args = ["--train-fn", FAKE_TRAIN_FN, "--max-concurrent", "1"]
    first = subprocess.Popen(
        [*RUN, "--space", str(space), "--data", str(ctl), "--out", str(study), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 150
    finished: set[str] = set()
    while time.time() < deadline and not finished and first.poll() is None:
        time.sleep(0.3)
        if (study / "results.csv").is_file():
            finished = {r["id"] for r in read_csv(study / "results.csv") if r["status"] == "done"}
    assert finished, "no trial finished in time"
    record = json.loads((study / "driver.json").read_text())
    assert record["driver"]["pid"] == first.pid
    ray_procs = record["ray_processes"]
    assert len(ray_procs) >= 4  # gcs_server, raylet, agents, dashboard, workers…
    # every port of the local session listens on the loopback interface only
    listening = []
    for rec in ray_procs:
        try:
            conns = psutil.Process(rec["pid"]).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        listening += [(rec["name"], c.laddr.ip) for c in conns if c.status == "LISTEN"]
    assert listening and all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for _, ip in listening), (
        listening
    )

    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    left = [r for r in ray_procs if _alive(r)]

    second = subprocess.run(
        [*RUN, "--resume", "--out", str(study), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    if left:  # what Ray itself had not stopped yet when the resumed run began
        said = f"Ray processes left running by the killed run of this study (driver pid {first.pid}"
        assert said in out, out
    assert not [r for r in ray_procs if _alive(r)], "a Ray process of the killed run survived"
    assert not (study / "driver.json").exists()
    assert "Traceback" not in out

    rows = read_csv(study / "results.csv")
    assert [r["id"] for r in rows] == ["iou", "giou", "ciou"]  # every trial once
    assert [r["status"] for r in rows] == ["done"] * 3
    calls = _calls(ctl)
    for tid in finished:  # trained exactly once, before the kill
        assert len(calls[tid]) == 1, (tid, calls[tid])
        assert next(r for r in rows if r["id"] == tid)["attempts"] == 1
    for r in rows:
        lines = (study / "trials" / r["id"] / "history.jsonl").read_text().splitlines()
        epochs = [json.loads(x)["epoch"] for x in lines]
        assert sorted(set(epochs)) == [1, 2, 3]
    # the progress count includes the trials that ended before the kill
    assert "[3/3] done" in out, out


# --- one Ray session for the tests below --------------------------------------------------


@pytest.fixture(scope="module")
def ray_session() -> None:

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


FAIL_SPACE = """
fixed: {epochs: 3, eval_interval: 1, no_aug_epochs: 1, workers: 0}
grid: {reg_loss: [iou, giou, ciou]}
baseline: {reg_loss: iou}
resources: {cpus: 1}
max_failures: 2
"""


def test_deterministic_failure_is_not_retried_and_a_crash_is_one_line(
    ray_session: None, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    from tests.study_fakes import fake_train

    space = tmp_path / "fail.yaml"
    space.write_text(FAIL_SPACE)
    # giou crashes once after epoch 1 (retried); ciou's loss is non-finite after epoch 2
    ctl = control_folder(
        tmp_path / "ctl", epoch_s=0.1, fail_once=["giou"], fail_at=1, diverge=["ciou"],
        diverge_at=2,
    )
    truncate(ctl / "training" / "images" / "t0.jpg")  # the data check drops it and its box
    study = tmp_path / "study"
    out = run_study(StudyArgs(space=str(space), data=str(ctl), out=study), train_fn=fake_train)
    assert out.exit_code == 1, out.summary
    console = capfd.readouterr()
    text = console.out + console.err
    assert "Traceback" not in text
    (data_line,) = [ln for ln in text.splitlines() if ln.startswith("data: ")]
    assert data_line == (
        f"data: flow dataset {ctl}: train 1 image / 1 box, val 1 image / 1 box, test 2 images / "
        "2 boxes; dropped 1 image and 1 box, clipped 0 boxes (corrupt_image: 1 image (1 box)); "
        f"first: training/images/t0.jpg (corrupt_image); full report {study / 'data_report.txt'}"
    )
    (crash,) = [ln for ln in text.splitlines() if "giou crashed" in ln]
    assert crash.startswith(
        "  giou crashed: RuntimeError: fake crash of giou after epoch 1; retrying from its last "
        "checkpoint (failure 1; traceback in "
    )
    calls = _calls(ctl)
    assert len(calls["ciou"]) == 1 and len(calls["giou"]) == 2  # ciou never retried

    rows = {r["id"]: r for r in read_csv(study / "results.csv")}
    assert (rows["giou"]["status"], rows["giou"]["attempts"]) == ("done", 2)
    ciou = rows["ciou"]
    assert (ciou["status"], ciou["attempts"], ciou["epoch"]) == ("error", 1, 2)
    kept = study / "trials" / "ciou" / "last.pt"
    assert ciou["reason"] == (
        f"TrainingError: non-finite loss in epoch 3: total_loss=nan; the last good checkpoint "
        f"{kept} (after epoch 2)"
    )
    assert kept.is_file() and json.loads(kept.read_text()) == {"epoch": 2}
    log = (study / "trials" / "ciou" / "trial.log").read_text()
    assert "failed, not retried" in log and "Traceback (most recent call last)" in log
    # Ray's account of the crash: the driver's crashes.log (the trial's own log is its records')
    giou_log = (study / "trials" / "giou" / "crashes.log").read_text()
    assert "RuntimeError: fake crash of giou" in giou_log
    report = (study / "report.md").read_text()
    assert "## Crashes and retries" in report
    assert "| giou | 2 | crash 1: RuntimeError: fake crash of giou after epoch 1 (retried" in report
    assert "| ciou | 1 | failed, not retried (deterministic): TrainingError: non-finite" in report
    # the data check reached the trials, the results and the report
    for r in rows.values():
        assert (r["data_images"], r["data_images_dropped"], r["data_boxes_dropped"]) == (4, 1, 1)
        assert r["data_problems"] == "corrupt_image: 1 image (1 box)"
    assert "## Data" in report
    assert "kept 4 images with 4 boxes; dropped 1 image and 1 box, clipped 0 boxes" in report
    assert f"`{ctl / 'training' / 'images' / 't0.jpg'}` (dropped image): truncated JPEG" in report
    assert "t0.jpg" in (study / "trials" / "ciou" / "data_report.txt").read_text()


TINY_SPACE = """
fixed: {size: nano, img_size: 64, batch_size: 4, epochs: 3, no_aug_epochs: 1, warmup_epochs: 0,
        eval_interval: 1, workers: 0, device: cpu, multiscale: 0, pretrain: none}
grid: {reg_loss: [iou]}
resources: {cpus: 1}
max_failures: 2
"""


def test_worker_killed_mid_epoch_resumes_to_the_uninterrupted_metrics(
    ray_session: None, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    import threading

    import torch

    from model.coco_eval import TEST_METRICS, VAL_METRICS
    from model.config import load_config
    from model.data.synth import generate_flow_like
    from model.trainer import train_detector
    from tests.study_fakes import killable_train

    data = generate_flow_like(
        tmp_path / "data", n_train=8, n_test=4, width=160, height=96, video=False
    )
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE)
    study = tmp_path / "study"
    marker = tmp_path / "kill_me.json"
    killed: list[int] = []

    def kill_when_asked() -> None:
        deadline = time.time() + 150
        while time.time() < deadline and not marker.exists():
            time.sleep(0.1)
        if marker.exists():
            time.sleep(0.2)
            pid = json.loads(marker.read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_when_asked, daemon=True)
    killer.start()
    args = StudyArgs(space=str(space), data=str(data), out=study)
    out = run_study(args, train_fn=killable_train)
    killer.join(timeout=5)
    assert killed, "the first attempt never reached epoch 2"
    assert out.exit_code == 0, out.summary
    text = "".join(capfd.readouterr())
    assert "Traceback" not in text
    (crash,) = [ln for ln in text.splitlines() if "iou crashed" in ln]
    assert "crashed: ActorDiedError: " in crash, crash

    trial = study / "trials" / "iou"
    attempts = [json.loads(x) for x in (trial / "attempts.jsonl").read_text().splitlines()]
    assert len(attempts) == 2 and "checkpoint_000000" in attempts[1]["restored_from"]
    lines = [json.loads(x) for x in (trial / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2, 3]  # epoch 1 never trained twice
    (row,) = read_csv(study / "results.csv")
    assert (row["status"], row["attempts"]) == ("done", 2)
    assert "ActorDiedError" in (study / "report.md").read_text()

    # the same config, uninterrupted, with the trial's thread count: the same numbers
    cfg = load_config(study / "best_config.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref: list[dict] = []
        result = train_detector(cfg, lambda m, p: ref.append(m), progress=False)
    finally:
        torch.set_num_threads(threads)
    keys = (*VAL_METRICS, *TEST_METRICS)
    assert {k: row[k] for k in keys} == pytest.approx({k: result[k] for k in keys}, abs=1e-9)
    assert [h["total_loss"] for h in read_history(trial / "history.jsonl")] == [
        m["total_loss"] for m in ref
    ]


DISK_SPACE = """
fixed: {epochs: 3, eval_interval: 1, no_aug_epochs: 1, workers: 0}
grid: {reg_loss: [iou, ciou]}
baseline: {reg_loss: iou}
resources: {cpus: 1}
"""


def test_a_full_disk_stops_the_study_in_one_line_and_it_resumes_when_there_is_room(
    ray_session: None, tmp_path: Path
) -> None:
    """ciou's epoch-2 checkpoint write meets a real ENOSPC (its temporary file is a link to
    /dev/full): the study stops — no retry that would fail the same way, no trial recorded as
    failed — with one line naming the folder, the space the checkpoint needs and what is free;
    with room again, --resume continues ciou from its epoch-1 checkpoint."""
    from tests.study_fakes import fake_train

    space = tmp_path / "disk.yaml"
    space.write_text(DISK_SPACE)
    ctl = control_folder(tmp_path / "ctl", epoch_s=0.05, torch_ckpt=True,
                         disk_full={"ciou": 2})
    (ctl / "disk_full").touch()
    study = tmp_path / "study"
    lines: list[str] = []
    with pytest.raises(StudyError) as stopped:  # the CLI prints it as its one error line
        run_study(StudyArgs(space=str(space), data=str(ctl), out=study, max_concurrent=1),
                  train_fn=fake_train, log=lines.append)
    summary = str(stopped.value)
    assert summary.count("\n") == 0, summary
    # the checkpoint: 64k float32 weights (262.1 kB) and torch.save's framing
    assert re.search(r"is full: trial ciou could not write its checkpoint there \(it needs "
                     r"about 26[2-5]\.\d kB, [\d.]+ [kMG]?B free\)", summary), summary
    assert f"python study/run.py --resume --out {study}" in summary
    assert not (study / "trials" / "ciou" / "failed.json").exists()
    assert [c["start_epoch"] for c in _calls(ctl)["ciou"]] == [0]  # not retried into the wall

    (ctl / "disk_full").unlink()  # room again
    again = run_study(StudyArgs(resume=True, out=study), train_fn=fake_train, log=lines.append)
    assert again.exit_code == 0, again.summary
    rows = {r["id"]: r for r in read_csv(study / "results.csv")}
    assert {t: r["status"] for t, r in rows.items()} == {"iou": "done", "ciou": "done"}
    calls = _calls(ctl)
    assert [c["start_epoch"] for c in calls["ciou"]] == [0, 1]  # only epoch 2 trained again
    assert len(calls["iou"]) == 1
    epochs = [h["epoch"] for h in read_history(study / "trials" / "ciou" / "history.jsonl")]
    assert epochs == [1, 2, 3]


WRITER = """
import sys
from pathlib import Path
from study.artifacts.jobs import load_study_plan
from study.outputs import write_all
from study.running.trust import write_manifest
study = Path(sys.argv[1])
plan = load_study_plan(study)
print("ready", flush=True)
while True:
    write_all(plan, study, 1.0)
    write_manifest(study)
"""


def test_sigkill_in_the_middle_of_our_writes_never_leaves_a_half_file(
    ray_session: None, tmp_path: Path
) -> None:
    """A process rewriting results.csv, report.md, best_config.yaml and the manifest
    (study.json) in a loop, SIGKILLed at 4 moments: each file is always a whole version —
    byte-equal to the one a complete write gives (the manifest: a whole JSON record)."""
    import random

    from tests.study_fakes import fake_train

    space = tmp_path / "disk.yaml"
    space.write_text(DISK_SPACE)
    ctl = control_folder(tmp_path / "ctl", epoch_s=0.01)
    study = tmp_path / "study"
    out = run_study(StudyArgs(space=str(space), data=str(ctl), out=study), train_fn=fake_train,
                    log=lambda s: None)
    assert out.exit_code == 0, out.summary
    from study.artifacts.jobs import load_study_plan
    from study.outputs import write_all

    write_all(load_study_plan(study), study, 1.0)  # what the loop writes, whole
    names = ("results.csv", "report.md", "best_config.yaml")
    whole = {n: (study / n).read_bytes() for n in names}
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    rng = random.Random(0)
    for k in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(study)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.2))
        proc.kill()
        proc.wait(timeout=30)
        for n in names:
            assert (study / n).read_bytes() == whole[n], (k, n)
        manifest = json.loads((study / "study.json").read_text())
        assert len(manifest["study_id"]) == 32 and manifest["path"] == str(study.resolve())
