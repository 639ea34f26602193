"""A study on a Ray cluster as users run one (issue 24): two nodes, the worker unable to see the
driver's study folder, the study kept in S3 (a local moto server), the worker node killed in
the middle of a trial, then the driver killed and its folder deleted, and ``--resume`` from the
storage alone — ending with every trial's files in the driver's folder and the numbers of an
undisturbed study.

The cluster is real (tests/cluster.py: ``ray start`` processes, the worker in its own user,
mount and pid namespaces with a tmpfs over pytest's temp root); the one allowed skip is a
machine without unprivileged namespaces. The training function is the fake one (deterministic
metrics of the config, the seed and the epoch; a checkpoint per epoch), so the test spends its
time on the cluster, not on training.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from study.outputs.results import read_csv
from tests import cluster as harness
from tests.paths import FAKE_TRAIN_FN, REPO
from tests.study_fakes import control_folder

ray_cluster_s3 = harness.ray_cluster_s3  # (fixtures by assignment: see tests/cluster.py)
cluster_sizes = harness.cluster_sizes

SPACE = """
fixed: {epochs: 6, eval_interval: 1, no_aug_epochs: 1, warmup_epochs: 1, workers: 0}
grid: {reg_loss: [iou, ciou]}
baseline: {reg_loss: iou}
resources: {cpus: 1}
max_failures: 3
"""
METRICS = ["val_mAP", "val_AP50", "test_mAP", "test_AP50", "epoch"]


def calls(ctl: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in sorted((ctl / "calls").glob("*.*")):
        tid, _ = f.name.rsplit(".", 1)
        out.setdefault(tid, []).append(json.loads(f.read_text()))
    return out


def wait_for(what: str, check, timeout: float = 120.0, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"the driver ended before {what}: {out[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("cluster_sizes", [{"head_cpus": 1, "worker_cpus": 1}])
def test_a_study_survives_a_dead_node_and_resumes_from_s3_alone(
    ray_cluster_s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = ray_cluster_s3
    state = tmp_path / "state"
    # the dataset each node reads at the same path (as on a real cluster: a copy per node);
    # outside the folder the worker cannot see
    shared = Path(tempfile.mkdtemp(prefix="yolox-cluster-data-"))
    try:
        ctl = control_folder(shared / "ctl", epoch_s=1.0)
        space = tmp_path / "space.yaml"
        space.write_text(SPACE)
        study = tmp_path / "study"
        env = {**os.environ, **c.head.env, **c.s3.env, "XDG_STATE_HOME": str(state),
               "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
        run = [sys.executable, str(REPO / "study" / "run.py"), "--address", c.head.address,
               "--storage", c.s3.url("studies"), "--train-fn", FAKE_TRAIN_FN]
        first = subprocess.Popen(
            [*run, "--space", str(space), "--data", str(ctl), "--out", str(study)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        # 1. the trial the worker node runs reports an evaluation; then its node dies
        on_worker = wait_for(
            "a trial on the worker node",
            lambda: next((t for t, cs in calls(ctl).items()
                          if cs[0]["node"] == c.worker_node_id), None),
            proc=first,
        )
        history = study / "trials" / on_worker / "history.jsonl"
        wait_for("its evaluations in the driver's folder",  # (pulled from S3 by the driver)
                 lambda: history.is_file() and len(history.read_text().splitlines()) >= 2,
                 proc=first)
        killed_at = c.worker.kill_raylet()
        # 2. Tune restarts it on the head from its last checkpoint (in S3: the worker's own
        # copy died with it); once it trains again, the driver is killed and its folder lost
        wait_for("the restart on the head", lambda: len(calls(ctl).get(on_worker, [])) >= 2,
                 timeout=180, proc=first)
        restart = calls(ctl)[on_worker][1]
        assert restart["node"] == c.head_node_id and restart["start_epoch"] >= 2
        print(f"cluster figures: {on_worker} ran on the worker, restarted on the head "
              f"{time.time() - killed_at:.1f} s after the kill from its epoch "
              f"{restart['start_epoch']} checkpoint; calls per trial and node: "
              f"{ {t: [x['node'][:6] for x in cs] for t, cs in calls(ctl).items()} }")
        time.sleep(1.5)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        shutil.rmtree(study)
        # 3. the study comes back from the storage alone, and finishes
        second = subprocess.run(
            [*run, "--resume", "--out", str(study)], cwd=REPO, env=env, capture_output=True,
            text=True, timeout=300,
        )
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert f"study folder {study} rebuilt from the storage" in second.stdout
        rows = {r["id"]: r for r in read_csv(study / "results.csv")}
        assert sorted(rows) == ["ciou", "iou"] and {r["status"] for r in rows.values()} == {"done"}
        for tid in rows:  # every trial's files, in the driver's folder
            folder = study / "trials" / tid
            for name in ("trial.json", "history.jsonl", "attempts.jsonl", "done.json",
                         "data_report.txt"):
                assert (folder / name).is_file(), (tid, name)
            epochs = [json.loads(x)["epoch"] for x in (folder / "history.jsonl").read_text()
                      .splitlines()]
            assert sorted(set(epochs)) == list(range(1, 7)), (tid, epochs)
        assert (study / "trials" / on_worker / "crashes.jsonl").is_file()  # the node's death
        assert c.s3.keys("studies/study/tune/"), "Tune's state is in S3"
        assert c.s3.keys(f"studies/study/trials/{on_worker}/")
        outputs = {k.rsplit("/", 1)[1] for k in c.s3.keys("studies/study/")}
        assert {"results.csv", "report.md", "best_config.yaml"} <= outputs  # the driver's too
        # 4. the same numbers as an undisturbed study on one node, local storage
        from study.running.driver import StudyArgs, run_study
        from tests.study_fakes import fake_train

        ctl_ref = control_folder(tmp_path / "ctl_ref")
        monkeypatch.setenv("XDG_STATE_HOME", str(state))
        ref = run_study(StudyArgs(space=str(space), data=str(ctl_ref), out=tmp_path / "ref"),
                        train_fn=fake_train, log=lambda s: None)
        assert ref.exit_code == 0
        for r in ref.rows:
            assert {k: rows[r["id"]][k] for k in METRICS} == {k: r[k] for k in METRICS}
    finally:
        shutil.rmtree(shared, ignore_errors=True)
