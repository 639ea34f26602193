"""The Ray head's GCS killed under a running study (issue 27): the driver notices within its
grace period, exits with one clear message and the command that continues, and ``--resume``
on a new head finishes the study with the results of an undisturbed one (the fake training
function's metrics are deterministic). A real head: ``ray start --head`` (tests/cluster.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from study.outputs.results import read_csv, read_history
from tests import cluster as harness
from tests.paths import FAKE_TRAIN_FN, REPO
from tests.study_fakes import control_folder

SPACE = """
fixed: {epochs: 3, eval_interval: 1, no_aug_epochs: 1, workers: 0}
grid: {reg_loss: [iou, ciou]}
baseline: {reg_loss: iou}
resources: {cpus: 1}
"""
METRICS = ["val_mAP", "val_AP50", "test_mAP", "test_AP50", "epoch", "status"]
RUN = [sys.executable, str(REPO / "study" / "run.py")]


def _driver(head: harness.RayHead, tmp_path: Path, *args: str) -> list[str]:
    return [*RUN, *args, "--address", head.address, "--train-fn", FAKE_TRAIN_FN]


def _env(head: harness.RayHead, tmp_path: Path) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **head.env,
            "XDG_STATE_HOME": str(tmp_path / "state"), "YOLOX_STUDY_GCS_GRACE_S": "3",
            "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}


def _rows(study: Path) -> dict[str, dict]:
    return {r["id"]: {k: r[k] for k in METRICS} for r in read_csv(study / "results.csv")}


def test_a_dead_ray_head_ends_the_driver_clearly_and_resume_finishes(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    ctl = control_folder(tmp_path / "ctl", epoch_s=0.6)
    study = tmp_path / "study"
    head = harness.start_head(num_cpus=1)
    try:
        first = subprocess.Popen(
            _driver(head, tmp_path, "--space", str(space), "--data", str(ctl), "--out",
                    str(study)),
            cwd=REPO, env=_env(head, tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        history = study / "trials" / "iou" / "history.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not (
            history.is_file() and read_history(history)
        ):
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[0][-3000:]
        os.kill(head.gcs_pid(), signal.SIGKILL)
        killed_at = time.time()
        out = first.communicate(timeout=120)[0]
        took = time.time() - killed_at
    finally:
        head.stop()
    assert first.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    (line,) = [ln for ln in out.splitlines() if "the Ray head stopped answering" in ln]
    assert f"continue with: python study/run.py --resume --out {study}" in line
    assert took < 45, took  # the grace period (3 s here), not Ray's own minute and more

    head2 = harness.start_head(num_cpus=1)
    try:
        second = subprocess.run(
            _driver(head2, tmp_path, "--resume", "--out", str(study)), cwd=REPO,
            env=_env(head2, tmp_path), capture_output=True, text=True, timeout=300,
        )
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        ref = tmp_path / "ref"
        ctl_ref = control_folder(tmp_path / "ctl_ref", epoch_s=0.05)
        undisturbed = subprocess.run(
            _driver(head2, tmp_path, "--space", str(space), "--data", str(ctl_ref), "--out",
                    str(ref)),
            cwd=REPO, env=_env(head2, tmp_path), capture_output=True, text=True, timeout=300,
        )
        assert undisturbed.returncode == 0, undisturbed.stdout[-3000:]
    finally:
        head2.stop()
    rows = _rows(study)
    assert {t: r["status"] for t, r in rows.items()} == {"iou": "done", "ciou": "done"}
    assert rows == _rows(ref)
    print(f"driver ended {took:.1f} s after the GCS was killed")
